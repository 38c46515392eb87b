"""Node model for the simulator: GPUs whose readings move with time, and injectable faults.

Values are deterministic functions of elapsed time (sine waves with per-GPU phase), so a test that
freezes the clock gets the same exposition every run, and counters such as energy are analytic
integrals that only ever grow.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# An 8-GPU HGX H100 board: bus ids as they appear on common servers.
HGX_BUS_IDS = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")
H100_NAME = "NVIDIA H100 80GB HBM3"
H100_MEMORY_MIB = 81559  # what nvidia-smi reports for the 80 GB SXM part
H100_RESERVED_MIB = 535
MIB = 1024 * 1024


@dataclass
class SimMig:
    """One GPU instance (with one compute instance) of a MIG-enabled simulated GPU."""

    gpu_instance_id: int
    profile: str  # e.g. 1g.18gb
    profile_id: int  # NVML profile id (1g.18gb on H200: 19)
    memory_mib: int  # NVML memorySizeMB of the profile
    uuid: str
    load: float = 1.0  # the instance's share of the parent's utilisation wave
    fb_used_ratio: float = 0.5
    compute_instance_id: int = 0


@dataclass
class SimGpu:
    index: int
    uuid: str
    pci_bus_id: str
    name: str = H100_NAME
    memory_total_mib: int = H100_MEMORY_MIB
    memory_reserved_mib: int = H100_RESERVED_MIB
    util_base: float = 55.0  # percent
    util_swing: float = 12.0  # amplitude of the slow wave around the base
    period: float = 90.0  # seconds per wave
    fb_used_ratio: float = 0.62  # of (total - reserved)
    power_idle_w: float = 72.0
    power_max_w: float = 690.0
    power_limit_w: float = 700.0
    sm_clock_max_mhz: int = 1980
    mem_clock_mhz: int = 2619
    pcie_gen: int = 5
    pcie_width: int = 16
    lost_after: float | None = None  # elapsed seconds after which every call is GPU_IS_LOST
    remapped_correctable: int = 0
    remapped_uncorrectable: int = 0
    ecc_sbe: int = 0
    ecc_dbe: int = 0
    processes: int = 1
    energy_at_start_mj: int = 0
    vgpu_licensed: bool | None = None  # None: not a vGPU guest (NVML: NOT_SUPPORTED)
    mig_instances: list[SimMig] = field(default_factory=list)  # non-empty: MIG mode on

    @property
    def phase(self) -> float:
        return self.index * 0.7


def _uuid_for(host: str, index: int) -> str:
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{host}.gpu{index}.kvscope.sim"))


def make_gpus(host: str, count: int = 8, **overrides: object) -> list[SimGpu]:
    return [SimGpu(index=i, uuid=_uuid_for(host, i),
                   pci_bus_id=f"00000000:{HGX_BUS_IDS[i % len(HGX_BUS_IDS)]}:00.0",
                   energy_at_start_mj=48_000_000 + 1_000_000 * i, **overrides)  # type: ignore[arg-type]
            for i in range(count)]


@dataclass
class XidFault:
    after: float  # elapsed seconds
    gpu: int
    xid: int


@dataclass
class SimPod:
    """A pod on the simulated node, as the kubelet and the Kubernetes API would describe it."""

    name: str
    namespace: str = "inference"
    container: str = "engine"
    gpus: tuple[int, ...] = ()  # GPU indices allocated by the device plugin
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # NVIDIA_VISIBLE_DEVICES, ...
    privileged: bool = False
    host_ipc: bool = False
    pod_ip: str = "127.0.0.1"
    uid: str = ""
    mig_resource: str = ""  # e.g. nvidia.com/mig-1g.18gb (mixed strategy)
    mig_devices: tuple[str, ...] = ()  # MIG-<uuid> device ids the device plugin allocated


@dataclass
class SimNode:
    hostname: str = "sim-node-0"
    driver_version: str = "580.95.05"
    gpus: list[SimGpu] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    start_elapsed: float = 0.0  # elapsed seconds at construction (skip ahead of a warm-up)
    latency_scale: float = 1.0  # 0 disables the modelled NVML latency (fast unit tests)
    library_missing: bool = False
    not_supported: set[str] = field(default_factory=set)  # NVML call names, or "field:<id>"
    # call name -> extra seconds, spent holding the library-wide lock as a wedged driver does
    slow_calls: dict[str, float] = field(default_factory=dict)
    failing_calls: dict[str, int] = field(default_factory=dict)  # call name -> NVML error code
    xid_faults: list[XidFault] = field(default_factory=list)
    # (from, until) elapsed seconds: the driver is unloaded (every call fails, as on a driver
    # reload or upgrade); after it, calls fail as uninitialised until nvmlInit runs again.
    driver_reload: tuple[float, float] | None = None
    # (from, until) elapsed seconds: the driver is wedged. A call made in the window blocks,
    # holding the process-wide lock, until the window ends; from 0 even nvmlInit hangs, so NVML
    # never enumerates the GPUs.
    wedged: tuple[float, float] | None = None
    seed: int = 7
    # Later subsystems hang their models here (each owned by its sim/<subsystem>.py module).
    pods: list[SimPod] = field(default_factory=list)
    node_labels: dict[str, str] = field(default_factory=dict)
    topology: Any = None  # sim/topology.py: NVLink and PCIe layout
    rdma: Any = None  # sim/rdma.py: RDMA devices, sysfs tree, eadm, pyverbs
    engines: list[Any] = field(default_factory=list)  # sim/engines.py: fake engine servers

    def __post_init__(self) -> None:
        self._t0 = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self._t0 + self.start_elapsed

    # ---- per-GPU readings ------------------------------------------------------------------

    def driver_gone(self) -> bool:
        window = self.driver_reload
        return window is not None and window[0] <= self.elapsed() < window[1]

    def is_wedged(self) -> bool:
        window = self.wedged
        return window is not None and window[0] <= self.elapsed() < window[1]

    def is_lost(self, gpu: SimGpu) -> bool:
        return gpu.lost_after is not None and self.elapsed() >= gpu.lost_after

    def _wave(self, gpu: SimGpu, t: float) -> float:
        return math.sin(2 * math.pi * t / gpu.period + gpu.phase)

    def util(self, gpu: SimGpu) -> float:
        value = gpu.util_base + gpu.util_swing * self._wave(gpu, self.elapsed())
        return max(0.0, min(100.0, value))

    def power_w(self, gpu: SimGpu) -> float:
        return gpu.power_idle_w + (gpu.power_max_w - gpu.power_idle_w) * self.util(gpu) / 100

    def energy_mj(self, gpu: SimGpu) -> int:
        """Integral of power_w: monotonic because util_swing never drives power below idle."""
        t = self.elapsed()
        span = gpu.power_max_w - gpu.power_idle_w
        base_w = gpu.power_idle_w + span * gpu.util_base / 100
        swing_w = span * gpu.util_swing / 100
        omega = 2 * math.pi / gpu.period
        integral = base_w * t + swing_w / omega * (math.cos(gpu.phase) - math.cos(omega * t
                                                                                   + gpu.phase))
        return gpu.energy_at_start_mj + int(1000 * integral)

    def temperature_c(self, gpu: SimGpu) -> int:
        return round(31 + 0.42 * self.util(gpu))

    def memory_temperature_c(self, gpu: SimGpu) -> int:
        return round(35 + 0.38 * self.util(gpu))

    def sm_clock_mhz(self, gpu: SimGpu) -> int:
        util = self.util(gpu)
        return 345 if util < 1 else gpu.sm_clock_max_mhz

    def memory_bytes(self, gpu: SimGpu) -> tuple[int, int, int, int]:
        """(total, reserved, used, free) in bytes, like nvmlMemory_v2."""
        total = gpu.memory_total_mib * MIB
        reserved = gpu.memory_reserved_mib * MIB
        usable = total - reserved
        used = int(usable * gpu.fb_used_ratio) // MIB * MIB
        return total, reserved, used, usable - used
