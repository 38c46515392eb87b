"""NVLink collector: link inventory and state, per-GPU byte counters, DL error counters.

Tiers: static (which links exist, their version, speed and remote end), fast (link state and
the per-GPU byte counters, one aggregate-scope field read per GPU: ~1 ms), slow (DL error
counters per link). Per-link byte counters are opt-in (`per_link_bytes`): 17 ms per GPU on H200
and 18 x 2 series per GPU.

`DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL` is computed as dcgm-exporter 4.x does (DCGM's
ReadAndCacheNvLinkBandwidth): the change of TX+RX KiB summed over all links between two fast
polls, divided by the seconds between them and by 1000, as an integer; 0 on the first poll. It is
a rate between polls; its name, unit and type follow `dcgm.compat` (dcgm-exporter <= 4.8.2 types
it counter, 4.8.3 and later gauge; 4.9 renames it to bytes/s, see dcgm_compat), and its
value depends on the fast cadence. Use rate(kvscope_nvlink_transmit_bytes_total[...]) instead
for anything new.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from prometheus_client.core import Metric

from kvscope.collectors.base import Collector, CollectorError, PollResult, Pool, Schedule, Tier
from kvscope.collectors.dcgm_compat import field as dcgm_field
from kvscope.collectors.labels import gpu_identity_labels, gpu_labels
from kvscope.context import NodeContext
from kvscope.render.families import Family, counter, gauge, info, non_empty
from kvscope.sources.nvml import GpuIdentity, NvmlError, NvmlUnavailable
from kvscope.sources.nvml.links import (
    NVLINK_VERSIONS,
    GpuBytes,
    LinkErrors,
    LinkState,
    NvlinkSource,
)

log = logging.getLogger(__name__)

KIB = 1024


def dcgm_labels(ctx: NodeContext, gpu: GpuIdentity, driver: str, *,
                dcgm: bool = False) -> dict[str, str]:
    """The label set of dcgm-exporter's GPU series (same as the GPU collector's); with `dcgm`
    the keys of the selected dcgm-exporter release (collectors/labels.py)."""
    return gpu_identity_labels(ctx.config, gpu, driver, ctx.shared.pods.pod_of(gpu.uuid),
                               dcgm=dcgm)


class NvlinkCollector(Collector):
    name = "nvlink"

    def __init__(self, ctx: NodeContext,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._ctx = ctx
        self._cfg = ctx.config.collectors.nvlink
        self._monotonic = monotonic
        self._source = NvlinkSource(ctx.backends.nvml)
        self._unavailable: str | None = None
        self._driver = ""
        self._previous: dict[str, tuple[float, float]] = {}  # UUID -> (t, tx+rx KiB)

    def schedules(self) -> dict[Tier, Schedule]:
        c = self._cfg.cadence
        t = self._cfg.timeout
        return {
            Tier.STATIC: Schedule(c.static, t),
            Tier.FAST: Schedule(c.fast, t),
            # Error counters: one field batch per GPU; with data_error_counters ~42 ms per GPU.
            Tier.SLOW: Schedule(c.slow, max(t, min(c.slow / 2, 15.0))),
        }

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        try:
            return PollResult(await self._families_of(tier, pool))
        except NvmlError as exc:
            raise CollectorError(f"nvml_{exc.name.removeprefix('nvml_')}",
                                 f"NVML: {exc}") from None
        except NvmlUnavailable as exc:  # the session is down (driver gone) after the static tier
            raise CollectorError("nvml_unavailable", f"NVML does not answer: {exc}") from None

    async def _families_of(self, tier: Tier, pool: Pool) -> Sequence[Metric]:
        if tier is Tier.STATIC:
            return await self._poll_static(pool)
        source = self._source
        if self._unavailable is not None or not source.devices:
            return []
        if tier is Tier.FAST:
            states = await pool.run(source.states)
            counts = await pool.run(source.bytes, per_link=self._cfg.per_link_bytes)
            return self._fast_families(states, counts, source)
        errors = await pool.run(source.link_errors, data_counters=self._cfg.data_error_counters)
        return self._error_families(errors)

    async def _poll_static(self, pool: Pool) -> Sequence[Metric]:
        try:
            devices = await pool.run(self._source.open)
            self._driver = str(await pool.run(self._driver_version))
        except NvmlUnavailable as exc:
            if self._unavailable is None:
                log.debug("no NVLink data: %s", exc)  # absent hardware is no data, said once
            self._unavailable = str(exc)
            return []
        self._unavailable = None
        link_info = info("kvscope_nvlink_link_info",
                         "NVLinks NVML reports per GPU: NVLink version, what is on the other end "
                         "(gpu, nvswitch) and its PCI id. NVML NvLinkVersion, "
                         "NvLinkRemoteDeviceType, NvLinkRemotePciInfo.")
        speed = gauge("kvscope_nvlink_link_speed_bytes_per_second",
                      "Signalling rate of one NVLink per direction (bytes/s). NVML field 164 "
                      "(NVLINK_GET_SPEED, MB/s).")
        links = gauge("kvscope_nvlink_links", "NVLinks NVML reports on the GPU.")
        per_link = self._cfg.per_link
        for dev in devices:
            labels = gpu_labels(self._ctx.config, dev.identity)
            if dev.links:
                links.add(labels, len(dev.links))
            seen: set[tuple[str, str]] = set()
            for link in dev.links:
                version = NVLINK_VERSIONS.get(link.version, str(link.version)) \
                    if link.version is not None else ""
                if per_link:
                    link_labels = {**labels, "link": str(link.link)}
                    link_info.add({**link_labels, "version": version,
                                   "remote_type": link.remote_type or "",
                                   "remote_pci_bus_id": link.remote_pci_bus_id or ""}, 1)
                    if link.speed_bytes is not None:
                        speed.add(link_labels, link.speed_bytes)
                elif (version, link.remote_type or "") not in seen:
                    # Totals mode: one info series per kind of link the GPU has.
                    seen.add((version, link.remote_type or ""))
                    link_info.add({**labels, "version": version,
                                   "remote_type": link.remote_type or ""}, 1)
            known = [link.speed_bytes for link in dev.links if link.speed_bytes is not None]
            if known and not per_link:
                speed.add(labels, min(known))  # the slowest link bounds a striped transfer
        return non_empty(link_info, speed, links)

    def _driver_version(self) -> str:
        value = self._source.lib.nvmlSystemGetDriverVersion()
        return value.decode() if isinstance(value, bytes) else str(value)

    def _fast_families(self, states: Sequence[LinkState], counts: Sequence[GpuBytes],
                       source: NvlinkSource) -> list[Metric]:
        up = gauge("kvscope_nvlink_link_up",
                   "1 when the NVLink is active, 0 when it is down. NVML NvLinkState "
                   "(collectors.nvlink.per_link).")
        active = gauge("kvscope_nvlink_links_active",
                       "NVLinks of the GPU that are active (NVML NvLinkState); fewer than "
                       "kvscope_nvlink_links means a link is down.")
        for state in states:
            labels = gpu_labels(self._ctx.config, state.gpu)
            if state.states:
                active.add(labels, sum(1 for on in state.states.values() if on))
            if self._cfg.per_link:
                for link, on in sorted(state.states.items()):
                    up.add({**labels, "link": str(link)}, 1 if on else 0)
        tx = counter("kvscope_nvlink_transmit_bytes_total",
                     "Data bytes the GPU sent over all its NVLinks. NVML field 138 "
                     "(THROUGHPUT_DATA_TX, KiB) read with scopeId 0xFFFFFFFF (all links).")
        rx = counter("kvscope_nvlink_receive_bytes_total",
                     "Data bytes the GPU received over all its NVLinks. NVML field 139 "
                     "(THROUGHPUT_DATA_RX, KiB) read with scopeId 0xFFFFFFFF (all links).")
        compat = self._ctx.config.dcgm.compat
        entry = dcgm_field("nvlink_bandwidth")
        naming = entry.naming(compat)
        bandwidth = Family(naming.name, entry.help_for(compat), naming.kind)
        link_tx = counter("kvscope_nvlink_link_transmit_bytes_total",
                          "Data bytes sent over one NVLink. NVML field 138 with the link as "
                          "scope (collectors.nvlink.per_link_bytes).")
        link_rx = counter("kvscope_nvlink_link_receive_bytes_total",
                          "Data bytes received over one NVLink. NVML field 139 with the link as "
                          "scope (collectors.nvlink.per_link_bytes).")
        now = self._monotonic()
        for reading in counts:
            gpu = reading.gpu
            dcgm = dcgm_labels(self._ctx, gpu, self._driver)
            if reading.tx_bytes is not None:
                tx.add(dcgm, reading.tx_bytes)
            if reading.rx_bytes is not None:
                rx.add(dcgm, reading.rx_bytes)
            if reading.tx_bytes is not None and reading.rx_bytes is not None:
                kib_per_s = self._bandwidth(gpu.uuid, now,
                                            (reading.tx_bytes + reading.rx_bytes) / KIB)
                bandwidth.add(dcgm_labels(self._ctx, gpu, self._driver, dcgm=True),
                              entry.convert(compat, kib_per_s))
            labels = gpu_labels(self._ctx.config, gpu)
            for link, (ltx, lrx) in sorted(reading.per_link.items()):
                if ltx is not None:
                    link_tx.add({**labels, "link": str(link)}, ltx)
                if lrx is not None:
                    link_rx.add({**labels, "link": str(link)}, lrx)
        errors = counter("kvscope_nvlink_nvml_errors_total",
                         "NVML NVLink reads that failed with an error other than NOT_SUPPORTED, "
                         "by GPU, read and error.")
        for (index, what, error), n in sorted(source.errors.items()):
            errors.add({"gpu": str(index), "read": what, "error": error}, n)
        return non_empty(up, active, tx, rx, bandwidth, link_tx, link_rx, errors)

    def _bandwidth(self, uuid: str, now: float, kib: float) -> float:
        """KiB/s of TX+RX since the previous poll; the compat table turns it into MB/s or B/s."""
        previous = self._previous.get(uuid)
        self._previous[uuid] = (now, kib)
        if previous is None or now <= previous[0] or kib < previous[1]:
            return 0.0  # first sample, or the counters reset (driver reload): DCGM says 0 too
        return (kib - previous[1]) / (now - previous[0])

    def _error_families(self, readings: Sequence[LinkErrors]) -> list[Metric]:
        errors = counter("kvscope_nvlink_errors_total",
                         "NVLink data-link errors, summed over the GPU's links (per link with "
                         "collectors.nvlink.per_link): replay, recovery, crc from NVML fields "
                         "161/162/163 (per-link scope); crc_data and ecc_data from "
                         "nvmlDeviceGetNvLinkErrorCounter when "
                         "collectors.nvlink.data_error_counters is on.")
        for reading in readings:
            labels = gpu_labels(self._ctx.config, reading.gpu)
            if self._cfg.per_link:
                for (link, kind), value in sorted(reading.counts.items()):
                    errors.add({**labels, "link": str(link), "error": kind}, value)
                continue
            totals: dict[str, int] = {}
            for (_, kind), value in reading.counts.items():
                totals[kind] = totals.get(kind, 0) + value
            for kind, value in sorted(totals.items()):
                errors.add({**labels, "error": kind}, value)
        return non_empty(errors)

