"""NVML: one session per agent (session.py), the library's shape and errors (library.py), and
the readers: GPUs (device.py), NVLinks (links.py), GPU topology and affinity (topology.py)."""

from kvscope.sources.nvml.device import (
    FAST_READERS,
    GPM_METRICS,
    SLOW_READERS,
    GpuIdentity,
    GpuReading,
    Inventory,
    MigInstance,
    MigReading,
    NvmlSource,
    XidEvent,
)
from kvscope.sources.nvml.library import (
    NvmlError,
    NvmlLibrary,
    NvmlUnavailable,
    load_library,
)
from kvscope.sources.nvml.session import NvmlSession, call_detached

__all__ = ["FAST_READERS", "GPM_METRICS", "SLOW_READERS", "GpuIdentity", "GpuReading",
           "Inventory", "MigInstance", "MigReading", "NvmlError", "NvmlLibrary", "NvmlSession",
           "NvmlSource", "NvmlUnavailable", "XidEvent", "call_detached", "load_library"]
