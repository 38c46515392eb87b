"""The simulated driver's procfs files name the GPUs as the fake NVML does."""

from __future__ import annotations

from pathlib import Path

from kvscope.parsers.pci import normalise_bus_id
from kvscope.sim.nvml import FakeNvml
from kvscope.sim.procfs import write_procfs
from kvscope.sim.scenarios import SimOptions, build_scenario
from kvscope.sources.nvidia_procfs import read_gpus


def test_procfs_names_each_gpu_with_nvmls_uuid_bus_id_and_minor(tmp_path: Path) -> None:
    node = build_scenario("healthy", SimOptions(latency_scale=0.0))
    write_procfs(node, tmp_path)
    fake = FakeNvml(node)
    handles = [fake.nvmlDeviceGetHandleByIndex(i) for i in range(fake.nvmlDeviceGetCount())]
    nvml = [
        (
            fake.nvmlDeviceGetMinorNumber(h),
            fake.nvmlDeviceGetUUID(h),
            normalise_bus_id(fake.nvmlDeviceGetPciInfo(h).busId.decode()),
            fake.nvmlDeviceGetName(h),
        )
        for h in handles
    ]
    found = read_gpus(tmp_path)
    assert found.errors == ()
    assert [(g.minor, g.uuid, g.pci_bus_id, g.model) for g in found.gpus] == nvml
    assert len(nvml) == 8
