"""The GPUs the NVIDIA driver lists under procfs (blocking): `driver/nvidia/gpus/*/information`.

A read of procfs does not go through NVML, so it answers while NVML hangs; the GPU collector
reads it only when NVML never enumerated the GPUs (see collectors/gpu.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvscope.parsers.nvidia_procfs import ProcfsError, ProcfsGpu, parse_gpu_information

GPUS_DIR = Path("driver", "nvidia", "gpus")


@dataclass(frozen=True)
class ProcfsInventory:
    """The GPUs read, by minor number, and one line per file that gave none."""

    gpus: tuple[ProcfsGpu, ...]
    errors: tuple[str, ...] = ()


def read_gpus(procfs: Path) -> ProcfsInventory:
    """Every GPU's record under `procfs`; no directory (no driver loaded, no GPU visible to the
    container) gives none, and a file that cannot be read or parsed is named in `errors`."""
    root = procfs / GPUS_DIR
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return ProcfsInventory(())
    gpus: list[ProcfsGpu] = []
    errors: list[str] = []
    for entry in entries:
        info = entry / "information"
        try:
            text = info.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            errors.append(f"{info}: {exc.strerror or exc}")
            continue
        record = parse_gpu_information(text)
        if isinstance(record, ProcfsError):
            errors.append(f"{info}: {record.message}")
        else:
            gpus.append(record)
    return ProcfsInventory(tuple(sorted(gpus, key=lambda g: g.minor)), tuple(errors))
