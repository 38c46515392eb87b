"""The driver's per-GPU procfs file (parsers/nvidia_procfs.py), on the driver's own layout."""

from __future__ import annotations

import pytest

from kvscope.parsers.nvidia_procfs import ProcfsError, ProcfsGpu, parse_gpu_information

# /proc/driver/nvidia/gpus/0000:19:00.0/information of an H200, driver 580 (tabs as written).
H200 = (
    "Model: \t\t NVIDIA H200\n"
    "IRQ:   \t\t 220\n"
    "GPU UUID: \t GPU-5a42a730-3b10-43c7-c5fd-7180830df355\n"
    "Video BIOS: \t 96.00.af.00.01\n"
    "Bus Type: \t PCIe\n"
    "DMA Size: \t 52 bits\n"
    "DMA Mask: \t 0xfffffffffffff\n"
    "Bus Location: \t 0000:19:00.0\n"
    "Device Minor: \t 0\n"
    "GPU Excluded:\t No\n"
)


def test_the_drivers_layout_gives_the_gpus_identity() -> None:
    assert parse_gpu_information(H200) == ProcfsGpu(
        minor=0,
        uuid="GPU-5a42a730-3b10-43c7-c5fd-7180830df355",
        model="NVIDIA H200",
        pci_bus_id="00000000:19:00.0",
    )


def test_the_bus_id_takes_nvmls_spelling() -> None:
    record = parse_gpu_information(
        H200.replace("0000:19:00.0", "0000:9a:00.0").replace(
            "Device Minor: \t 0", "Device Minor: \t 7"
        )
    )
    assert isinstance(record, ProcfsGpu)
    assert (record.pci_bus_id, record.minor) == ("00000000:9A:00.0", 7)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no Model, GPU UUID, Bus Location, Device Minor field"),
        (
            H200.replace("GPU UUID: \t GPU-5a42a730-3b10-43c7-c5fd-7180830df355\n", ""),
            "no GPU UUID field",
        ),
        (H200.replace("Device Minor: \t 0", "Device Minor: \t"), "no Device Minor field"),
        (
            H200.replace("Device Minor: \t 0", "Device Minor: \t zero"),
            "Device Minor is not a number: 'zero'",
        ),
        (
            H200.replace("GPU-5a42a730", "5a42a730"),
            "GPU UUID is not one: '5a42a730-3b10-43c7-c5fd-7180830df355'",
        ),
        (
            "\x00\xff garbage without fields\n:::\n",
            "no Model, GPU UUID, Bus Location, Device Minor field",
        ),
    ],
)
def test_a_file_without_an_identity_is_an_error_not_a_record(text: str, message: str) -> None:
    assert parse_gpu_information(text) == ProcfsError(message)
