"""The NVIDIA driver's per-GPU procfs file, `/proc/driver/nvidia/gpus/<bus id>/information`.

One `Key: value` per line, the key padded with tabs or spaces (`Model: \t\t NVIDIA H200`,
`GPU UUID: \t GPU-5a42...`, `Bus Location: \t 0000:19:00.0`, `Device Minor: \t 0`). The driver
writes it without NVML, so it still names the GPUs while NVML hangs or fails. Pure: text in, a
record or a `ProcfsError` out, never raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvscope.parsers.numbers import parse_u64
from kvscope.parsers.pci import normalise_bus_id

REQUIRED = ("Model", "GPU UUID", "Bus Location", "Device Minor")


@dataclass(frozen=True)
class ProcfsGpu:
    """What the driver says of one GPU: enough to label its series as NVML would."""

    minor: int  # /dev/nvidia<minor>
    uuid: str
    model: str
    pci_bus_id: str  # NVML's spelling, 00000000:19:00.0


@dataclass(frozen=True)
class ProcfsError:
    """Why a file gave no GPU record."""

    message: str


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out.setdefault(key.strip(), value.strip())
    return out


def parse_gpu_information(text: str) -> ProcfsGpu | ProcfsError:
    """A GPU's `information` file -> its record; a file missing a field or with a minor that is
    no number is an error naming what is wrong."""
    fields = _fields(text)
    missing = [key for key in REQUIRED if not fields.get(key)]
    if missing:
        return ProcfsError(f"no {', '.join(missing)} field")
    minor = parse_u64(fields["Device Minor"])
    if minor is None:
        return ProcfsError(f"Device Minor is not a number: {fields['Device Minor'][:40]!r}")
    uuid = fields["GPU UUID"]
    if not uuid.startswith("GPU-"):
        return ProcfsError(f"GPU UUID is not one: {uuid[:60]!r}")
    return ProcfsGpu(
        minor=minor,
        uuid=uuid,
        model=fields["Model"],
        pci_bus_id=normalise_bus_id(fields["Bus Location"]),
    )
