"""GPU collector: NVML readings under dcgm-exporter 4.8.x's names, units and labels.

Tiers: static (enumerate GPUs), fast (utilisation, memory, clocks, power, GPM ratios), slow
(energy, PCIe replay, ECC, remapped rows: slow or rarely changing on real hardware) and event
(XID errors from the NVML event set). Series that NVML does not support are absent, not zero.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric

from kvscope.context import NodeContext
from kvscope.families import Family, counter, gauge, non_empty
from kvscope.runtime import BlockingPool, Collector, CollectorError, Schedule, Tier
from kvscope.sources.nvml import (
    FAST_READERS,
    SLOW_READERS,
    GpuIdentity,
    GpuReading,
    NvmlSource,
    NvmlUnavailable,
    XidEvent,
)
from kvscope.xid import describe_xid

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class Spec:
    """One exported family fed by one reading key."""

    name: str
    kind: str  # gauge | counter
    help: str
    key: str
    scale: Callable[[float], float] = float


def _mib(v: float) -> float:
    return float(int(v) // MIB)  # DCGM reports whole MiB


def _watts(v: float) -> float:
    return v / 1000.0


def _mib_to_bytes(v: float) -> float:
    return v * MIB


def _ratio(v: float) -> float:
    return v / 100.0


FAST_SPECS: tuple[Spec, ...] = (
    Spec("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz). NVML ClockInfo.",
         "sm_clock"),
    Spec("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz). NVML ClockInfo.",
         "mem_clock"),
    Spec("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C). NVML field 82.",
         "memory_temp"),
    Spec("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C). NVML TemperatureV.",
         "gpu_temp"),
    Spec("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W). NVML PowerUsage.", "power_mw",
         _watts),
    Spec("DCGM_FI_DEV_GPU_UTIL", "gauge",
         "GPU utilization (in %): share of time a kernel was resident, not how busy the SMs are. "
         "NVML UtilizationRates.", "gpu_util"),
    Spec("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %). NVML UtilizationRates.",
         "mem_copy_util"),
    Spec("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", "enc_util"),
    Spec("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", "dec_util"),
    Spec("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB). NVML MemoryInfo v2.",
         "fb_free", _mib),
    Spec("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB). NVML MemoryInfo v2.",
         "fb_used", _mib),
    Spec("DCGM_FI_DEV_FB_RESERVED", "gauge",
         "Framebuffer memory reserved by the driver (in MiB). NVML MemoryInfo v2.",
         "fb_reserved", _mib),
    Spec("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB). NVML MemoryInfo v2.",
         "fb_total", _mib),
    Spec("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", "gauge",
         "Power limit the driver enforces (in W). NVML EnforcedPowerLimit.", "power_limit_mw",
         _watts),
    Spec("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge",
         "Bitmask of reasons holding clocks down (nvmlClocksEventReason*). "
         "See kvscope_gpu_clock_event_active for one series per reason.", "clock_events"),
    Spec("DCGM_FI_DEV_PCIE_LINK_GEN", "gauge", "Current PCIe link generation.", "pcie_link_gen"),
    Spec("DCGM_FI_DEV_PCIE_LINK_WIDTH", "gauge", "Current PCIe link width (lanes).",
         "pcie_link_width"),
    Spec("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "gauge", "Maximum PCIe link generation of the GPU.",
         "pcie_max_link_gen"),
    Spec("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "gauge", "Maximum PCIe link width of the GPU (lanes).",
         "pcie_max_link_width"),
    Spec("kvscope_gpu_compute_processes", "gauge",
         "Compute processes holding a context on the GPU. NVML ComputeRunningProcesses.",
         "compute_processes"),
    # Hopper+ profiling ratios from NVML GPM, one fast poll apart (dcgm-exporter needs DCGM's
    # profiling module for these). They tell a busy GPU from one that merely has a kernel resident.
    Spec("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge",
         "Ratio of time the graphics engine was active (0-1). NVML GPM GRAPHICS_UTIL.",
         "gpm_graphics_util", _ratio),
    Spec("DCGM_FI_PROF_SM_ACTIVE", "gauge",
         "Ratio of cycles an SM had at least one warp assigned (0-1). NVML GPM SM_UTIL.",
         "gpm_sm_util", _ratio),
    Spec("DCGM_FI_PROF_SM_OCCUPANCY", "gauge",
         "Ratio of resident warps to the SM maximum (0-1). NVML GPM SM_OCCUPANCY.",
         "gpm_sm_occupancy", _ratio),
    Spec("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge",
         "Ratio of cycles a tensor pipe was active (0-1). NVML GPM ANY_TENSOR_UTIL.",
         "gpm_any_tensor_util", _ratio),
    Spec("DCGM_FI_PROF_DRAM_ACTIVE", "gauge",
         "Ratio of cycles the memory interface was busy (0-1). NVML GPM DRAM_BW_UTIL.",
         "gpm_dram_bw_util", _ratio),
    Spec("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge",
         "PCIe transmit rate (bytes/s) averaged over one fast poll. NVML GPM PCIE_TX_PER_SEC.",
         "gpm_pcie_tx_mibps", _mib_to_bytes),
    Spec("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge",
         "PCIe receive rate (bytes/s) averaged over one fast poll. NVML GPM PCIE_RX_PER_SEC.",
         "gpm_pcie_rx_mibps", _mib_to_bytes),
)

SLOW_SPECS: tuple[Spec, ...] = (
    Spec("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
         "Total energy consumption since the driver was last loaded (in mJ). NVML "
         "TotalEnergyConsumption, read on the slow tier (3-15 ms per GPU).", "energy_mj"),
    Spec("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.",
         "pcie_replay"),
    Spec("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter",
         "Number of remapped rows for correctable errors.", "remapped_correctable"),
    Spec("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
         "Number of remapped rows for uncorrectable errors.", "remapped_uncorrectable"),
    Spec("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge",
         "Whether remapping of rows has failed (1: the GPU needs service).", "remap_failure"),
    Spec("kvscope_gpu_row_remap_pending", "gauge",
         "1 when a row remap waits for the next GPU reset to take effect.", "remap_pending"),
    Spec("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter",
         "Single-bit (corrected) ECC errors since the last driver load.", "ecc_sbe_volatile"),
    Spec("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter",
         "Double-bit (uncorrected) ECC errors since the last driver load.", "ecc_dbe_volatile"),
    Spec("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter",
         "Single-bit (corrected) ECC errors over the GPU's lifetime.", "ecc_sbe_aggregate"),
    Spec("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter",
         "Double-bit (uncorrected) ECC errors over the GPU's lifetime.", "ecc_dbe_aggregate"),
)

# nvmlClocksEventReason bits, named as dcgm-exporter's clock_event label does.
CLOCK_EVENT_REASONS: Mapping[int, str] = {
    0x1: "gpu_idle", 0x2: "clocks_setting", 0x4: "power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
    0x100: "display_clocks",
}


class GpuCollector(Collector):
    name = "gpu"

    def __init__(self, ctx: NodeContext, library: Any = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._ctx = ctx
        self._monotonic = monotonic
        self._cfg = ctx.config.collectors.gpu
        self._library = library
        self._source: NvmlSource | None = None
        self._unavailable: str | None = None
        self._identities: tuple[GpuIdentity, ...] = ()
        self._driver = ""
        self._nvml_errors: Counter[tuple[int, str, str]] = Counter()
        self._xid_counts: Counter[tuple[int, int]] = Counter()  # (gpu index, xid)
        self._last_xid: dict[int, int] = {}

    def schedules(self) -> dict[Tier, Schedule]:
        c = self._cfg.cadence
        t = self._cfg.timeout
        return {
            Tier.STATIC: Schedule(c.static, t),
            Tier.FAST: Schedule(c.fast, t),
            Tier.SLOW: Schedule(c.slow, t),
            Tier.EVENT: Schedule(0.0, self._cfg.xid_wait + t),
        }

    # ---- polling -------------------------------------------------------------------------

    async def poll(self, tier: Tier, pool: BlockingPool) -> Sequence[Metric]:
        if tier is Tier.STATIC:
            return await self._poll_static(pool)
        if self._unavailable is not None:
            if tier is Tier.FAST:
                # A GPU agent that exports no GPU series is broken, not healthy: the fast tier
                # fails, so kvscope_collector_up{collector="gpu"} is 0 with this reason while
                # the static tier keeps serving kvscope_gpu_nvml_available 0. On a node that
                # runs the GPU agent a missing driver or library is a broken deployment (wrong
                # image, no driver mount), not quiet absent hardware; the runtime logs this at
                # warning level once, then at debug while it lasts.
                raise CollectorError(
                    "nvml_unavailable",
                    f"no GPU metrics, {self._unavailable} (kvscope_gpu_nvml_available 0); mount "
                    "the NVIDIA driver library, or run with --no-collector.gpu on nodes without "
                    "GPUs")
            if tier is Tier.EVENT and not self._ctx.oneshot:
                await asyncio.sleep(self._cfg.xid_wait)  # nothing to wait on; do not spin
            return []
        source = self._source
        if source is None or source.inventory is None:
            raise CollectorError("not_initialised", "NVML was not initialised by the static tier")
        if tier is Tier.FAST:
            if not source.inventory.gpus:
                # NVML loaded but sees no GPU: the container was not given the node's GPUs.
                raise CollectorError(
                    "no_gpus", "NVML sees no GPU, so no GPU metrics; give the agent every GPU "
                    "(NVIDIA_VISIBLE_DEVICES=all, and no nvidia.com/gpu resource request)")
            readings = await pool.run(source.read, FAST_READERS, with_gpm=self._cfg.gpm)
            return self._fast_families(readings)
        if tier is Tier.SLOW:
            readings = await pool.run(source.read, SLOW_READERS)
            return self._value_families(readings, SLOW_SPECS)
        wait_ms = 0 if self._ctx.oneshot else int(self._cfg.xid_wait * 1000)
        events = await pool.run(source.wait_xid, wait_ms)
        self._count_xids(events)
        return self._xid_families()

    async def _poll_static(self, pool: BlockingPool) -> Sequence[Metric]:
        if self._source is None:
            try:
                lib = self._library if self._library is not None else self._ctx.nvml_library()
                self._source = NvmlSource(lib, gpm=self._cfg.gpm,
                                          min_gpm_window=self._cfg.min_gpm_window,
                                          monotonic=self._monotonic)
            except NvmlUnavailable as exc:
                return self._mark_unavailable(str(exc))
        try:
            inventory = await pool.run(self._source.open)
        except NvmlUnavailable as exc:
            return self._mark_unavailable(str(exc))
        self._unavailable = None
        self._identities = inventory.gpus
        self._driver = inventory.driver_version
        nvml = gauge("kvscope_gpu_nvml_available",
                     "1 when NVML loaded; 0 means no GPU driver or library on this node.")
        return non_empty(nvml.add({}, 1), self._mig_family())

    def _mark_unavailable(self, why: str) -> list[Metric]:
        if self._unavailable is None:
            # The operator hears of it once, at warning level, from the fast tier's failure (see
            # poll); this line only records when it started.
            log.debug("no GPU hardware: %s", why)
        self._unavailable = why
        nvml = gauge("kvscope_gpu_nvml_available",
                     "1 when NVML loaded; 0 means no GPU driver or library on this node.")
        return non_empty(nvml.add({}, 0))

    async def close(self) -> None:
        if self._source is not None:
            await asyncio.to_thread(self._source.close)

    # ---- labels --------------------------------------------------------------------------

    def _labels(self, gpu: GpuIdentity) -> dict[str, str]:
        labels = {"gpu": str(gpu.index), "UUID": gpu.uuid, "pci_bus_id": gpu.pci_bus_id,
                  "device": f"nvidia{gpu.minor}", "modelName": gpu.name,
                  self._ctx.config.hostname_label: self._ctx.config.node_name}
        if self._ctx.config.driver_version_label:
            labels["DCGM_FI_DRIVER_VERSION"] = self._driver
        pod = self._ctx.gpu_pods.get(gpu.uuid)
        if pod:
            labels.update(pod)
        return labels

    # ---- families ------------------------------------------------------------------------

    def _mig_family(self) -> Family:
        mig = gauge("kvscope_gpu_mig_enabled",
                    "1 when MIG mode is on: per-instance metrics are not exported yet, and "
                    "DCGM_FI_DEV_GPU_UTIL is absent on MIG GPUs.")
        for gpu in self._identities:
            if gpu.mig_enabled is not None:
                mig.add(self._labels(gpu), int(gpu.mig_enabled))
        return mig

    def _value_families(self, readings: Sequence[GpuReading],
                        specs: Sequence[Spec]) -> list[Metric]:
        families = {s.name: Family(s.name, s.help, s.kind) for s in specs}
        for reading in readings:
            if reading.lost:
                continue
            labels = self._labels(reading.gpu)
            for spec in specs:
                value = reading.values.get(spec.key)
                if value is not None:
                    families[spec.name].add(labels, spec.scale(value))
            for call, error in reading.errors:
                self._nvml_errors[(reading.gpu.index, call, error)] += 1
        return non_empty(*families.values())

    def _fast_families(self, readings: Sequence[GpuReading]) -> list[Metric]:
        up = gauge("kvscope_gpu_up",
                   "1 when NVML answers for this GPU; 0 when it is lost (e.g. XID 79, fallen off "
                   "the bus). The other GPUs keep exporting.")
        events = gauge("kvscope_gpu_clock_event_active",
                       "1 while the named reason holds the GPU's clocks down "
                       "(power_cap, hw_slowdown, sw_thermal, ...).")
        for reading in readings:
            labels = self._labels(reading.gpu)
            up.add(labels, 0 if reading.lost else 1)
            mask = reading.values.get("clock_events")
            if mask is not None:
                for bit, reason in CLOCK_EVENT_REASONS.items():
                    events.add({**labels, "reason": reason}, 1 if int(mask) & bit else 0)
        families = self._value_families(readings, FAST_SPECS)
        errors = counter("kvscope_gpu_nvml_errors_total",
                         "NVML calls that failed with an error other than NOT_SUPPORTED.")
        for (index, call, error), n in sorted(self._nvml_errors.items()):
            errors.add({"gpu": str(index), "call": call, "error": error}, n)
        return [*non_empty(up), *families, *non_empty(events, errors)]

    def _count_xids(self, events: Sequence[XidEvent]) -> None:
        for event in events:
            index = event.gpu.index if event.gpu is not None else -1
            self._xid_counts[(index, event.xid)] += 1
            self._last_xid[index] = event.xid
            log.warning("XID %d on GPU %s: %s", event.xid, index, describe_xid(event.xid))

    def _xid_families(self) -> list[Metric]:
        last = gauge("DCGM_FI_DEV_XID_ERRORS",
                     "Value of the last XID error encountered (0: none since the agent started). "
                     "Never resets: use kvscope_gpu_xid_errors_total for rates and alerts.")
        total = counter("kvscope_gpu_xid_errors_total",
                        "XID errors by code, counted from the NVML event set.")
        by_index = {g.index: g for g in self._identities}
        for gpu in self._identities:
            xid = self._last_xid.get(gpu.index, 0)
            last.add({**self._labels(gpu), "err_code": str(xid), "err_msg": describe_xid(xid)},
                     xid)
        for (index, xid), n in sorted(self._xid_counts.items()):
            gpu_identity = by_index.get(index)
            labels = self._labels(gpu_identity) if gpu_identity else {"gpu": "unknown"}
            total.add({**labels, "xid": str(xid)}, n)
        return non_empty(last, total)
