"""GPU reads through the agent's NVML session: identity, values, MIG instances, GPM, XID.

Every function here blocks; the GPU collector calls them through the runtime's thread pool, one
tier at a time. NVML errors arrive as `NvmlError` (translated at the seam, library.py).

NOT_SUPPORTED is remembered per GPU and call, so an unsupported read costs one call per static
refresh, and its series is absent rather than zero.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvscope.sources.nvml.library import (
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_TIMEOUT,
    NvmlError,
    NvmlLibrary,
    NvmlUnavailable,
)
from kvscope.sources.nvml.session import NvmlSession

log = logging.getLogger(__name__)

NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_TEMPERATURE_GPU = 0
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_EVENT_TYPE_XID_CRITICAL_ERROR = 0x8
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_VALUE_TYPE_DOUBLE = 0
NVML_GPM_METRICS_GET_VERSION = 1
NVML_MEMORY_V2 = 0x02000028  # nvmlMemory_v2: sizeof(nvmlMemory_v2_t) | 2 << 24

# GPM metric ids (nvml.h) -> our keys. Percent values; the collector divides by 100.
GPM_METRICS: Mapping[int, str] = {
    1: "gpm_graphics_util",  # NVML_GPM_METRIC_GRAPHICS_UTIL  ~ DCGM_FI_PROF_GR_ENGINE_ACTIVE
    2: "gpm_sm_util",  # NVML_GPM_METRIC_SM_UTIL                ~ DCGM_FI_PROF_SM_ACTIVE
    3: "gpm_sm_occupancy",  # NVML_GPM_METRIC_SM_OCCUPANCY      ~ DCGM_FI_PROF_SM_OCCUPANCY
    5: "gpm_any_tensor_util",  # NVML_GPM_METRIC_ANY_TENSOR_UTIL ~ DCGM_FI_PROF_PIPE_TENSOR_ACTIVE
    10: "gpm_dram_bw_util",  # NVML_GPM_METRIC_DRAM_BW_UTIL     ~ DCGM_FI_PROF_DRAM_ACTIVE
    20: "gpm_pcie_tx_mibps",  # NVML_GPM_METRIC_PCIE_TX_PER_SEC  ~ DCGM_FI_PROF_PCIE_TX_BYTES
    21: "gpm_pcie_rx_mibps",  # NVML_GPM_METRIC_PCIE_RX_PER_SEC  ~ DCGM_FI_PROF_PCIE_RX_BYTES
}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class GpuIdentity:
    index: int
    minor: int
    uuid: str
    name: str
    pci_bus_id: str
    mig_enabled: bool | None  # None: MIG not supported on this GPU


@dataclass(frozen=True)
class MigInstance:
    """One GPU instance of a MIG-enabled GPU, as dcgm-exporter labels it (GPU_I_PROFILE,
    GPU_I_ID); `uuid` is the MIG device the kubelet hands out (MIG-<uuid>)."""

    parent: GpuIdentity
    gpu_instance_id: int
    compute_instance_id: int
    profile: str  # e.g. 1g.18gb
    uuid: str


@dataclass(frozen=True)
class Inventory:
    driver_version: str
    gpus: tuple[GpuIdentity, ...]
    mig_instances: tuple[MigInstance, ...] = ()
    without_gpm: tuple[GpuIdentity, ...] = ()  # GPM asked for, NVML says unsupported (pre-Hopper)


@dataclass(frozen=True)
class MigReading:
    instance: MigInstance
    values: Mapping[str, float]


@dataclass(frozen=True)
class GpuReading:
    gpu: GpuIdentity
    values: Mapping[str, float]
    lost: bool = False
    errors: tuple[tuple[str, str], ...] = ()  # (call, error name) for reads that failed

    @property
    def failed(self) -> bool:
        """Every read of this GPU failed (NVML answers with errors, not values): the GPU is
        not being observed, so kvscope_gpu_up says 0."""
        return not self.lost and bool(self.errors) and not self.values


@dataclass(frozen=True)
class XidEvent:
    gpu: GpuIdentity | None
    xid: int
    timestamp: float


Reader = Callable[[NvmlLibrary, Any], dict[str, float]]


def _utilization(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    u = lib.nvmlDeviceGetUtilizationRates(h)
    return {"gpu_util": u.gpu, "mem_copy_util": u.memory}


def _encoder(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"enc_util": lib.nvmlDeviceGetEncoderUtilization(h)[0]}


def _decoder(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"dec_util": lib.nvmlDeviceGetDecoderUtilization(h)[0]}


def _clocks(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"sm_clock": lib.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM),
            "mem_clock": lib.nvmlDeviceGetClockInfo(h, NVML_CLOCK_MEM)}


def _temperature(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    # nvmlDeviceGetTemperature is deprecated for CUDA 14; prefer the V form where present.
    versioned = getattr(lib, "nvmlDeviceGetTemperatureV", None)
    if versioned is not None:
        return {"gpu_temp": versioned(h, NVML_TEMPERATURE_GPU)}
    return {"gpu_temp": lib.nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU)}


def _field_values(lib: NvmlLibrary, h: Any, fields: Mapping[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for fv in lib.nvmlDeviceGetFieldValues(h, list(fields)):
        if fv.nvmlReturn != 0:
            continue  # this field alone is unsupported: leave its series absent
        v = fv.value
        out[fields[fv.fieldId]] = v.dVal if fv.valueType == NVML_VALUE_TYPE_DOUBLE else v.ullVal
    return out


def _memory_temp(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return _field_values(lib, h, {NVML_FI_DEV_MEMORY_TEMP: "memory_temp"})


def _power(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"power_mw": lib.nvmlDeviceGetPowerUsage(h)}


def _power_limit(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"power_limit_mw": lib.nvmlDeviceGetEnforcedPowerLimit(h)}


def _memory(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    m = lib.nvmlDeviceGetMemoryInfo(h, version=NVML_MEMORY_V2)
    return {"fb_total": m.total, "fb_free": m.free, "fb_used": m.used,
            "fb_reserved": m.reserved}


def _clock_events(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"clock_events": lib.nvmlDeviceGetCurrentClocksEventReasons(h)}


def _processes(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"compute_processes": len(lib.nvmlDeviceGetComputeRunningProcesses(h))}


def _pcie_link(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"pcie_link_gen": lib.nvmlDeviceGetCurrPcieLinkGeneration(h),
            "pcie_link_width": lib.nvmlDeviceGetCurrPcieLinkWidth(h),
            "pcie_max_link_gen": lib.nvmlDeviceGetMaxPcieLinkGeneration(h),
            "pcie_max_link_width": lib.nvmlDeviceGetMaxPcieLinkWidth(h)}


def _vgpu_license(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    # DCGM's field 526 (vgpu_instance_license_status) is 1 when the vGPU is licensed. Which NVML
    # call DCGM makes for it is not documented; in a vGPU guest the licensable features say it:
    # licensed when a feature's state is 1. On bare metal NVML answers NOT_SUPPORTED, or
    # isGridLicenseSupported 0, and the series stays absent.
    features = lib.nvmlDeviceGetGridLicensableFeatures(h)
    if not features.isGridLicenseSupported:
        raise NvmlError(NVML_ERROR_NOT_SUPPORTED, "nvmlDeviceGetGridLicensableFeatures")
    count = int(features.licensableFeaturesCount)
    states = [int(f.featureState) for f in list(features.gridLicensableFeatures)[:count]]
    return {"vgpu_license": 1.0 if any(state == 1 for state in states) else 0.0}


def _energy(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"energy_mj": lib.nvmlDeviceGetTotalEnergyConsumption(h)}


def _pcie_replay(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    return {"pcie_replay": lib.nvmlDeviceGetPcieReplayCounter(h)}


def _remapped_rows(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    corr, unc, pending, failure = lib.nvmlDeviceGetRemappedRows(h)
    return {"remapped_correctable": corr, "remapped_uncorrectable": unc,
            "remap_pending": int(bool(pending)), "remap_failure": int(bool(failure))}


def _ecc(lib: NvmlLibrary, h: Any) -> dict[str, float]:
    get = lib.nvmlDeviceGetTotalEccErrors
    return {
        "ecc_sbe_volatile": get(h, NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_VOLATILE_ECC),
        "ecc_dbe_volatile": get(h, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC),
        "ecc_sbe_aggregate": get(h, NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_AGGREGATE_ECC),
        "ecc_dbe_aggregate": get(h, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_AGGREGATE_ECC),
    }


# Cheap calls (microseconds each on H200, reference device probe) go on the fast tier.
FAST_READERS: Mapping[str, Reader] = {
    "utilization": _utilization, "encoder": _encoder, "decoder": _decoder, "clocks": _clocks,
    "temperature": _temperature, "memory_temp": _memory_temp, "power": _power,
    "power_limit": _power_limit, "memory": _memory, "clock_events": _clock_events,
    "processes": _processes, "pcie_link": _pcie_link,
}
# Not read: NVML fields 197/198 (PCIE_COUNT_TX/RX_BYTES). Measured on H200 (driver 580.159.04)
# they are 32-bit and wrap every 4 GiB, i.e. every ~80 ms at PCIe Gen5 line rate, so no poll
# cadence an agent can afford unwraps them. PCIe throughput comes from GPM (metrics 20/21).
# Slow calls: energy 3-15 ms per GPU, PCIe replay 0.18 ms, ECC 4 calls.
SLOW_READERS: Mapping[str, Reader] = {
    "energy": _energy, "pcie_replay": _pcie_replay, "remapped_rows": _remapped_rows,
    "ecc": _ecc, "vgpu_license": _vgpu_license,
}


@dataclass
class _Gpm:
    samples: list[Any]
    taken_at: float | None = None  # monotonic time of samples[0]
    gpu_instance_id: int | None = None  # set: a MIG GPU instance's window


@dataclass
class _MigDevice:
    instance: MigInstance
    handle: Any  # the MIG device handle (framebuffer of its GPU instance)
    gpm: _Gpm | None = None


@dataclass
class _Device:
    identity: GpuIdentity
    handle: Any
    unsupported: set[str] = field(default_factory=set)
    gpm: _Gpm | None = None
    migs: list[_MigDevice] = field(default_factory=list)


def _unknown_identity(index: int) -> GpuIdentity:
    """A GPU that was already lost when first enumerated: only its index is known."""
    return GpuIdentity(index=index, minor=index, uuid="", name="", pci_bus_id="",
                       mig_enabled=None)


def _handle_key(handle: Any) -> Hashable:
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


class NvmlSource:
    """Blocking GPU reads over the agent's NVML session.

    The GPUs are enumerated by `open` (the static tier) and again whenever the session was
    re-initialised since (`NvmlSession.generation`): handles of an older session are dead."""

    def __init__(self, session: NvmlSession, *, gpm: bool = True, min_gpm_window: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._session = session
        self._generation = 0  # the session generation the devices were enumerated under
        self._use_gpm = gpm
        self._min_gpm_window = min_gpm_window
        self._monotonic = monotonic
        self._devices: list[_Device] = []
        self._by_handle: dict[Hashable, _Device] = {}
        self._event_set: Any = None
        self._registered: set[Hashable] = set()
        self.inventory: Inventory | None = None

    @property
    def lib(self) -> NvmlLibrary:
        return self._session.library()

    @property
    def stale(self) -> bool:
        """True when the session was re-initialised after the GPUs were enumerated."""
        return self._generation != self._session.generation

    # ---- identity (static tier) --------------------------------------------------------

    def open(self) -> Inventory:
        """Enumerate the GPUs (initialising the session on first use). Raises NvmlUnavailable,
        or NvmlError when NVML fails otherwise."""
        lib = self.lib
        if self.stale:
            self._forget_session()
        driver = _text(lib.nvmlSystemGetDriverVersion())
        devices: list[_Device] = []
        previous = {d.identity.index: d for d in self._devices}
        for index in range(lib.nvmlDeviceGetCount()):
            try:
                devices.append(self._describe(index, previous.get(index)))
            except NvmlError as exc:
                if exc.code != NVML_ERROR_GPU_IS_LOST:
                    raise
                # Keep what we knew of it, so kvscope_gpu_up can say 0 under the same labels.
                devices.append(previous.get(index) or _Device(_unknown_identity(index), None))
        self._devices = devices
        self._by_handle = {_handle_key(d.handle): d for d in devices if d.handle is not None}
        without_gpm = tuple(d.identity for d in devices if self._use_gpm and d.handle is not None
                            and not d.identity.mig_enabled and d.gpm is None)
        self.inventory = Inventory(driver, tuple(d.identity for d in devices),
                                   tuple(m.instance for d in devices for m in d.migs),
                                   without_gpm)
        try:
            self._register_events()
        except NvmlError as exc:
            log.debug("NVML event set unavailable: %s", exc)
        return self.inventory

    def _forget_session(self) -> None:
        """Drop what belonged to the previous session: handles, GPM samples, the event set."""
        self._devices = [_Device(d.identity, None) for d in self._devices]
        self._by_handle = {}
        self._event_set = None
        self._registered = set()
        self._generation = self._session.generation

    def _current(self) -> None:
        """Enumerate again first when the session was re-initialised since the last `open`."""
        if self.stale:
            self.open()

    def _describe(self, index: int, previous: _Device | None) -> _Device:
        lib = self.lib
        h = lib.nvmlDeviceGetHandleByIndex(index)
        try:
            mig: bool | None = bool(lib.nvmlDeviceGetMigMode(h)[0])
        except NvmlError as exc:
            if exc.code != NVML_ERROR_NOT_SUPPORTED:
                raise
            mig = None
        identity = GpuIdentity(
            index=index,
            minor=lib.nvmlDeviceGetMinorNumber(h),
            uuid=_text(lib.nvmlDeviceGetUUID(h)),
            name=_text(lib.nvmlDeviceGetName(h)),
            pci_bus_id=_text(lib.nvmlDeviceGetPciInfo(h).busId),
            mig_enabled=mig,
        )
        dev = _Device(identity, h)
        if previous is not None and previous.identity == identity and previous.handle is not None:
            dev.gpm = previous.gpm  # keep the GPM window running across refreshes
        elif self._use_gpm and not mig:
            dev.gpm = self._gpm_setup(h)
        if mig:
            dev.migs = self._mig_devices(identity, h, previous)
        return dev

    # ---- MIG (static tier) ---------------------------------------------------------------

    def _mig_devices(self, parent: GpuIdentity, h: Any,
                     previous: _Device | None) -> list[_MigDevice]:
        """One entry per GPU instance (dcgm-exporter's GPU_I entities): the first compute
        instance's MIG device stands for it, since the framebuffer belongs to the GPU instance
        and a second compute instance would repeat the same label set."""
        lib = self.lib
        known = {m.instance.uuid: m for m in previous.migs} if previous is not None else {}
        out: list[_MigDevice] = []
        seen: set[int] = set()
        for slot in range(lib.nvmlDeviceGetMaxMigDeviceCount(h)):
            try:
                mh = lib.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
            except NvmlError as exc:
                if exc.code == NVML_ERROR_NOT_FOUND:
                    continue  # an empty slot
                raise
            gi = int(lib.nvmlDeviceGetGpuInstanceId(mh))
            if gi in seen:
                continue
            seen.add(gi)
            instance = MigInstance(parent, gi, int(lib.nvmlDeviceGetComputeInstanceId(mh)),
                                   self._profile_name(h, gi), _text(lib.nvmlDeviceGetUUID(mh)))
            mig = _MigDevice(instance, mh)
            old = known.get(instance.uuid)
            if old is not None and old.instance == instance:
                mig.gpm = old.gpm
            elif self._use_gpm:
                mig.gpm = self._gpm_setup(h, gi)
            out.append(mig)
        return out

    def _profile_name(self, h: Any, gpu_instance_id: int) -> str:
        lib = self.lib
        info = lib.nvmlGpuInstanceGetInfo(lib.nvmlDeviceGetGpuInstanceById(h, gpu_instance_id))
        profile = lib.nvmlDeviceGetGpuInstanceProfileInfoById(h, info.profileId)
        return _text(profile.name).removeprefix("MIG ")  # "MIG 1g.18gb" -> dcgm's "1g.18gb"

    def _gpm_sample(self, h: Any, gpu_instance_id: int | None, sample: Any) -> None:
        if gpu_instance_id is None:
            self.lib.nvmlGpmSampleGet(h, sample)
        else:
            self.lib.nvmlGpmMigSampleGet(h, gpu_instance_id, sample)

    def _gpm_setup(self, h: Any, gpu_instance_id: int | None = None) -> _Gpm | None:
        """GPM windows for a GPU, or with `gpu_instance_id` for one GPU instance of it."""
        lib = self.lib
        try:
            if not lib.nvmlGpmQueryDeviceSupport(h).isSupportedDevice:
                return None
            gpm = _Gpm([lib.nvmlGpmSampleAlloc(), lib.nvmlGpmSampleAlloc()],
                       gpu_instance_id=gpu_instance_id)
            self._gpm_sample(h, gpu_instance_id, gpm.samples[0])
            gpm.taken_at = self._monotonic()
            return gpm
        except (NvmlError, AttributeError) as exc:
            log.debug("GPM not available: %s", exc)  # pre-Hopper GPU or old driver
            return None

    # ---- values (fast and slow tiers) --------------------------------------------------

    def read(self, readers: Mapping[str, Reader], *, with_gpm: bool = False) -> list[GpuReading]:
        self._current()
        lib = self.lib
        return [self._read_device(lib, d, readers, with_gpm) for d in self._devices]

    def _read_device(self, lib: NvmlLibrary, dev: _Device, readers: Mapping[str, Reader],
                     with_gpm: bool) -> GpuReading:
        if dev.handle is None:
            return GpuReading(dev.identity, {}, lost=True)
        values: dict[str, float] = {}
        errors: list[tuple[str, str]] = []
        for name, reader in readers.items():
            if name in dev.unsupported:
                continue
            try:
                values.update(reader(lib, dev.handle))
            except NvmlError as exc:
                if exc.code == NVML_ERROR_GPU_IS_LOST:
                    return GpuReading(dev.identity, {}, lost=True)
                if exc.code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
                    dev.unsupported.add(name)
                else:
                    errors.append((name, exc.name))
        if with_gpm and dev.gpm is not None:
            try:
                values.update(self._read_gpm(dev.handle, dev.gpm))
            except NvmlError as exc:
                if exc.code == NVML_ERROR_GPU_IS_LOST:
                    return GpuReading(dev.identity, {}, lost=True)
                errors.append(("gpm", exc.name))
        return GpuReading(dev.identity, values, errors=tuple(errors))

    def read_mig(self, *, with_gpm: bool = False) -> list[MigReading]:
        """Per GPU instance: its framebuffer (NVML MemoryInfo on the MIG device) and, on Hopper
        and newer, its GPM ratios. A failing instance leaves its series absent."""
        self._current()
        lib = self.lib
        out: list[MigReading] = []
        for dev in self._devices:
            if dev.handle is None:
                continue
            for mig in dev.migs:
                values: dict[str, float] = {}
                try:
                    values.update(_memory(lib, mig.handle))
                    if with_gpm and mig.gpm is not None:
                        values.update(self._read_gpm(dev.handle, mig.gpm))
                except NvmlError as exc:
                    log.debug("MIG %s: %s", mig.instance.uuid, exc)
                out.append(MigReading(mig.instance, values))
        return out

    def _read_gpm(self, handle: Any, gpm: _Gpm) -> dict[str, float]:
        assert gpm.taken_at is not None
        now = self._monotonic()
        if now - gpm.taken_at < self._min_gpm_window:
            return {}  # too short a window reads zero on real GPUs: absent, not a false 0
        lib = self.lib
        older, newer = gpm.samples
        self._gpm_sample(handle, gpm.gpu_instance_id, newer)
        request = lib.c_nvmlGpmMetricsGet_t()
        request.version = NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_METRICS)
        request.sample1 = older
        request.sample2 = newer
        for slot, metric_id in enumerate(GPM_METRICS):
            request.metrics[slot].metricId = metric_id
        lib.nvmlGpmMetricsGet(request)
        gpm.samples = [newer, older]  # the newest sample opens the next window
        gpm.taken_at = now
        out: dict[str, float] = {}
        for slot in range(len(GPM_METRICS)):
            metric = request.metrics[slot]
            if metric.nvmlReturn == 0 and metric.value == metric.value:  # NaN: no data
                out[GPM_METRICS[metric.metricId]] = metric.value
        return out

    # ---- XID events (event tier) -------------------------------------------------------

    def _register_events(self) -> None:
        """Register every known GPU for XID events, at discovery: a GPU that falls off the bus
        must already be registered to report the XID that says so."""
        lib = self.lib
        if self._event_set is None:
            self._event_set = lib.nvmlEventSetCreate()
        for dev in self._devices:
            key = _handle_key(dev.handle)
            if dev.handle is None or key in self._registered:
                continue
            try:
                lib.nvmlDeviceRegisterEvents(dev.handle, NVML_EVENT_TYPE_XID_CRITICAL_ERROR,
                                             self._event_set)
                self._registered.add(key)
            except NvmlError as exc:
                log.debug("GPU %d: XID events unavailable: %s", dev.identity.index, exc)

    def wait_xid(self, timeout_ms: int) -> list[XidEvent]:
        """Block up to `timeout_ms` for XID events; return everything pending. Raises NvmlError
        for anything but the wait's own timeout (the caller backs off)."""
        self._current()
        lib = self.lib
        if self._event_set is None:
            self._register_events()
        events: list[XidEvent] = []
        wait = timeout_ms
        while True:
            try:
                data = lib.nvmlEventSetWait(self._event_set, wait)
            except NvmlError as exc:
                if exc.code == NVML_ERROR_TIMEOUT:
                    return events
                raise
            source = self._by_handle.get(_handle_key(data.device))
            events.append(XidEvent(source.identity if source else None, int(data.eventData),
                                   time.time()))
            wait = 0  # drain whatever else is already queued, without waiting again

    def close(self) -> None:
        """Free the event set and GPM samples; the session itself is shut down by its owner."""
        if self.inventory is None or self.stale:
            return  # never opened, or its session is gone already
        try:
            lib = self.lib
            if self._event_set is not None:
                lib.nvmlEventSetFree(self._event_set)
            for dev in self._devices:
                for gpm in [dev.gpm, *(m.gpm for m in dev.migs)]:
                    for sample in gpm.samples if gpm is not None else ():
                        lib.nvmlGpmSampleFree(sample)
        except (NvmlError, NvmlUnavailable) as exc:
            log.debug("NVML release: %s", exc)
        self._event_set = None
