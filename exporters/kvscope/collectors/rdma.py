"""RDMA collector: InfiniBand, RoCE and Alibaba eRDMA ports, eadm statistics, device limits,
QP requirement profiles and QP failures in engine logs.

Tiers:
- static: device identity from sysfs (`_info`, netdev, NUMA node, PCI path), device limits and
  port attributes from pyverbs, and the static verdict of each QP profile against the limits;
- fast: port state, physical state, rate and counters from sysfs (PMA `counters/`,
  `hw_counters/`), with traffic normalized to bytes and packets across drivers;
- slow: `eadm stat` per eRDMA device and `rdma -j resource show` (subprocesses, run
  concurrently under their own timeouts), the opt-in create-QP probe and the opt-in log follower.

Failures stay as small as their cause:
- a hung or failing eadm sets the slow tier down (kvscope_collector_up{tier="slow"} 0,
  errors_total with the reason) after one eadm timeout; the slow tier's other sources (resource
  counts, probe, log follower) are still served, and the fast tier's port counters keep flowing;
- each device's sysfs files are read on a thread of its own under `sysfs_timeout`: a hung device
  costs its own series (`sysfs_timeout`), the other devices' counters still update;
- an unparseable value (a new format, a number wider than 64 bits) is one parse error, counted
  once; the rest of the file, the port and the device are kept;
- a counter file that vanishes between listing and reading keeps its previous value for that
  poll and is counted (`vanished`), so its series does not flap.

Family names and HELP texts are tables in collectors/rdma_schema.py; this module fills them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client.core import Metric

from kvscope.analysis.qp_profiles import DeviceLimits, effective_request, misfits
from kvscope.collectors import rdma_schema as schema
from kvscope.collectors.base import Collector, CollectorError, PollResult, Pool, Schedule, Tier
from kvscope.config import QpProfile
from kvscope.context import NodeContext
from kvscope.parsers.eadm import EadmStats, parse_stat, parse_version
from kvscope.parsers.qp_logs import classify, pod_from_path
from kvscope.parsers.rdma_sysfs import (
    Identity,
    Port,
    RawPort,
    carry_vanished,
    parse_identity,
    parse_module_bool,
    parse_port,
)
from kvscope.parsers.rdma_tool import Resources, parse_resources
from kvscope.render.families import Family, non_empty
from kvscope.sources.command import CommandResult, Outcome
from kvscope.sources.eadm import Eadm, EadmOutput
from kvscope.sources.log_follow import LogFollower
from kvscope.sources.rdma_sysfs import DeviceHung, DeviceThreads, SysfsRdma
from kvscope.sources.rdma_tool import RdmaTool
from kvscope.sources.verbs import (
    ProbeResult,
    VerbsReport,
    VerbsSource,
    VerbsUnavailableError,
    load_pyverbs,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Errors = dict[str, CollectorError]  # one error per reason and poll


class RdmaCollector(Collector):
    name = "rdma"

    def __init__(self, ctx: NodeContext, verbs_lib: Any = None) -> None:
        self._ctx = ctx
        self._cfg = ctx.config.collectors.rdma
        self._sysfs = SysfsRdma(ctx.config.paths.sysfs, self._cfg.devices.wants)
        self._threads = {tier: DeviceThreads(f"rdma-{tier}") for tier in (Tier.STATIC, Tier.FAST)}
        self._eadm = Eadm(self._cfg.eadm_path, self._cfg.eadm_timeout)
        self._tool = RdmaTool(self._cfg.rdma_tool_path, self._cfg.rdma_tool_timeout)
        self._verbs_lib = verbs_lib
        self._verbs: VerbsSource | None = None
        self._follower = (
            LogFollower(
                self._cfg.log_paths, self._cfg.log_max_bytes_per_poll, from_start=ctx.oneshot
            )
            if self._cfg.log_follow
            else None
        )
        self._identities: dict[str, Identity] = {}
        self._limits: dict[str, DeviceLimits] = {}
        self._driver_version: str | None = None
        self._last_read: dict[tuple[str, str], RawPort] = {}  # (device, port) -> as read
        self._parse_errors: Counter[str] = Counter()
        self._read_errors: Counter[tuple[str, str]] = Counter()  # (device, reason)
        self._last_bad: dict[tuple[str, ...], str] = {}  # (source, *where) -> last bad text
        self._qp_failures: Counter[tuple[str, str, str, str]] = Counter()
        self._noted: set[str] = set()
        if self._eadm.path is None and self._cfg.eadm_path:
            log.debug("eadm not found (%s): eadm source off", self._cfg.eadm_path)

    def schedules(self) -> dict[Tier, Schedule]:
        c, t = self._cfg.cadence, self._cfg.timeout
        slow_timeout = max(t, self._cfg.eadm_timeout, self._cfg.rdma_tool_timeout) + 2.0
        return {
            Tier.STATIC: Schedule(c.static, t),
            Tier.FAST: Schedule(c.fast, t),
            Tier.SLOW: Schedule(c.slow, slow_timeout),
        }

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        if tier is Tier.STATIC:
            return await self._poll_static(pool)
        if tier is Tier.FAST:
            return await self._poll_fast(pool)
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

    # ---- per-device sysfs reads --------------------------------------------------------------

    async def _read_each(
        self,
        pool: Pool,
        tier: Tier,
        read: Callable[[str], T],
    ) -> tuple[list[str], dict[str, T], Errors]:
        """Every wanted device read by `read` on its own thread: (names, what was read, errors).
        A device whose read did not return in time is left out and reported."""
        names = await pool.run(self._sysfs.device_names)
        threads, limit = self._threads[tier], self._cfg.sysfs_timeout
        results = await asyncio.gather(*(threads.run(n, read, limit) for n in names))
        read_now: dict[str, T] = {}
        hung: list[str] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, DeviceHung):
                hung.append(name)
                self._read_errors[(name, "timeout")] += 1
            else:
                read_now[name] = result
        errors: Errors = {}
        if hung:
            _add_error(
                errors,
                CollectorError(
                    "sysfs_timeout",
                    f"{', '.join(hung)}: sysfs reads under {self._sysfs.class_dir} "
                    f"did not return in {limit:g}s; other devices served",
                ),
            )
        return names, read_now, errors

    # ---- static: identity, limits, profile verdicts ----------------------------------------

    async def _poll_static(self, pool: Pool) -> PollResult:
        names, raw, errors = await self._read_each(pool, Tier.STATIC, self._sysfs.read_device)
        known = self._identities  # a hung device keeps the identity it had: it has not moved
        self._identities = {
            n: parse_identity(raw[n]) if n in raw else known[n]
            for n in names
            if n in raw or n in known
        }
        if not names:
            self._note_once("no-devices", f"no RDMA devices under {self._sysfs.class_dir}")
        report = await self._query_verbs(pool) if self._cfg.verbs else None
        families = [self._info_family()]
        if any(self._is_erdma(d) for d in self._identities):
            families.append(await self._erdma_compat_family(pool))
        if report is not None:
            self._limits = report.limits
            families.extend(self._limit_families(report))
            families.append(self._fits_family())
        available = schema.VERBS_AVAILABLE.new()
        if self._cfg.verbs:
            available.add({}, 1 if report is not None else 0)
        return PollResult(non_empty(available, *families), tuple(errors.values()))

    async def _erdma_compat_family(self, pool: Pool) -> Family:
        compat = schema.ERDMA_COMPAT_MODE.new()
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
        fam = schema.DEVICE_INFO.new()
        for ident in self._identities.values():
            labels = {
                "device": ident.device,
                "driver": ident.driver,
                "firmware_version": ident.firmware_version,
                "hca_type": ident.hca_type,
                "board_id": ident.board_id,
                "node_guid": ident.node_guid,
                "netdev": ",".join(ident.netdevs),
                "pci_bus_id": ident.pci_bus_id,
                "pci_path": ident.pci_path,
            }
            if ident.numa_node is not None:
                labels["numa_node"] = str(ident.numa_node)
            fam.add({k: v for k, v in labels.items() if v}, 1)  # absent, not "", when unknown
        return fam

    def _limit_families(self, report: VerbsReport) -> list[Family]:
        out = []
        for field, spec in schema.LIMITS:
            fam = spec.new()
            for dev, limits in sorted(report.limits.items()):
                fam.add({"device": dev}, getattr(limits, field))
            out.append(fam)
        mtu = schema.ACTIVE_MTU.new()
        for port in report.ports:
            if port.active_mtu_bytes is not None:
                mtu.add({"device": port.device, "port": port.port}, port.active_mtu_bytes)
        out.append(mtu)
        return out

    def _is_erdma(self, device: str) -> bool:
        ident = self._identities.get(device)
        return ident.is_erdma if ident is not None else device.startswith("erdma")

    def _fits_family(self) -> Family:
        fam = schema.PROFILE_FITS.new()
        for dev, limits in sorted(self._limits.items()):
            for profile in self._cfg.qp_profiles:
                reasons = misfits(profile, limits, erdma=self._is_erdma(dev))
                fam.add({"device": dev, "profile": profile.name}, 0 if reasons else 1)
        return fam

    # ---- fast: ports ------------------------------------------------------------------------

    async def _poll_fast(self, pool: Pool) -> PollResult:
        _, read, errors = await self._read_each(pool, Tier.FAST, self._sysfs.read_device_ports)
        ports = [self._parse_port(raw) for dev in sorted(read) for raw in read[dev]]
        # What was read now replaces what was read before; a hung device keeps its entries.
        self._last_read = {
            **{k: v for k, v in self._last_read.items() if k[0] not in read},
            **{(r.device, r.port): r for raws in read.values() for r in raws},
        }
        families = (
            self._port_families(ports)
            + self._parse_error_family(("sysfs",))
            + self._read_error_family()
        )
        return PollResult(families, tuple(errors.values()))

    def _parse_port(self, raw: RawPort) -> Port:
        """One port, with the vanished files' previous text carried over and counted."""
        if raw.vanished:
            self._read_errors[(raw.device, "vanished")] += len(raw.vanished)
            log.debug(
                "%s/%s: gone while being read: %s", raw.device, raw.port, ", ".join(raw.vanished)
            )
        port = parse_port(carry_vanished(raw, self._last_read.get((raw.device, raw.port))))
        for error in port.errors:
            if self._count_bad_value("sysfs", (port.device, port.port, error.what), error.text):
                log.debug(
                    "%s/%s: cannot parse %s: %r", port.device, port.port, error.what, error.text
                )
        if port.saturated:
            self._note_once(
                f"sat:{port.device}:{port.port}:{port.saturated}",
                f"{port.device}/{port.port}: counters pinned at their maximum "
                f"(legacy 32-bit PMA table): {', '.join(port.saturated)}",
            )
        return port

    def _port_families(self, ports: list[Port]) -> list[Metric]:
        port_info = schema.PORT_INFO.new()
        values = [(spec.new(), value_of) for spec, value_of in schema.PORT_VALUES]
        files = [(spec.new(), values_of) for spec, values_of in schema.PORT_FILES]
        for p in ports:
            labels = {"device": p.device, "port": p.port}
            port_info.add({**labels, **_port_attributes(p)}, 1)
            for fam, value_of in values:
                value = value_of(p)
                if value is not None:
                    fam.add(labels, value)
            for fam, values_of in files:
                for name, count in values_of(p).items():
                    fam.add({**labels, "counter": name}, count)
        return non_empty(port_info, *(f for f, _ in values), *(f for f, _ in files))

    def _parse_error_family(self, sources: tuple[str, ...]) -> list[Metric]:
        fam = schema.PARSE_ERRORS.new()
        for source in sources:
            if source in self._parse_errors:
                fam.add({"source": source}, self._parse_errors[source])
        return non_empty(fam)

    def _read_error_family(self) -> list[Metric]:
        fam = schema.SYSFS_READ_ERRORS.new()
        for (device, reason), n in sorted(self._read_errors.items()):
            fam.add({"device": device, "reason": reason}, n)
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
        errors: Errors = {}
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

    def _eadm_records(
        self,
        out: EadmOutput,
        errors: Errors,
    ) -> tuple[dict[str, EadmStats], str | None]:
        """Parsed counters of the devices whose eadm call worked; every failure in `errors`."""
        stats: dict[str, EadmStats] = {}
        for dev, result in out.stats.items():
            if not result.ok:
                _add_error(errors, _command_error("eadm", result, self._eadm.timeout))
                continue
            parsed = parse_stat(result.stdout)
            if parsed.error is not None:
                _add_error(
                    errors, CollectorError("eadm_parse", f"eadm stat -d {dev}: {parsed.error}")
                )
            stats[dev] = parsed  # kept even when empty: its malformed lines still count
        version = None
        if out.version is not None:
            if out.version.ok:
                version = parse_version(out.version.stdout)
            else:
                _add_error(errors, _command_error("eadm", out.version, self._eadm.timeout))
        return stats, version

    def _tool_records(self, tool: CommandResult | None, errors: Errors) -> Resources | None:
        """QP counts from `rdma resource show`. A hung or flooding tool is an error; a tool that
        is absent or refused (no RDMA netlink in this network namespace) is "no data"."""
        if tool is None:
            self._note_once("rdma-tool", "no QP counts: rdma tool not installed or no devices")
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

    def _eadm_families(
        self, all_stats: dict[str, EadmStats], version_now: str | None
    ) -> list[Metric]:
        if version_now is not None:
            self._driver_version = version_now
        families: dict[str, Family] = {}
        other = schema.EADM_OTHER.new()
        for dev, stats in sorted(all_stats.items()):
            for key, text in stats.malformed_lines:
                self._count_bad_value("eadm", (dev, key), text)
            if stats.error:
                self._count_bad_value("eadm", (dev, "output"), stats.error)
            for key, value in stats.counters.items():
                if key not in schema.EADM_NAMES:
                    other.add({"device": dev, "counter": key}, value)
                    continue
                if key not in families:
                    families[key] = schema.eadm_spec(key).new()
                families[key].add({"device": dev}, value)
        version = schema.DRIVER_INFO.new()
        if self._driver_version is not None:
            version.add({"version": self._driver_version}, 1)
        ordered = [families[key] for key in schema.EADM_NAMES if key in families]
        return non_empty(*ordered, other, version)

    def _resource_families(self, resources: Resources | None) -> list[Metric]:
        fam = schema.RESOURCES.new()
        if resources is not None:
            if resources.error is not None:
                self._count_bad_value("rdma_tool", (), resources.error)
            for dev, kind, text in resources.malformed:
                self._count_bad_value("rdma_tool", (dev, kind), text)
            for dev, counts in sorted(resources.by_device.items()):
                if dev not in self._identities:
                    continue  # a device of another sysfs root (fixture trees): not this node's
                for kind, value in sorted(counts.items()):
                    fam.add({"device": dev, "type": kind}, value)
        return non_empty(fam)

    def _probe_families(self, probes: list[ProbeResult]) -> list[Metric]:
        ok, seconds = schema.PROBE_SUCCESS.new(), schema.PROBE_DURATION.new()
        for result in probes:
            labels = {"device": result.device, "profile": result.profile}
            ok.add({**labels, "reason": result.reason}, 1 if result.success else 0)
            seconds.add(labels, result.duration)
            if not result.success:
                self._note_once(
                    f"probe:{result.device}:{result.profile}:{result.reason}",
                    f"QP probe {result.profile} on {result.device}: {result.message}",
                )
        return non_empty(ok, seconds)

    def _count_log_lines(self, batches: list[tuple[str, list[str]]]) -> None:
        for path, lines in batches:
            pod = pod_from_path(path)
            for line in lines:
                failure = classify(line)
                if failure is None:
                    continue
                key = (
                    failure.kind,
                    failure.framework,
                    pod.namespace if pod else "",
                    pod.pod if pod else "",
                )
                self._qp_failures[key] += 1

    def _log_families(self) -> list[Metric]:
        if self._follower is None:
            return []
        fam = schema.APP_QP_FAILURES.new()
        for (kind, framework, namespace, pod), n in sorted(self._qp_failures.items()):
            fam.add({"kind": kind, "framework": framework, "namespace": namespace, "pod": pod}, n)
        return non_empty(fam)


async def _no_tool() -> None:
    return None  # no RDMA devices: nothing to count


def _port_attributes(port: Port) -> dict[str, str]:
    """The port's `_info` labels; absent, not "", when unknown."""
    attrs = {"link_layer": port.link_layer or ""}
    if port.rate is not None:
        attrs.update(width=port.rate.width, speed=port.rate.speed)
    return {k: v for k, v in attrs.items() if v}


def _command_error(source: str, result: CommandResult, limit_s: float) -> CollectorError:
    """`eadm_timeout`, `eadm_too_large`, `eadm_failed` (and the same for rdma_tool)."""
    kind = {Outcome.TIMEOUT: "timeout", Outcome.TOO_LARGE: "too_large"}.get(
        result.outcome, "failed"
    )
    return CollectorError(f"{source}_{kind}", result.describe(limit_s))


def _add_error(errors: Errors, error: CollectorError) -> None:
    errors.setdefault(error.reason, error)  # one error per reason and poll
