"""A fake NVML with pynvml's function names, driven by `SimNode`.

Only the calls kvscope's sources make are implemented. Each call counts itself (tests assert how
many NVML calls a scrape causes), honours the node's faults (library missing, GPU lost,
NOT_SUPPORTED, slow calls) and costs the latency measured on a real H200
(reference device probe, 2026-11-22), unless the node's latency_scale is 0.
"""

from __future__ import annotations

import functools
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ParamSpec, TypeVar

from pynvml import NVMLError

from kvscope.sim.node import MIB, SimGpu, SimMig, SimNode

P = ParamSpec("P")
R = TypeVar("R")

UNINITIALIZED = 1
NOT_SUPPORTED = 3
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
TIMEOUT = 10
LIBRARY_NOT_FOUND = 12
GPU_IS_LOST = 15

# (p50, p99) seconds per call, measured with nvidia-ml-py on 2 x H200, driver 580.159.04.
LATENCY: dict[str, tuple[float, float]] = {
    "nvmlDeviceGetUtilizationRates": (1.0e-6, 1.5e-6),
    "nvmlDeviceGetMemoryInfo": (6.7e-6, 10e-6),
    "nvmlDeviceGetTemperatureV": (1.2e-6, 1.8e-6),
    "nvmlDeviceGetTemperature": (1.2e-6, 1.8e-6),
    "nvmlDeviceGetPowerUsage": (1.0e-6, 1.3e-6),
    "nvmlDeviceGetClockInfo": (1.9e-6, 3.2e-6),
    "nvmlDeviceGetCurrentClocksEventReasons": (1.1e-6, 1.5e-6),
    "nvmlDeviceGetComputeRunningProcesses": (8e-6, 58e-6),
    "nvmlDeviceGetRemappedRows": (1.7e-6, 2.6e-6),
    "nvmlDeviceGetTotalEnergyConsumption": (3.2e-3, 14.9e-3),
    "nvmlDeviceGetPcieReplayCounter": (0.18e-3, 0.25e-3),
    "nvmlGpmSampleGet": (62e-6, 90e-6),
    "nvmlGpmMetricsGet": (3e-3, 5e-3),
    "nvmlEventSetWait": (0.0, 0.0),  # the wait itself is modelled separately
    "nvmlDeviceGetNvLinkState": (1.5e-6, 2.1e-6),
    # 18 links x 5 counters took 42.5 / 57 ms per GPU: ~0.47 ms a call.
    "nvmlDeviceGetNvLinkErrorCounter": (0.47e-3, 0.63e-3),
}
FIELD_LATENCY = (0.14e-3, 0.22e-3)  # per field: a 37-field batch took 5.3 / 8.3 ms
# NVLink fields cost more: 4 fields at scopeId 0xFFFFFFFF took 0.95 / 1.8 ms per GPU, and 36
# per-link fields (138/139 x 18 links) 17.3 / 20.8 ms per GPU.
NVLINK_FIELDS = frozenset({91, 138, 139, 140, 141, 161, 162, 163, 164, 165, 166})
NVLINK_AGGREGATE_FIELD_LATENCY = (0.24e-3, 0.45e-3)
NVLINK_PER_LINK_FIELD_LATENCY = (0.48e-3, 0.58e-3)
SCOPE_ALL_LINKS = 0xFFFFFFFF
INVALID_ARGUMENT = 2
DEFAULT_LATENCY = (2e-6, 4e-6)
WEDGE_POLL = 0.01  # seconds between looks at the node's clock while the driver is wedged
SPIN_BELOW = 200e-6  # shorter waits spin (an ioctl costs CPU), longer ones sleep


# Marketing names of Hopper and newer data-centre GPUs, the ones NVML GPM supports.
GPM_GENERATIONS = ("H100", "H200", "H20", "H800", "GH200", "B100", "B200", "GB200", "B300")


def gpm_supported(name: str) -> bool:
    return any(token in GPM_GENERATIONS for token in name.replace("-", " ").split())


@dataclass
class SimHandle:
    gpu: SimGpu

    def __hash__(self) -> int:
        return hash(self.gpu.uuid)


@dataclass
class SimMigHandle(SimHandle):
    """A MIG device handle: the GPU instance `mig` of `gpu`."""

    mig: SimMig | None = None

    def __hash__(self) -> int:
        return hash((self.gpu.uuid, self.mig.uuid if self.mig else ""))


@dataclass
class _GpmSample:
    taken_at: float = -1.0


@dataclass
class _GpmMetric:
    metricId: int = 0
    nvmlReturn: int = 0
    value: float = 0.0


@dataclass
class FakeGpmMetricsGet:
    """Same attributes as pynvml.c_nvmlGpmMetricsGet_t."""

    version: int = 0
    numMetrics: int = 0
    sample1: Any = None
    sample2: Any = None
    metrics: list[_GpmMetric] = field(default_factory=lambda: [_GpmMetric() for _ in range(210)])


def _nvml_call(fn: Callable[P, R]) -> Callable[P, R]:
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self: FakeNvml = args[0]  # type: ignore[assignment]
        handle = args[1] if len(args) > 1 and isinstance(args[1], SimHandle) else None
        self._enter(name, handle)
        return fn(*args, **kwargs)

    return wrapper


class FakeNvml:
    """Stands in for the `pynvml` module."""

    NVMLError = NVMLError
    c_nvmlGpmMetricsGet_t = FakeGpmMetricsGet

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._serial = threading.Lock()
        self._rng = random.Random(node.seed)
        self._handles = [SimHandle(g) for g in node.gpus]
        self._delivered_xids: set[int] = set()
        self._registered: set[str] = set()
        self.initialised = False
        self._initialised_at: float | None = None  # node elapsed seconds of the last nvmlInit
        # Latency the model asked for, summed: what a test of the model checks, since wall time
        # on a loaded machine also counts every other process.
        self.modelled_seconds = 0.0

    # ---- plumbing ----------------------------------------------------------------------

    def _latency(self, name: str) -> float:
        p50, p99 = LATENCY.get(name, DEFAULT_LATENCY)
        if self.node.latency_scale == 0 or p50 == 0:
            return 0.0
        sigma = math.log(p99 / p50) / 2.326
        with self._lock:
            z = self._rng.gauss(0.0, 1.0)
        return p50 * math.exp(sigma * z) * self.node.latency_scale

    @staticmethod
    def _wait(seconds: float) -> None:
        if seconds <= 0:
            return
        if seconds < SPIN_BELOW:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(seconds)

    def _spend(self, latency: float) -> None:
        """Spend one call's modelled latency. NVML serialises calls inside the process (2 x H200:
        p99 23 ms at one scraper, 136 ms at eight), so it is spent holding one process-wide lock."""
        with self._lock:
            self.modelled_seconds += latency
        with self._serial:
            self._wait(latency)

    def _enter(self, name: str, handle: SimHandle | None) -> None:
        with self._lock:
            self.calls[name] += 1
        if self.node.library_missing:
            raise NVMLError(LIBRARY_NOT_FOUND)
        self._check_driver(name)
        if self.node.is_wedged():
            with self._serial:  # every other caller of the process waits too
                while self.node.is_wedged():
                    time.sleep(WEDGE_POLL)
        if name in self.node.slow_calls:
            # A hung call holds the process-wide lock: a wedged driver blocks every NVML caller
            # of the process, not only the one that hung.
            with self._serial:
                time.sleep(self.node.slow_calls[name])
        self._spend(self._latency(name))
        if handle is not None and self.node.is_lost(handle.gpu):
            raise NVMLError(GPU_IS_LOST)
        if name in self.node.not_supported:
            raise NVMLError(NOT_SUPPORTED)
        if name in self.node.failing_calls:  # a driver call that keeps failing (not "absent")
            raise NVMLError(self.node.failing_calls[name])

    def _check_driver(self, name: str) -> None:
        """The driver-reload fault: unloaded in the node's window; after it, the session that
        was open before is dead until nvmlInit runs again."""
        window = self.node.driver_reload
        if window is None:
            return
        if self.node.driver_gone():
            raise NVMLError(DRIVER_NOT_LOADED)
        reloaded = self.node.elapsed() >= window[1]
        stale = self._initialised_at is None or self._initialised_at < window[1]
        if reloaded and stale and name not in ("nvmlInit", "nvmlShutdown"):
            raise NVMLError(UNINITIALIZED)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    # ---- system ------------------------------------------------------------------------

    @_nvml_call
    def nvmlInit(self) -> None:
        self.initialised = True
        self._initialised_at = self.node.elapsed()

    @_nvml_call
    def nvmlShutdown(self) -> None:
        self.initialised = False

    @_nvml_call
    def nvmlSystemGetDriverVersion(self) -> str:
        return self.node.driver_version

    @_nvml_call
    def nvmlDeviceGetCount(self) -> int:
        return len(self._handles)

    @_nvml_call
    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimHandle:
        handle = self._handles[index]
        if self.node.is_lost(handle.gpu):
            raise NVMLError(GPU_IS_LOST)
        return handle

    # ---- identity ----------------------------------------------------------------------

    @_nvml_call
    def nvmlDeviceGetMigMode(self, h: SimHandle) -> list[int]:
        on = int(bool(h.gpu.mig_instances))
        return [on, on]

    # ---- MIG ---------------------------------------------------------------------------

    @_nvml_call
    def nvmlDeviceGetMaxMigDeviceCount(self, h: SimHandle) -> int:
        return 7 if h.gpu.mig_instances else 0

    @_nvml_call
    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: SimHandle, index: int) -> SimMigHandle:
        if index >= len(h.gpu.mig_instances):
            raise NVMLError(NOT_FOUND)
        return SimMigHandle(h.gpu, h.gpu.mig_instances[index])

    @staticmethod
    def _mig(h: SimHandle) -> SimMig:
        if not isinstance(h, SimMigHandle) or h.mig is None:
            raise NVMLError(INVALID_ARGUMENT)  # a whole-GPU handle
        return h.mig

    @_nvml_call
    def nvmlDeviceGetGpuInstanceId(self, h: SimHandle) -> int:
        return self._mig(h).gpu_instance_id

    @_nvml_call
    def nvmlDeviceGetComputeInstanceId(self, h: SimHandle) -> int:
        return self._mig(h).compute_instance_id

    def _instance(self, h: SimHandle, gpu_instance_id: int) -> SimMig:
        for mig in h.gpu.mig_instances:
            if mig.gpu_instance_id == gpu_instance_id:
                return mig
        raise NVMLError(NOT_FOUND)

    @_nvml_call
    def nvmlDeviceGetGpuInstanceById(self, h: SimHandle, gpu_instance_id: int) -> SimMigHandle:
        return SimMigHandle(h.gpu, self._instance(h, gpu_instance_id))

    @_nvml_call
    def nvmlGpuInstanceGetInfo(self, gi: SimMigHandle) -> SimpleNamespace:
        mig = self._mig(gi)
        return SimpleNamespace(id=mig.gpu_instance_id, profileId=mig.profile_id)

    @_nvml_call
    def nvmlDeviceGetGpuInstanceProfileInfoById(self, h: SimHandle,
                                                profile_id: int) -> SimpleNamespace:
        for mig in h.gpu.mig_instances:
            if mig.profile_id == profile_id:
                return SimpleNamespace(id=profile_id, name=f"MIG {mig.profile}".encode(),
                                       memorySizeMB=mig.memory_mib)
        raise NVMLError(NOT_SUPPORTED)

    def mig_util(self, gpu: SimGpu, mig: SimMig) -> float:
        return max(0.0, min(100.0, self.node.util(gpu) * mig.load))

    @_nvml_call
    def nvmlDeviceGetMinorNumber(self, h: SimHandle) -> int:
        return h.gpu.index

    @_nvml_call
    def nvmlDeviceGetUUID(self, h: SimHandle) -> str:
        if isinstance(h, SimMigHandle) and h.mig is not None:
            return h.mig.uuid
        return h.gpu.uuid

    @_nvml_call
    def nvmlDeviceGetName(self, h: SimHandle) -> str:
        return h.gpu.name

    @_nvml_call
    def nvmlDeviceGetPciInfo(self, h: SimHandle) -> SimpleNamespace:
        return SimpleNamespace(busId=h.gpu.pci_bus_id.encode())

    # ---- fast readings -----------------------------------------------------------------

    @_nvml_call
    def nvmlDeviceGetUtilizationRates(self, h: SimHandle) -> SimpleNamespace:
        if h.gpu.mig_instances:
            raise NVMLError(NOT_SUPPORTED)  # NVML has no utilisation counter on MIG GPUs
        util = self.node.util(h.gpu)
        return SimpleNamespace(gpu=round(util), memory=round(util * 0.55))

    @_nvml_call
    def nvmlDeviceGetEncoderUtilization(self, h: SimHandle) -> list[int]:
        return [0, 167000]

    @_nvml_call
    def nvmlDeviceGetDecoderUtilization(self, h: SimHandle) -> list[int]:
        return [0, 167000]

    @_nvml_call
    def nvmlDeviceGetClockInfo(self, h: SimHandle, clock_type: int) -> int:
        return self.node.sm_clock_mhz(h.gpu) if clock_type == 1 else h.gpu.mem_clock_mhz

    @_nvml_call
    def nvmlDeviceGetTemperatureV(self, h: SimHandle, sensor: int) -> int:
        return self.node.temperature_c(h.gpu)

    @_nvml_call
    def nvmlDeviceGetTemperature(self, h: SimHandle, sensor: int) -> int:
        return self.node.temperature_c(h.gpu)

    @_nvml_call
    def nvmlDeviceGetPowerUsage(self, h: SimHandle) -> int:
        return round(self.node.power_w(h.gpu) * 1000)

    @_nvml_call
    def nvmlDeviceGetEnforcedPowerLimit(self, h: SimHandle) -> int:
        return round(h.gpu.power_limit_w * 1000)

    @_nvml_call
    def nvmlDeviceGetMemoryInfo(self, h: SimHandle, version: int | None = None) -> SimpleNamespace:
        if isinstance(h, SimMigHandle) and h.mig is not None:
            total = h.mig.memory_mib * MIB
            reserved = 0  # the driver's reservation sits outside the instances
            used = int(total * h.mig.fb_used_ratio) // MIB * MIB
            return SimpleNamespace(total=total, reserved=reserved, used=used, free=total - used)
        total, reserved, used, free = self.node.memory_bytes(h.gpu)
        if version is None:  # v1 folds the reserved memory into "used"
            return SimpleNamespace(total=total, used=used + reserved, free=free)
        return SimpleNamespace(total=total, reserved=reserved, used=used, free=free)

    @_nvml_call
    def nvmlDeviceGetCurrentClocksEventReasons(self, h: SimHandle) -> int:
        gpu = h.gpu
        if self.node.util(gpu) < 1:
            return 0x1  # GpuIdle
        return 0x4 if self.node.power_w(gpu) >= gpu.power_limit_w * 0.98 else 0x0

    @_nvml_call
    def nvmlDeviceGetComputeRunningProcesses(self, h: SimHandle) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=4000 + h.gpu.index * 10 + i,
                                usedGpuMemory=self.node.memory_bytes(h.gpu)[2])
                for i in range(h.gpu.processes)]

    @_nvml_call
    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: SimHandle) -> int:
        return h.gpu.pcie_gen

    @_nvml_call
    def nvmlDeviceGetCurrPcieLinkWidth(self, h: SimHandle) -> int:
        return h.gpu.pcie_width

    @_nvml_call
    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: SimHandle) -> int:
        return 5

    @_nvml_call
    def nvmlDeviceGetMaxPcieLinkWidth(self, h: SimHandle) -> int:
        return 16

    def _field_value(self, gpu: SimGpu, field_id: int, scope_id: int) -> tuple[int, float | int]:
        """(nvmlReturn, value) for one field; subclasses in later simulators add more ids."""
        if f"field:{field_id}" in self.node.not_supported:
            return NOT_SUPPORTED, 0
        if field_id == 82:  # NVML_FI_DEV_MEMORY_TEMP
            return 0, self.node.memory_temperature_c(gpu)
        if field_id in NVLINK_FIELDS:
            return self._nvlink_field(gpu, field_id, scope_id)
        return NOT_SUPPORTED, 0

    # ---- NVLink and topology (sim/topology.py's SimTopology) -------------------------------

    def _topology(self) -> Any:
        return self.node.topology

    def _links(self, gpu: SimGpu) -> int:
        topo = self._topology()
        return topo.links_per_gpu if topo is not None else 0

    def _nvlink_field(self, gpu: SimGpu, field_id: int, scope_id: int) -> tuple[int, float | int]:
        topo = self._topology()
        links = self._links(gpu)
        if links == 0:
            return NOT_SUPPORTED, 0  # a GPU without NVLink
        if field_id == 91:  # NVLINK_LINK_COUNT
            return 0, links
        scope = list(range(links)) if scope_id == SCOPE_ALL_LINKS else [scope_id]
        if any(link >= links for link in scope):
            return INVALID_ARGUMENT, 0
        if field_id in (138, 139, 140, 141, 161, 162, 163):
            return 0, self._nvlink_counter(topo, gpu, field_id, scope)
        if scope_id == SCOPE_ALL_LINKS:
            return INVALID_ARGUMENT, 0  # speed/state/version are per link only
        values = {164: topo.link_speed_mbps,  # GET_SPEED, MB/s
                  165: 1 if topo.link_active(gpu.index, scope_id) else 0,  # GET_STATE
                  166: topo.nvlink_version}  # GET_VERSION
        return 0, values[field_id]

    def _nvlink_counter(self, topo: Any, gpu: SimGpu, field_id: int, scope: list[int]) -> int:
        t = self.node.elapsed()
        if field_id in (161, 162, 163):  # ERROR_DL_REPLAY/RECOVERY/CRC
            return sum(int(topo.dl_errors(gpu.index, link, t)[field_id - 161]) for link in scope)
        # THROUGHPUT_DATA/RAW_TX/RX in KiB. TX ids are even (138, 140), RX odd; RAW adds the
        # protocol overhead (+6.4% on H200).
        kib = sum(int(topo.link_kib(gpu.index, link, t)[field_id % 2]) for link in scope)
        return int(kib * 1.064) if field_id in (140, 141) else kib

    def _check_link(self, h: SimHandle, link: int) -> Any:
        topo = self._topology()
        if self._links(h.gpu) == 0:
            raise NVMLError(NOT_SUPPORTED)
        if not 0 <= link < topo.links_per_gpu:
            raise NVMLError(INVALID_ARGUMENT)
        return topo

    @_nvml_call
    def nvmlDeviceGetNvLinkState(self, h: SimHandle, link: int) -> int:
        topo = self._check_link(h, link)
        return 1 if topo.link_active(h.gpu.index, link) else 0

    @_nvml_call
    def nvmlDeviceGetNvLinkVersion(self, h: SimHandle, link: int) -> int:
        return int(self._check_link(h, link).nvlink_version)

    @_nvml_call
    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: SimHandle, link: int) -> int:
        topo = self._check_link(h, link)
        # NVML_NVLINK_DEVICE_TYPE_GPU (0) across a bridge, else _SWITCH (2)
        return 0 if h.gpu.index in topo.bridges else 2

    @_nvml_call
    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: SimHandle, link: int) -> SimpleNamespace:
        topo = self._check_link(h, link)
        peer = topo.bridges.get(h.gpu.index)
        if peer is not None:  # a bridge ends at the peer GPU itself
            return SimpleNamespace(busId=self.node.gpus[peer].pci_bus_id.encode())
        # NVSwitch chips show up as PCI functions on the baseboard's own buses.
        return SimpleNamespace(busId=f"00000000:{0x05 + topo.switch_of(link):02X}:00.0".encode())

    @_nvml_call
    def nvmlDeviceGetNvLinkErrorCounter(self, h: SimHandle, link: int, counter: int) -> int:
        topo = self._check_link(h, link)
        if counter in (0, 1, 2):  # DL_REPLAY, DL_RECOVERY, DL_CRC_FLIT: same as fields 161-163
            return int(topo.dl_errors(h.gpu.index, link, self.node.elapsed())[
                (0, 1, 2).index(counter)])
        if counter in (3, 4):  # DL_CRC_DATA, DL_ECC_DATA: counters no field carries
            return int(topo.data_errors.get((h.gpu.index, link), (0, 0))[counter - 3])
        raise NVMLError(INVALID_ARGUMENT)

    @_nvml_call
    def nvmlDeviceGetTopologyCommonAncestor(self, h1: SimHandle, h2: SimHandle) -> int:
        topo = self._topology()
        if topo is None:
            raise NVMLError(NOT_SUPPORTED)
        return int(topo.common_ancestor(h1.gpu.index, h2.gpu.index))

    @_nvml_call
    def nvmlDeviceGetP2PStatus(self, h1: SimHandle, h2: SimHandle, index: int) -> int:
        if not isinstance(index, int):
            # What ctypes does with pynvml's NVML_P2P_CAPS_INDEX_READ, the tuple (0,).
            raise TypeError("an integer is required (got type tuple)")
        topo = self._topology()
        if topo is None:
            raise NVMLError(NOT_SUPPORTED)
        if index == 2:  # NVML_P2P_CAPS_INDEX_NVLINK
            return int(topo.p2p_status) if self._links(h1.gpu) else 5
        return 5 if index == 4 else 0  # PCI: NOT_SUPPORTED on H200; READ/WRITE/ATOMICS: OK

    @_nvml_call
    def nvmlDeviceGetCpuAffinity(self, h: SimHandle, cpu_set_size: int) -> list[int]:
        from kvscope.sim.topology import NUMA_CPUS

        topo = self._topology()
        if topo is None or h.gpu.index >= len(topo.slots):
            raise NVMLError(NOT_SUPPORTED)
        words = [0] * cpu_set_size
        for cpu in NUMA_CPUS[topo.slots[h.gpu.index].numa]:
            if cpu // 64 < cpu_set_size:
                words[cpu // 64] |= 1 << (cpu % 64)
        return words

    @_nvml_call
    def nvmlDeviceGetNumaNodeId(self, h: SimHandle) -> int:
        topo = self._topology()
        if topo is None or h.gpu.index >= len(topo.slots):
            raise NVMLError(NOT_SUPPORTED)
        return int(topo.slots[h.gpu.index].numa)

    @_nvml_call
    def nvmlDeviceGetFieldValues(self, h: SimHandle, field_ids: list[Any]) -> list[SimpleNamespace]:
        out = []
        for spec in field_ids:
            field_id, scope_id = spec if isinstance(spec, tuple) else (spec, 0)
            self._spend(self._latency_field(field_id, scope_id))
            ret, value = self._field_value(h.gpu, field_id, scope_id)
            is_double = isinstance(value, float)
            out.append(SimpleNamespace(
                fieldId=field_id, scopeId=scope_id, nvmlReturn=ret, valueType=0 if is_double
                else 4, value=SimpleNamespace(dVal=float(value), ullVal=int(value)),
                timestamp=int(time.time() * 1e6), latencyUsec=0))
        return out

    def _latency_field(self, field_id: int = 0, scope_id: int = 0) -> float:
        if self.node.latency_scale == 0:
            return 0.0
        p50, p99 = FIELD_LATENCY
        if field_id in NVLINK_FIELDS:
            p50, p99 = (NVLINK_AGGREGATE_FIELD_LATENCY if scope_id == SCOPE_ALL_LINKS
                        else NVLINK_PER_LINK_FIELD_LATENCY)
        with self._lock:
            z = self._rng.gauss(0, 0.4)
        return float(p50 * self.node.latency_scale * (p99 / p50) ** abs(z))

    # ---- slow readings -----------------------------------------------------------------

    @_nvml_call
    def nvmlDeviceGetTotalEnergyConsumption(self, h: SimHandle) -> int:
        return self.node.energy_mj(h.gpu)

    @_nvml_call
    def nvmlDeviceGetPcieReplayCounter(self, h: SimHandle) -> int:
        return 0

    @_nvml_call
    def nvmlDeviceGetRemappedRows(self, h: SimHandle) -> tuple[int, int, int, int]:
        return h.gpu.remapped_correctable, h.gpu.remapped_uncorrectable, 0, 0

    @_nvml_call
    def nvmlDeviceGetTotalEccErrors(self, h: SimHandle, error_type: int, counter: int) -> int:
        return h.gpu.ecc_dbe if error_type == 1 else h.gpu.ecc_sbe

    # ---- GPM (Hopper profiling metrics) -------------------------------------------------

    @_nvml_call
    def nvmlGpmQueryDeviceSupport(self, h: SimHandle) -> SimpleNamespace:
        # Real NVML answers 0 below Hopper: an L40S (Ada) or A100 (Ampere) has no GPM, so
        # without DCGM's profiling module it gets no DCGM_FI_PROF_* at all.
        return SimpleNamespace(isSupportedDevice=int(gpm_supported(h.gpu.name)))

    @_nvml_call
    def nvmlDeviceGetGridLicensableFeatures(self, h: SimHandle) -> SimpleNamespace:
        licensed = h.gpu.vgpu_licensed
        if licensed is None:
            raise NVMLError(NOT_SUPPORTED)  # bare metal: the simulated H100/H200 are no vGPU
        feature = SimpleNamespace(featureCode=1, featureState=int(licensed))
        return SimpleNamespace(isGridLicenseSupported=1, licensableFeaturesCount=1,
                               gridLicensableFeatures=[feature])

    @_nvml_call
    def nvmlGpmSampleAlloc(self) -> _GpmSample:
        return _GpmSample()

    @_nvml_call
    def nvmlGpmSampleFree(self, sample: _GpmSample) -> None:
        return None

    @_nvml_call
    def nvmlGpmSampleGet(self, h: SimHandle, sample: _GpmSample) -> _GpmSample:
        sample.taken_at = self.node.elapsed()
        sample.gpu = h.gpu  # type: ignore[attr-defined]
        return sample

    @_nvml_call
    def nvmlGpmMigSampleGet(self, h: SimHandle, gpu_instance_id: int,
                            sample: _GpmSample) -> _GpmSample:
        self._instance(h, gpu_instance_id)
        sample.taken_at = self.node.elapsed()
        sample.gpu = h.gpu  # type: ignore[attr-defined]
        sample.gpu_instance_id = gpu_instance_id  # type: ignore[attr-defined]
        return sample

    @_nvml_call
    def nvmlGpmMetricsGet(self, request: FakeGpmMetricsGet) -> FakeGpmMetricsGet:
        gpu: SimGpu = request.sample2.gpu
        gi = getattr(request.sample2, "gpu_instance_id", None)
        util = self.node.util(gpu) if gi is None else self.mig_util(
            gpu, self._instance(SimHandle(gpu), gi))
        # Ratios of a busy inference GPU: SM activity trails the utilisation counter.
        model = {1: util * 0.95, 2: util * 0.82, 3: util * 0.30, 5: util * 0.55, 10: util * 0.48,
                 # PCIe MiB/s: prefill ranks pull weights and inputs, decode ranks far less.
                 20: 600.0 + 45.0 * util, 21: 900.0 + 80.0 * util}
        for slot in range(request.numMetrics):
            metric = request.metrics[slot]
            metric.value = model.get(metric.metricId, float("nan"))
            metric.nvmlReturn = 0 if metric.metricId in model else NOT_SUPPORTED
        return request

    # ---- events ------------------------------------------------------------------------

    @_nvml_call
    def nvmlEventSetCreate(self) -> object:
        return object()

    @_nvml_call
    def nvmlDeviceRegisterEvents(self, h: SimHandle, mask: int, event_set: object) -> None:
        self._registered.add(h.gpu.uuid)

    @_nvml_call
    def nvmlEventSetFree(self, event_set: object) -> None:
        return None

    @_nvml_call
    def nvmlEventSetWait(self, event_set: object, timeout_ms: int) -> SimpleNamespace:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            for n, fault in enumerate(self.node.xid_faults):
                gpu = self._handles[fault.gpu].gpu
                if (n not in self._delivered_xids and self.node.elapsed() >= fault.after
                        and gpu.uuid in self._registered):
                    self._delivered_xids.add(n)
                    return SimpleNamespace(device=self._handles[fault.gpu], eventType=0x8,
                                           eventData=fault.xid, gpuInstanceId=0xFFFFFFFF,
                                           computeInstanceId=0xFFFFFFFF)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NVMLError(TIMEOUT)
            time.sleep(min(remaining, self._until_next_xid()))

    def _until_next_xid(self) -> float:
        """Seconds the event wait may sleep before the next fault can be due.

        The real call blocks in the kernel; waking every 50 ms instead cost the simulated agent
        a third of its idle CPU. A node on another clock (tests that move time by hand) is
        still checked every 50 ms, since its elapsed time need not follow the sleep."""
        if self.node.clock is not time.monotonic:
            return 0.05
        elapsed = self.node.elapsed()
        pending = [f.after - elapsed for n, f in enumerate(self.node.xid_faults)
                   if n not in self._delivered_xids and f.after > elapsed
                   and self._handles[f.gpu].gpu.uuid in self._registered]
        return min(pending, default=3600.0)
