"""RDMA collector: InfiniBand, RoCE and Alibaba eRDMA ports, eadm statistics, device limits,
QP requirement profiles and QP failures in engine logs.

Tiers:
- static: device identity from sysfs (`_info`, netdev, NUMA node, PCI path), device limits and
  port attributes from pyverbs, and the static verdict of each QP profile against the limits;
- fast: port state, physical state, rate and counters from sysfs (PMA `counters/`,
  `hw_counters/`), with traffic normalized to bytes and packets across drivers;
- slow: `eadm stat` per eRDMA device and `rdma -j resource show` (subprocesses, run
  concurrently under their own timeouts), the opt-in create-QP probe and the opt-in log follower.

A hung or failing eadm sets the slow tier down (kvscope_collector_up{tier="slow"} 0,
errors_total with the reason) after one eadm timeout; the slow tier's other sources (resource
counts, probe, log follower) are still served, and the fast tier's port counters keep flowing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from prometheus_client.core import Metric

from kvscope.analysis.qp_profiles import DeviceLimits, effective_request, misfits
from kvscope.collectors.base import Collector, CollectorError, PollResult, Pool, Schedule, Tier
from kvscope.config import QpProfile
from kvscope.context import NodeContext
from kvscope.parsers.eadm import STABLE_NAMES, EadmStats, parse_stat, parse_version
from kvscope.parsers.qp_logs import classify, pod_from_path
from kvscope.parsers.rdma_sysfs import (
    Identity,
    Port,
    parse_identity,
    parse_module_bool,
    parse_port,
)
from kvscope.parsers.rdma_tool import Resources, parse_resources
from kvscope.render.families import Family, counter, gauge, info, non_empty
from kvscope.sources.command import CommandResult, Outcome
from kvscope.sources.eadm import Eadm, EadmOutput
from kvscope.sources.log_follow import LogFollower
from kvscope.sources.rdma_sysfs import SysfsRdma
from kvscope.sources.rdma_tool import RdmaTool
from kvscope.sources.verbs import (
    ProbeResult,
    VerbsReport,
    VerbsSource,
    VerbsUnavailableError,
    load_pyverbs,
)

log = logging.getLogger(__name__)

LIMIT_FIELDS = (
    ("max_qp", "queue pairs"), ("max_qp_wr", "work requests per queue"),
    ("max_sge", "scatter/gather entries per work request (min of send and receive)"),
    ("max_cq", "completion queues"), ("max_cqe", "entries per completion queue"),
    ("max_mr", "memory regions"), ("max_pd", "protection domains"),
    ("max_qp_rd_atom", "outstanding RDMA reads/atomics per QP as target"),
)

PMA = "PMA counters/ (sysfs)"


class RdmaCollector(Collector):
    name = "rdma"

    def __init__(self, ctx: NodeContext, verbs_lib: Any = None) -> None:
        self._ctx = ctx
        self._cfg = ctx.config.collectors.rdma
        self._sysfs = SysfsRdma(ctx.config.paths.sysfs, self._cfg.devices.wants)
        self._eadm = Eadm(self._cfg.eadm_path, self._cfg.eadm_timeout)
        self._tool = RdmaTool(self._cfg.rdma_tool_path, self._cfg.rdma_tool_timeout)
        self._verbs_lib = verbs_lib
        self._verbs: VerbsSource | None = None
        self._verbs_note: str | None = None
        self._follower = LogFollower(self._cfg.log_paths, self._cfg.log_max_bytes_per_poll,
                                     from_start=ctx.oneshot) if self._cfg.log_follow else None
        self._identities: dict[str, Identity] = {}
        self._limits: dict[str, DeviceLimits] = {}
        self._driver_version: str | None = None
        self._parse_errors: Counter[str] = Counter()
        self._last_bad: dict[tuple[str, ...], str] = {}  # (source, *where) -> last bad text
        self._qp_failures: Counter[tuple[str, str, str, str]] = Counter()
        self._noted: set[str] = set()
        if self._eadm.path is None and self._cfg.eadm_path:
            log.debug("eadm not found (%s): eadm source off", self._cfg.eadm_path)

    def schedules(self) -> dict[Tier, Schedule]:
        c, t = self._cfg.cadence, self._cfg.timeout
        slow_timeout = max(t, self._cfg.eadm_timeout, self._cfg.rdma_tool_timeout) + 2.0
        return {Tier.STATIC: Schedule(c.static, t), Tier.FAST: Schedule(c.fast, t),
                Tier.SLOW: Schedule(c.slow, slow_timeout)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        if tier is Tier.STATIC:
            return PollResult(await self._poll_static(pool))
        if tier is Tier.FAST:
            return PollResult(await self._poll_fast(pool))
        return await self._poll_slow(pool)

    def _count_bad_value(self, source: str, where: tuple[str, ...], text: str) -> bool:
        """Count an unparseable value once, not once per poll: a file that keeps the same text
        is one problem, and a counter rising on every 5 s poll would page for nothing. The same
        place with a different bad text counts again. Only the last text per place is kept, so
        memory stays bounded by the number of files. True when it counted."""
        key = (source, *where)
        if self._last_bad.get(key) == text:
            return False
        self._last_bad[key] = text
        self._parse_errors[source] += 1
        return True

    def _note_once(self, key: str, message: str) -> None:
        """Absent hardware or tools: one debug line, not a log line per poll."""
        if key not in self._noted:
            self._noted.add(key)
            log.debug("%s", message)

    # ---- static: identity, limits, profile verdicts ----------------------------------------

    async def _poll_static(self, pool: Pool) -> list[Metric]:
        raw = await pool.run(self._sysfs.read_devices)
        self._identities = {r.device: parse_identity(r) for r in raw}
        if not self._identities:
            self._note_once("no-devices", f"no RDMA devices under {self._sysfs.class_dir}")
        report = await self._query_verbs(pool) if self._cfg.verbs else None
        families = [self._info_family()]
        if any(self._is_erdma(d) for d in self._identities):
            families.append(await self._erdma_compat_family(pool))
        if report is not None:
            self._limits = report.limits
            families.extend(self._limit_families(report))
            families.append(self._fits_family())
        available = gauge("kvscope_rdma_verbs_available",
                          "1 when pyverbs opened the RDMA devices (limits and probe work); 0 "
                          "when pyverbs is missing or finds no device.")
        if self._cfg.verbs:
            available.add({}, 1 if report is not None else 0)
        return non_empty(available, *families)

    async def _erdma_compat_family(self, pool: Pool) -> Family:
        compat = gauge("kvscope_erdma_compat_mode",
                       "1 when Alibaba's erdma driver runs with compat_mode=Y, 0 with N "
                       "(sysfs module/erdma/parameters/compat_mode; absent for drivers without "
                       "it). Engines that exchange QP numbers out of band (over TCP, not RDMA "
                       "CM) need it on.")
        value = parse_module_bool(await pool.run(self._sysfs.read_erdma_compat_mode))
        if value is not None:
            compat.add({}, value)
        return compat

    async def _query_verbs(self, pool: Pool) -> VerbsReport | None:
        try:
            if self._verbs is None:
                lib = self._verbs_lib if self._verbs_lib is not None else load_pyverbs()
                self._verbs = VerbsSource(lib, self._cfg.devices.wants)
            report = await pool.run(self._verbs.query)
        except VerbsUnavailableError as exc:
            self._note_once("verbs", f"no RDMA hardware through pyverbs: {exc}")
            self._limits = {}
            return None
        for error in report.errors:
            if self._count_bad_value("verbs", (error.split(":", 1)[0],), error):
                log.warning("pyverbs: %s", error)
        return report

    def _info_family(self) -> Family:
        fam = info("kvscope_rdma_device_info",
                   "RDMA device attributes from /sys/class/infiniband/<device> (fw_ver, hca_type, "
                   "board_id, node_guid, device/driver, device/net, device/numa_node); value 1.")
        for ident in self._identities.values():
            labels = {"device": ident.device, "driver": ident.driver,
                      "firmware_version": ident.firmware_version, "hca_type": ident.hca_type,
                      "board_id": ident.board_id, "node_guid": ident.node_guid,
                      "netdev": ",".join(ident.netdevs), "pci_bus_id": ident.pci_bus_id,
                      "pci_path": ident.pci_path}
            if ident.numa_node is not None:
                labels["numa_node"] = str(ident.numa_node)
            fam.add({k: v for k, v in labels.items() if v}, 1)  # absent, not "", when unknown
        return fam

    def _limit_families(self, report: VerbsReport) -> list[Family]:
        out = []
        for field, what in LIMIT_FIELDS:
            fam = gauge(f"kvscope_rdma_device_{field}",
                        f"Device limit {field}: {what}. pyverbs Context.query_device() "
                        "(ibv_query_device).")
            for dev, limits in sorted(report.limits.items()):
                fam.add({"device": dev}, getattr(limits, field))
            out.append(fam)
        mtu = gauge("kvscope_rdma_port_active_mtu_bytes",
                    "Active MTU of the port in bytes. pyverbs Context.query_port().")
        for port in report.ports:
            if port.active_mtu_bytes is not None:
                mtu.add({"device": port.device, "port": port.port}, port.active_mtu_bytes)
        out.append(mtu)
        return out

    def _is_erdma(self, device: str) -> bool:
        ident = self._identities.get(device)
        return ident.is_erdma if ident is not None else device.startswith("erdma")

    def _fits_family(self) -> Family:
        fam = gauge("kvscope_rdma_qp_profile_fits",
                    "1 when the QP profile's caps (SGEs, work requests, inline data) fit the "
                    "device's limits from ibv_query_device (and eRDMA's known per-direction "
                    "limits: 6 send SGEs, 1 receive SGE, 96 B inline); 0 = QP creation will fail.")
        for dev, limits in sorted(self._limits.items()):
            for profile in self._cfg.qp_profiles:
                reasons = misfits(profile, limits, erdma=self._is_erdma(dev))
                fam.add({"device": dev, "profile": profile.name}, 0 if reasons else 1)
        return fam

    # ---- fast: ports ------------------------------------------------------------------------

    async def _poll_fast(self, pool: Pool) -> list[Metric]:
        raw = await pool.run(self._sysfs.read_ports)
        ports = [parse_port(r) for r in raw]
        for port in ports:
            for error in port.errors:
                if self._count_bad_value("sysfs", (port.device, port.port, error.what),
                                         error.text):
                    log.debug("%s/%s: cannot parse %s: %r", port.device, port.port,
                              error.what, error.text)
            if port.saturated:
                self._note_once(f"sat:{port.device}:{port.port}:{port.saturated}",
                                f"{port.device}/{port.port}: counters pinned at their maximum "
                                f"(legacy 32-bit PMA table): {', '.join(port.saturated)}")
        return self._port_families(ports) + self._parse_error_family(("sysfs",))

    def _port_families(self, ports: list[Port]) -> list[Metric]:
        state = gauge("kvscope_rdma_port_state",
                      "Logical port state, sysfs ports/<n>/state: 1 DOWN, 2 INIT, 3 ARMED, "
                      "4 ACTIVE, 5 ACTIVE_DEFER.")
        phys = gauge("kvscope_rdma_port_physical_state",
                     "Physical port state, sysfs ports/<n>/phys_state: 1 Sleep, 2 Polling, "
                     "3 Disabled, 4 PortConfigurationTraining, 5 LinkUp, 6 LinkErrorRecovery, "
                     "7 Phy Test.")
        rate = gauge("kvscope_rdma_port_rate_bytes_per_second",
                     "Port rate from sysfs ports/<n>/rate (Gb/s x 125000000). On eRDMA this is the "
                     "vNIC speed, not the instance's bandwidth quota.")
        port_info = info("kvscope_rdma_port_info",
                         "Port attributes from sysfs: link_layer, and width and speed from the "
                         "rate string (\"200 Gb/sec (4X HDR)\"); value 1.")
        tx_b = counter("kvscope_rdma_port_transmit_bytes_total",
                       "Bytes sent: PMA port_xmit_data(_64) x 4 (it counts 4-byte words) on "
                       "IB/RoCE; without PMA, hw_counters bytes: erdma (hw_)tx_bytes_cnt, irdma "
                       "ip4OutOctets+ip6OutOctets, bnxt_re/EFA tx_bytes.")
        rx_b = counter("kvscope_rdma_port_receive_bytes_total",
                       "Bytes received: PMA port_rcv_data(_64) x 4 on IB/RoCE; without PMA, "
                       "hw_counters bytes: erdma (hw_)rx_bytes_cnt, irdma "
                       "ip4InOctets+ip6InOctets, bnxt_re/EFA rx_bytes.")
        tx_p = counter("kvscope_rdma_port_transmit_packets_total",
                       "Packets sent: PMA port_xmit_packets(_64); without PMA, erdma "
                       "(hw_)tx_packets_cnt, irdma ip4OutPkts+ip6OutPkts, bnxt_re/EFA tx_pkts.")
        rx_p = counter("kvscope_rdma_port_receive_packets_total",
                       "Packets received: PMA port_rcv_packets(_64); without PMA, erdma "
                       "(hw_)rx_packets_cnt, irdma ip4InPkts+ip6InPkts, bnxt_re/EFA rx_pkts.")
        pma = counter("kvscope_rdma_port_counter_total",
                      "Every PMA counter in sysfs ports/<n>/counters/, raw (port_xmit_data and "
                      "port_rcv_data in 4-byte words; legacy counters saturate, see "
                      "kvscope_rdma_port_saturated_counters).")
        hw = counter("kvscope_rdma_hw_counter_total",
                     "Every driver counter in sysfs ports/<n>/hw_counters/ (mlx5 Q and congestion "
                     "counters, both eRDMA drivers' counters, irdma, bnxt_re, EFA), raw; "
                     "lifespan and current levels (kvscope_rdma_hw_level) excluded. mlx5 "
                     "Q counters are 32-bit and wrap.")
        hw_level = gauge("kvscope_rdma_hw_level",
                         "Driver hw_counters/ files that hold a current level, not a count: "
                         "bnxt_re active_* (resources in use), watermark_* (high-water marks "
                         "since driver load), db_fifo_register; raw.")
        sat = gauge("kvscope_rdma_port_saturated_counters",
                    "PMA counters of the port pinned at their maximum (2^width-1): the legacy "
                    "32-bit table saturates instead of wrapping, so their rates read 0.")
        for p in ports:
            labels = {"device": p.device, "port": p.port}
            if p.state is not None:
                state.add(labels, p.state.value)
            if p.phys_state is not None:
                phys.add(labels, p.phys_state.value)
            if p.rate is not None:
                rate.add(labels, p.rate.bytes_per_second)
            attrs = {"link_layer": p.link_layer or ""}
            if p.rate is not None:
                attrs.update(width=p.rate.width, speed=p.rate.speed)
            port_info.add({**labels, **{k: v for k, v in attrs.items() if v}}, 1)
            for fam, value in ((tx_b, p.traffic.tx_bytes), (rx_b, p.traffic.rx_bytes),
                               (tx_p, p.traffic.tx_packets), (rx_p, p.traffic.rx_packets)):
                if value is not None:
                    fam.add(labels, value)
            for name, value in sorted(p.counters.items()):
                pma.add({**labels, "counter": name}, value)
            for name, value in sorted(p.counters_ext.items()):
                pma.add({**labels, "counter": name}, value)
            for name, value in sorted(p.hw_counters.items()):
                hw.add({**labels, "counter": name}, value)
            for name, value in sorted(p.hw_gauges.items()):
                hw_level.add({**labels, "counter": name}, value)
            if p.counters:
                sat.add(labels, len(p.saturated))
        return non_empty(port_info, state, phys, rate, tx_b, rx_b, tx_p, rx_p, sat, pma, hw,
                         hw_level)

    def _parse_error_family(self, sources: tuple[str, ...]) -> list[Metric]:
        fam = counter("kvscope_rdma_parse_errors_total",
                      "Values the RDMA collector could not parse, by source (sysfs, eadm, "
                      "rdma_tool, verbs): a new driver or tool format.")
        for source in sources:
            if source in self._parse_errors:
                fam.add({"source": source}, self._parse_errors[source])
        return non_empty(fam)

    # ---- slow: eadm, rdma tool, probe, logs -------------------------------------------------

    async def _poll_slow(self, pool: Pool) -> PollResult:
        """The slow tier's sources run concurrently and fail independently: a hung eadm costs
        its own series and sets the tier down, while the rdma tool's resource counts, the probe
        and the log follower's counts are still served."""
        erdma = sorted(d for d in self._identities if self._is_erdma(d))
        eadm_job = self._eadm_read(erdma)
        tool_job = self._tool.resources() if self._identities else _no_tool()
        blocking = pool.run(self._blocking_slow)
        eadm, tool, (probes, lines) = await asyncio.gather(eadm_job, tool_job, blocking)
        families: list[Metric] = []
        errors: dict[str, CollectorError] = {}  # one error per reason and poll
        if eadm is not None:
            stats, version = self._eadm_records(eadm, errors)
            families += self._eadm_families(stats, version)
        families += self._resource_families(self._tool_records(tool, errors))
        families += self._probe_families(probes)
        self._count_log_lines(lines)
        families += self._log_families()
        families += self._parse_error_family(("eadm", "rdma_tool", "verbs"))
        return PollResult(families, tuple(errors.values()))

    async def _eadm_read(self, devices: list[str]) -> EadmOutput | None:
        if not devices or not self._eadm.available:
            return None
        return await self._eadm.read(devices, want_version=self._driver_version is None)

    def _eadm_records(self, out: EadmOutput, errors: dict[str, CollectorError],
                      ) -> tuple[dict[str, EadmStats], str | None]:
        """Parsed counters of the devices whose eadm call worked; every failure in `errors`."""
        stats: dict[str, EadmStats] = {}
        for dev, result in out.stats.items():
            if not result.ok:
                _add_error(errors, _command_error("eadm", result, self._eadm.timeout))
                continue
            parsed = parse_stat(result.stdout)
            if parsed.error is not None:
                _add_error(errors, CollectorError(
                    "eadm_parse", f"eadm stat -d {dev}: {parsed.error}"))
            stats[dev] = parsed  # kept even when empty: its malformed lines still count
        version = None
        if out.version is not None:
            if out.version.ok:
                version = parse_version(out.version.stdout)
            else:
                _add_error(errors, _command_error("eadm", out.version, self._eadm.timeout))
        return stats, version

    def _tool_records(self, tool: CommandResult | None,
                      errors: dict[str, CollectorError]) -> Resources | None:
        """QP counts from `rdma resource show`. A hung or flooding tool is an error; a tool that
        is absent or refused (no RDMA netlink in this network namespace) is "no data"."""
        if tool is None:
            self._note_once("rdma-tool", "no QP counts: rdma tool not installed")
            return None
        if tool.outcome in (Outcome.TIMEOUT, Outcome.TOO_LARGE):
            _add_error(errors, _command_error("rdma_tool", tool, self._tool.timeout))
            return None
        if not tool.ok:
            self._note_once("rdma-tool", f"no QP counts: {tool.describe(self._tool.timeout)}")
            return None
        return parse_resources(tool.stdout)

    def _blocking_slow(self) -> tuple[list[ProbeResult], list[tuple[str, list[str]]]]:
        probes = self._run_probes() if self._cfg.probe else []
        lines = self._follower.poll() if self._follower is not None else []
        return probes, lines

    def _run_probes(self) -> list[ProbeResult]:
        if self._verbs is None or not self._limits:
            return []
        results = []
        for dev, limits in sorted(self._limits.items()):
            for profile in self._cfg.qp_profiles:
                request: QpProfile = effective_request(profile, limits)
                results.append(self._verbs.probe(dev, request, limits.max_cqe))
        return results

    def _eadm_families(self, all_stats: dict[str, EadmStats],
                       version_now: str | None) -> list[Metric]:
        if version_now is not None:
            self._driver_version = version_now
        families: dict[str, Family] = {}
        other = counter("kvscope_erdma_eadm_counter_total",
                        "eadm stat counters kvscope has no stable name for, passed through by "
                        "their eadm key.")
        for dev, stats in sorted(all_stats.items()):
            for key, text in stats.malformed_lines:
                self._count_bad_value("eadm", (dev, key), text)
            if stats.error:
                self._count_bad_value("eadm", (dev, "output"), stats.error)
            for key, value in stats.counters.items():
                name = STABLE_NAMES.get(key)
                if name is None:
                    other.add({"device": dev, "counter": key}, value)
                    continue
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = counter(name, _eadm_help(key))
                fam.add({"device": dev}, value)
        version = info("kvscope_erdma_driver_info",
                       "erdma kernel driver version from `eadm ver`; value 1.")
        if self._driver_version is not None:
            version.add({"version": self._driver_version}, 1)
        ordered = [families[n] for n in STABLE_NAMES.values() if n in families]
        return non_empty(*ordered, other, version)

    def _resource_families(self, resources: Resources | None) -> list[Metric]:
        fam = gauge("kvscope_rdma_resources",
                    "RDMA resources in use per device, by type (qp, cq, mr, pd, ctx, cm_id, srq), "
                    "from `rdma -j resource show`. Compare type=\"qp\" with "
                    "kvscope_rdma_device_max_qp.")
        if resources is not None:
            if resources.error is not None:
                self._count_bad_value("rdma_tool", (), resources.error)
            for dev, counts in sorted(resources.by_device.items()):
                if dev not in self._identities:
                    continue  # a device of another sysfs root (fixture trees): not this node's
                for kind, value in sorted(counts.items()):
                    fam.add({"device": dev, "type": kind}, value)
        return non_empty(fam)

    def _probe_families(self, probes: list[ProbeResult]) -> list[Metric]:
        ok = gauge("kvscope_rdma_qp_probe_success",
                   "1 when an RC QP with the profile's caps was created (and destroyed) on the "
                   "device; 0 with the reason (errno name, e.g. EINVAL) when creation failed. "
                   "Opt-in (collectors.rdma.probe), slow tier.")
        seconds = gauge("kvscope_rdma_qp_probe_duration_seconds",
                        "Time the create-QP probe took (open, PD, CQ, QP, destroy).")
        for result in probes:
            labels = {"device": result.device, "profile": result.profile}
            ok.add({**labels, "reason": result.reason}, 1 if result.success else 0)
            seconds.add(labels, result.duration)
            if not result.success:
                self._note_once(f"probe:{result.device}:{result.profile}:{result.reason}",
                                f"QP probe {result.profile} on {result.device}: {result.message}")
        return non_empty(ok, seconds)

    def _count_log_lines(self, batches: list[tuple[str, list[str]]]) -> None:
        for path, lines in batches:
            pod = pod_from_path(path)
            for line in lines:
                failure = classify(line)
                if failure is None:
                    continue
                key = (failure.kind, failure.framework, pod.namespace if pod else "",
                       pod.pod if pod else "")
                self._qp_failures[key] += 1

    def _log_families(self) -> list[Metric]:
        if self._follower is None:
            return []
        fam = counter("kvscope_rdma_app_qp_failures_total",
                      "QP create/modify failure lines seen in followed engine logs (Mooncake, "
                      "DLSlime, UCX/NIXL, perftest), by kind, framework and the pod named by the "
                      "log path. Counted since the agent started.")
        for (kind, framework, namespace, pod), n in sorted(self._qp_failures.items()):
            fam.add({"kind": kind, "framework": framework, "namespace": namespace, "pod": pod}, n)
        return non_empty(fam)


async def _no_tool() -> None:
    return None  # no RDMA devices: nothing to count


def _command_error(source: str, result: CommandResult, limit_s: float) -> CollectorError:
    """`eadm_timeout`, `eadm_too_large`, `eadm_failed` (and the same for rdma_tool)."""
    kind = {Outcome.TIMEOUT: "timeout", Outcome.TOO_LARGE: "too_large"}.get(result.outcome,
                                                                             "failed")
    return CollectorError(f"{source}_{kind}", result.describe(limit_s))


def _add_error(errors: dict[str, CollectorError], error: CollectorError) -> None:
    errors.setdefault(error.reason, error)  # one error per reason and poll


def _eadm_help(key: str) -> str:
    if "limit_drop" in key:
        return (f"eadm stat {key}: packets dropped because the instance's eRDMA bandwidth (bps) "
                "or packet-rate (pps) quota was hit. The 25 Gb/s port rate hides this quota.")
    if key == "verbs_create_qp_failed_cnt":
        return ("eadm stat verbs_create_qp_failed_cnt: failed ibv_create_qp calls (caps above the "
                "device limits, e.g. more than 1 receive SGE, or out of QPNs).")
    return f"eadm stat {key} (Alibaba erdma driver counter, since driver load)."

