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
from kvscope.parsers.nvidia_procfs import ProcfsGpu
from kvscope.render.families import Family, counter, gauge, non_empty
from kvscope.sources.nvidia_procfs import read_gpus
from kvscope.sources.nvml import (
    FAST_READERS,
    SLOW_READERS,
    GpuIdentity,
    GpuReading,
    MigInstance,
    MigReading,
    NvmlError,
    NvmlSource,
    NvmlUnavailable,
    XidEvent,
    call_detached,
)
from kvscope.sources.nvml.session import HangGuard

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


# NvmlError names that mean NVML as a whole is gone (library.LIBRARY_GONE), not one GPU.
LIBRARY_GONE_NAMES = frozenset({"uninitialized", "driver_not_loaded", "nvml_error_12"})


def _reason(exc: NvmlError) -> str:
    """An NVML failure as an errors_total reason: nvml_<name>."""
    return exc.name if exc.name.startswith("nvml_") else f"nvml_{exc.name}"


def _procfs_identity(gpu: ProcfsGpu) -> GpuIdentity:
    """A GPU the driver lists, as NVML would name it; NVML's index is taken to be the device
    minor, which it is unless GPUs are hidden from the agent."""
    return GpuIdentity(index=gpu.minor, minor=gpu.minor, uuid=gpu.uuid, name=gpu.model,
                       pci_bus_id=gpu.pci_bus_id, mig_enabled=None)


class GpuCollector(Collector):
    name = "gpu"

    def __init__(self, ctx: NodeContext,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._ctx = ctx
        self._monotonic = monotonic
        self._cfg = ctx.config.collectors.gpu
        self._session = ctx.backends.nvml
        self._source = NvmlSource(self._session, gpm=self._cfg.gpm,
                                  min_gpm_window=self._cfg.min_gpm_window, monotonic=monotonic)
        # The fast reads run behind a deadline of their own, so a hung driver still gets a
        # kvscope_gpu_up 0 per GPU from this tier (an alert on it fires) instead of silence.
        self._fast_reads = HangGuard("gpu-fast-nvml")
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
        try:
            if tier is Tier.FAST and self._unavailable is None and \
                    self._source.inventory is not None and self._source.inventory.gpus:
                return await self._poll_fast(pool)
            if tier is Tier.FAST and self._unavailable is None and self._source.inventory is None:
                return await self._poll_fast_from_procfs(pool)
            return PollResult(await self._families_of(tier, pool))
        except NvmlError as exc:
            if exc.library_gone:
                self._session.mark_broken(exc.name)
            raise CollectorError(_reason(exc), f"NVML: {exc}") from None
        except NvmlUnavailable as exc:  # a later tier found the session down (driver gone)
            raise CollectorError("nvml_unavailable", f"NVML does not answer: {exc}") from None

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
        if source.inventory is None:
            raise CollectorError("not_initialised", "NVML was not initialised by the static tier")
        if tier is Tier.FAST:
            # NVML loaded but sees no GPU: the container was not given the node's GPUs.
            raise CollectorError(
                "no_gpus", "NVML sees no GPU, so no GPU metrics; give the agent every GPU "
                "(NVIDIA_VISIBLE_DEVICES=all, and no nvidia.com/gpu resource request)")
        if tier is Tier.SLOW:
            readings = await pool.run(source.read, SLOW_READERS)
            return self._value_families(readings, self._slow_specs)
        return await self._poll_events(pool, source)

    async def _poll_fast(self, pool: Pool) -> PollResult:
        if self._fast_reads.stuck:
            return self._not_answering("busy", "the previous NVML read is still running (the "
                                       "driver does not answer)")
        if self._session.broken is not None:
            await pool.run(self._session.recover)  # at most once per back-off step
        deadline = self._cfg.timeout * 0.8
        try:
            readings, migs = await self._fast_reads.run(
                functools.partial(self._read_fast, self._source), deadline)
        except TimeoutError:
            return self._not_answering("timeout", f"NVML did not answer within {deadline:.1f}s")
        except NvmlUnavailable as exc:  # the session is down and cannot be initialised yet
            self._session.mark_broken("unavailable")
            return self._not_answering("nvml_unavailable", f"NVML does not answer: {exc}")
        except NvmlError as exc:
            if exc.library_gone:
                self._session.mark_broken(exc.name)
            return self._not_answering(_reason(exc), f"NVML: {exc}")
        if readings and all(r.failed for r in readings):
            gone = [e for r in readings for _, e in r.errors if e in LIBRARY_GONE_NAMES]
            if gone:
                self._session.mark_broken(gone[0])
        return PollResult(self._fast_families(readings, migs))

    def _not_answering(self, reason: str, message: str) -> PollResult:
        """kvscope_gpu_up 0 for every GPU of the last inventory, with the tier's error: what an
        alert needs while NVML hangs, read from no NVML call at all."""
        up = self._up_family()
        for gpu in self._identities:
            up.add(self._labels(gpu), 0)
        return PollResult(non_empty(up), [CollectorError(reason, message)])

    async def _poll_fast_from_procfs(self, pool: Pool) -> PollResult:
        """NVML has not enumerated the GPUs yet (it hangs or fails from boot): kvscope_gpu_up 0
        for each GPU the driver lists in procfs, so an alert on it fires from boot too. With no
        procfs list either, only the tier's error: the collector says it is down."""
        why = "NVML has not enumerated the GPUs (the static tier hangs or fails)"
        deadline = self._cfg.timeout * 0.8
        try:
            found = await asyncio.wait_for(pool.run(read_gpus, self._ctx.config.paths.procfs),
                                           deadline)
        except TimeoutError:
            return PollResult((), [
                CollectorError("not_initialised", why),
                CollectorError("procfs_timeout", f"the driver's GPU list in procfs was not read "
                               f"within {deadline:.1f}s")])
        errors = [CollectorError("not_initialised", f"{why}; kvscope_gpu_up 0 for the "
                                 f"{len(found.gpus)} GPUs the driver lists in procfs")]
        if found.errors:
            errors.append(CollectorError("procfs_parse", "; ".join(found.errors)))
        up = self._up_family()
        for gpu in found.gpus:
            up.add(self._labels(_procfs_identity(gpu)), 0)
        return PollResult(non_empty(up), errors)

    async def _poll_events(self, pool: Pool, source: NvmlSource) -> list[Metric]:
        """XID events. A wait that fails other than by timing out (the library went away, the
        driver was reloaded) would fail again at once, in a loop: the session is marked broken
        and the tier waits out its back-off, re-initialising NVML when it is due."""
        if self._session.broken is not None and not await pool.run(self._session.recover):
            if not self._ctx.oneshot:
                await asyncio.sleep(min(max(self._session.retry_in(), 0.05), self._cfg.xid_wait))
            raise CollectorError("nvml_event_wait", f"NVML does not answer "
                                 f"({self._session.broken}); retrying with back-off")
        wait_ms = 0 if self._ctx.oneshot else int(self._cfg.xid_wait * 1000)
        try:
            events = await pool.run(source.wait_xid, wait_ms)
        except NvmlError as exc:
            self._session.mark_broken(f"event wait: {exc.name}")
            raise CollectorError("nvml_event_wait", f"NVML event wait failed ({exc}); backing "
                                 "off, then re-initialising NVML") from None
        self._count_xids(events)
        return self._xid_families()

    def _read_fast(self, source: NvmlSource) -> tuple[list[GpuReading], list[MigReading]]:
        """Blocking: the whole GPUs, then the GPU instances of MIG-enabled ones."""
        readings = source.read(FAST_READERS, with_gpm=self._cfg.gpm)
        return readings, source.read_mig(with_gpm=self._cfg.gpm)

    async def _poll_static(self, pool: Pool) -> Sequence[Metric]:
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
        # A daemon thread with a deadline: under a wedged driver the release call blocks too.
        await call_detached(self._source.close, 1.0)

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
        up = self._up_family()
        events = gauge("kvscope_gpu_clock_event_active",
                       "1 while the named reason holds the GPU's clocks down "
                       "(power_cap, hw_slowdown, sw_thermal, ...).")
        for reading in readings:
            labels = self._labels(reading.gpu)
            up.add(labels, 0 if reading.lost or reading.failed else 1)
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

    @staticmethod
    def _up_family() -> Family:
        return gauge("kvscope_gpu_up",
                     "1 when NVML answers for this GPU; 0 when it is lost (e.g. XID 79, fallen "
                     "off the bus). The other GPUs keep exporting.")

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
