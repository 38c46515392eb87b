"""GPU collector: NVML readings under dcgm-exporter 4.8.x's names, units and labels.

Tiers: static (enumerate GPUs), fast (utilisation, memory, clocks, power, GPM ratios), slow
(energy, PCIe replay, ECC, remapped rows: slow or rarely changing on real hardware) and event
(XID errors from the NVML event set). Series that NVML does not support are absent, not zero.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import Metric

from kvscope.analysis.xid import dcgm_err_msg, describe_xid
from kvscope.collectors import dcgm_compat
from kvscope.collectors.base import Collector, CollectorError, PollResult, Pool, Schedule, Tier
from kvscope.collectors.dcgm_compat import DEFAULT_COMPAT, Compat
from kvscope.collectors.labels import gpu_identity_labels
from kvscope.context import NodeContext
from kvscope.render.families import Family, counter, gauge, non_empty
from kvscope.sources.nvml import (
    FAST_READERS,
    SLOW_READERS,
    GpuIdentity,
    GpuReading,
    MigInstance,
    MigReading,
    NvmlSource,
    NvmlUnavailable,
    XidEvent,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Spec:
    """One exported family fed by one reading key."""

    name: str
    kind: str  # gauge | counter
    help: str
    key: str
    scale: Callable[[float], float] = float
    dcgm: bool = True  # a DCGM_* family (compat labels) rather than a kvscope_* one


def _kvscope(name: str, help_text: str, key: str) -> Spec:
    return Spec(name, "gauge", help_text, key, dcgm=False)


def dcgm_spec(key: str, compat: Compat) -> Spec:
    """The family a DCGM reading is exported as under `compat` (dcgm_compat's table)."""
    entry = dcgm_compat.field(key)
    naming = entry.naming(compat)
    return Spec(naming.name, naming.kind, entry.help_for(compat), key,
                functools.partial(entry.convert, compat))


# Families in exposition order; a str is a DCGM reading key looked up in the compat table.
FAST_ORDER: tuple[str | Spec, ...] = (
    "sm_clock", "mem_clock", "memory_temp", "gpu_temp", "power_mw", "gpu_util", "mem_copy_util",
    "enc_util", "dec_util", "fb_free", "fb_used", "fb_reserved", "fb_total", "power_limit_mw",
    "clock_events", "pcie_link_gen", "pcie_link_width", "pcie_max_link_gen",
    "pcie_max_link_width",
    _kvscope("kvscope_gpu_compute_processes",
             "Compute processes holding a context on the GPU. NVML ComputeRunningProcesses.",
             "compute_processes"),
    # Hopper+ profiling ratios from NVML GPM, one fast poll apart (dcgm-exporter needs DCGM's
    # profiling module for these). They tell a busy GPU from one that merely has a kernel resident.
    "gpm_graphics_util", "gpm_sm_util", "gpm_sm_occupancy", "gpm_any_tensor_util",
    "gpm_dram_bw_util", "gpm_pcie_tx_mibps", "gpm_pcie_rx_mibps",
)

SLOW_ORDER: tuple[str | Spec, ...] = (
    "energy_mj", "pcie_replay", "remapped_correctable", "remapped_uncorrectable", "remap_failure",
    _kvscope("kvscope_gpu_row_remap_pending",
             "1 when a row remap waits for the next GPU reset to take effect.", "remap_pending"),
    "ecc_sbe_volatile", "ecc_dbe_volatile", "ecc_sbe_aggregate", "ecc_dbe_aggregate",
    "vgpu_license",
)


def specs(order: Sequence[str | Spec], compat: Compat) -> tuple[Spec, ...]:
    return tuple(dcgm_spec(item, compat) if isinstance(item, str) else item for item in order)


# What NVML gives per GPU instance: the instance's framebuffer, and GPM on Hopper and newer.
# PCIe rates are the whole GPU's ("no physical meaning for MIG", DCGM returns N/A for them).
PER_INSTANCE_KEYS = frozenset({
    "fb_free", "fb_used", "fb_reserved", "fb_total", "gpm_graphics_util", "gpm_sm_util",
    "gpm_sm_occupancy", "gpm_any_tensor_util", "gpm_dram_bw_util"})

FAST_SPECS = specs(FAST_ORDER, DEFAULT_COMPAT)
SLOW_SPECS = specs(SLOW_ORDER, DEFAULT_COMPAT)

# nvmlClocksEventReason bits, named as dcgm-exporter's clock_event label does.
CLOCK_EVENT_REASONS: Mapping[int, str] = {
    0x1: "gpu_idle", 0x2: "clocks_setting", 0x4: "power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
    0x100: "display_clocks",
}


class GpuCollector(Collector):
    name = "gpu"

    def __init__(self, ctx: NodeContext,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._ctx = ctx
        self._monotonic = monotonic
        self._cfg = ctx.config.collectors.gpu
        self._source: NvmlSource | None = None
        self._unavailable: str | None = None
        self._identities: tuple[GpuIdentity, ...] = ()
        self._driver = ""
        self._nvml_errors: Counter[tuple[int, str, str]] = Counter()
        self._xid_counts: Counter[tuple[int, int]] = Counter()  # (gpu index, xid)
        self._last_xid: dict[int, int] = {}
        self._compat: Compat = ctx.config.dcgm.compat
        self._told_no_gpm: set[str] = set()
        self._fast_specs = specs(FAST_ORDER, self._compat)
        self._slow_specs = specs(SLOW_ORDER, self._compat)

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

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        return PollResult(await self._families_of(tier, pool))

    async def _families_of(self, tier: Tier, pool: Pool) -> Sequence[Metric]:
        if tier is Tier.STATIC:
            return await self._poll_static(pool)
        if self._unavailable is not None:
            if tier is Tier.FAST:
                # A GPU agent that exports no GPU series is broken, not healthy: the fast tier
                # fails, so kvscope_collector_up{collector="gpu",tier="fast"} is 0 with this
                # reason while the static tier keeps serving kvscope_gpu_nvml_available 0. On a
                # node that runs the GPU agent a missing driver or library is a broken deployment
                # (wrong image, no driver mount), not quiet absent hardware; the runtime logs
                # this at warning level once, then at debug while it lasts.
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
            readings, migs = await pool.run(self._read_fast, source)
            return self._fast_families(readings, migs)
        if tier is Tier.SLOW:
            readings = await pool.run(source.read, SLOW_READERS)
            return self._value_families(readings, self._slow_specs)
        wait_ms = 0 if self._ctx.oneshot else int(self._cfg.xid_wait * 1000)
        events = await pool.run(source.wait_xid, wait_ms)
        self._count_xids(events)
        return self._xid_families()

    def _read_fast(self, source: NvmlSource) -> tuple[list[GpuReading], list[MigReading]]:
        """Blocking: the whole GPUs, then the GPU instances of MIG-enabled ones."""
        readings = source.read(FAST_READERS, with_gpm=self._cfg.gpm)
        return readings, source.read_mig(with_gpm=self._cfg.gpm)

    async def _poll_static(self, pool: Pool) -> Sequence[Metric]:
        if self._source is None:
            try:
                lib = self._ctx.backends.nvml.library()
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
        self._say_without_gpm(inventory.without_gpm)
        self._identities = inventory.gpus
        self._driver = inventory.driver_version
        nvml = gauge("kvscope_gpu_nvml_available",
                     "1 when NVML loaded; 0 means no GPU driver or library on this node.")
        return non_empty(nvml.add({}, 1), self._mig_family())

    def _say_without_gpm(self, gpus: Sequence[GpuIdentity]) -> None:
        """Once per GPU: a pre-Hopper GPU has no GPM, so no DCGM_FI_PROF_* (README: GPU)."""
        for gpu in gpus:
            if gpu.uuid not in self._told_no_gpm:
                self._told_no_gpm.add(gpu.uuid)
                log.info("GPU %d (%s): no NVML GPM (Hopper and newer only), so no DCGM_FI_PROF_* "
                         "series; DCGM's profiling module provides them on this GPU", gpu.index,
                         gpu.name)

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

    def _labels(self, gpu: GpuIdentity, *, dcgm: bool = False) -> dict[str, str]:
        """kvscope_* identity labels, or with `dcgm` those of the selected dcgm-exporter
        release (the same under the default compat)."""
        return gpu_identity_labels(self._ctx.config, gpu, self._driver,
                                   self._ctx.shared.pods.pod_of(gpu.uuid), dcgm=dcgm)

    # ---- families ------------------------------------------------------------------------

    def _instance_labels(self, instance: MigInstance) -> dict[str, str]:
        """dcgm-exporter's labels of a GPU-instance series: the parent GPU's identity, then
        GPU_I_PROFILE and GPU_I_ID; the pod is the one holding this MIG device (kubelet device
        id MIG-<uuid>, or MIG-GPU-<parent uuid>/<gi>/<ci> from old drivers)."""
        pods = self._ctx.shared.pods
        pod = pods.pod_of(instance.uuid) or pods.pod_of(
            f"{instance.parent.uuid}/{instance.gpu_instance_id}")
        labels = gpu_identity_labels(self._ctx.config, instance.parent, self._driver, pod,
                                     dcgm=True)
        labels["GPU_I_PROFILE"] = instance.profile
        labels["GPU_I_ID"] = str(instance.gpu_instance_id)
        return labels

    def _mig_family(self) -> Family:
        mig = gauge("kvscope_gpu_mig_enabled",
                    "1 when MIG mode is on: framebuffer and DCGM_FI_PROF_* series are then per "
                    "GPU instance (GPU_I_PROFILE, GPU_I_ID), and DCGM_FI_DEV_GPU_UTIL is absent.")
        for gpu in self._identities:
            if gpu.mig_enabled is not None:
                mig.add(self._labels(gpu), int(gpu.mig_enabled))
        return mig

    def _value_families(self, readings: Sequence[GpuReading], specs: Sequence[Spec],
                        migs: Sequence[MigReading] = ()) -> list[Metric]:
        families = {s.name: Family(s.name, s.help, s.kind) for s in specs}
        for reading in readings:
            if reading.lost:
                continue
            for call, error in reading.errors:
                self._nvml_errors[(reading.gpu.index, call, error)] += 1
            labels = {True: self._labels(reading.gpu, dcgm=True),
                      False: self._labels(reading.gpu)}
            for spec in specs:
                value = reading.values.get(spec.key)
                if value is None or (reading.gpu.mig_enabled and spec.key in PER_INSTANCE_KEYS):
                    continue  # with MIG on, these are the instances' series below
                families[spec.name].add(labels[spec.dcgm], spec.scale(value))
        for mig in migs:
            instance_labels = self._instance_labels(mig.instance)
            for spec in specs:
                value = mig.values.get(spec.key)
                if value is not None and spec.key in PER_INSTANCE_KEYS:
                    families[spec.name].add(instance_labels, spec.scale(value))
        return non_empty(*families.values())

    def _fast_families(self, readings: Sequence[GpuReading],
                       migs: Sequence[MigReading] = ()) -> list[Metric]:
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
        families = self._value_families(readings, self._fast_specs, migs)
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
        spec = dcgm_spec("xid", self._compat)
        last = gauge(spec.name, spec.help)
        total = counter("kvscope_gpu_xid_errors_total",
                        "XID errors by code, counted from the NVML event set.")
        by_index = {g.index: g for g in self._identities}
        for gpu in self._identities:
            xid = self._last_xid.get(gpu.index, 0)
            last.add({**self._labels(gpu, dcgm=True), "err_code": str(xid),
                      "err_msg": dcgm_err_msg(xid)}, xid)
        for (index, xid), n in sorted(self._xid_counts.items()):
            gpu_identity = by_index.get(index)
            labels = self._labels(gpu_identity) if gpu_identity else {"gpu": "unknown"}
            total.add({**labels, "xid": str(xid)}, n)
        return non_empty(last, total)
