"""`kvscope doctor`: a report for one node, for a person at a terminal.

Every section reads a `Snapshot`: the node's metric samples by name, plus what a metric label
cannot carry. The snapshot comes from one of two places:

- this node: every enabled collector is polled once (the same code as `collect`), and the
  snapshot also holds the collectors' health and the topology collector's PD analysis;
- a running agent (`--url`): its /metrics is fetched and parsed with the engine parser, so an
  operator can check any node without that node's privileges. Sections that need more than the
  metrics (the PD container analysis) fall back to what the metrics say.

A critical finding makes the command exit 1, so it can gate a rollout; an agent that cannot be
read is exit 2 with one line on stderr (as a configuration error).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvscope.collectors.shared import PdAnalysis
from kvscope.config import Config, set_dotted
from kvscope.context import NodeContext

if TYPE_CHECKING:
    from kvscope.runtime import Runtime

Labels = Mapping[str, str]


class Severity(enum.IntEnum):
    INFO = 0
    WARNING = 1
    CRITICAL = 2


@dataclass(frozen=True)
class Finding:
    severity: Severity
    title: str  # one line: what is wrong and where
    fix: str = ""  # what to do, in plain words


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Snapshot:
    """What the sections read: samples by name, the config, and local-only extras."""

    config: Config
    source: str  # "this node" or the URL that was read
    series: dict[str, list[tuple[Labels, float]]] = field(default_factory=dict)
    # collector -> {"up": bool, "errors": [str]}; from the runtime, or from the health metrics
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    pd: PdAnalysis | None = None  # None when read from a URL or the topology collector is off
    # With --window: the snapshot taken `window` seconds before this one, for rates.
    previous: Snapshot | None = None
    window: float = 0.0

    def samples(self, name: str) -> list[tuple[Labels, float]]:
        return self.series.get(name, [])

    @property
    def remote(self) -> bool:
        return self.source != LOCAL

    @classmethod
    def from_samples(cls, config: Config, source: str,
                     rows: Iterable[tuple[str, Labels, float]]) -> Snapshot:
        series: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
        for name, labels, value in rows:
            series[name].append((labels, value))
        snap = cls(config, source, dict(series))
        snap.health = _health_from_metrics(snap)
        return snap


LOCAL = "this node"

SectionBuilder = Callable[[Snapshot], Awaitable[Section]]

# Sections in print order; subsystem modules (doctor/topology.py, doctor/rdma.py) append theirs.
SECTIONS: list[SectionBuilder] = []


def samples(snap: Snapshot, name: str) -> Iterator[tuple[Labels, float]]:
    """(labels, value) of every sample called `name` in the snapshot."""
    yield from snap.samples(name)


def _health_from_metrics(snap: Snapshot) -> dict[str, dict[str, Any]]:
    """Collector health as the agent exports it (used when reading a URL)."""
    errors: dict[str, list[str]] = defaultdict(list)
    for labels, value in snap.samples("kvscope_collector_errors_total"):
        if value > 0:
            errors[labels.get("collector", "")].append(
                f"{labels.get('reason', '?')} x{value:.0f} since start")
    up: dict[str, bool] = {}
    for labels, value in snap.samples("kvscope_collector_up"):  # one series per tier
        name = labels.get("collector", "")
        up[name] = up.get(name, True) and value == 1.0
    return {name: {"up": is_up, "errors": errors.get(name, [])} for name, is_up in up.items()}


def render(sections: list[Section], node_name: str, source: str = LOCAL) -> str:
    marks = {Severity.INFO: "info", Severity.WARNING: "WARN", Severity.CRITICAL: "CRIT"}
    where = f"node {node_name}" + ("" if source == LOCAL else f" (agent at {source})")
    out = [f"kvscope doctor: {where}", ""]
    for section in sections:
        out.append(f"== {section.title} ==")
        out.extend(f"  {line}" for line in section.lines)
        for finding in section.findings:
            out.append(f"  [{marks[finding.severity]}] {finding.title}")
            if finding.fix:
                out.append(f"         fix: {finding.fix}")
        out.append("")
    findings = [f for s in sections for f in s.findings]
    counts = {sev: sum(1 for f in findings if f.severity is sev) for sev in Severity}
    out.append(f"summary: {counts[Severity.CRITICAL]} critical, {counts[Severity.WARNING]} "
               f"warning, {counts[Severity.INFO]} info")
    return "\n".join(out) + "\n"


def local_snapshot(ctx: NodeContext, runtime: Runtime) -> Snapshot:
    """The snapshot of a runtime that has just polled (this node, or a simulated one); the PD
    analysis comes from the shared pod attribution the topology collector writes."""
    rows = ((s.name, s.labels, s.value) for family in runtime.families()
            for s in family.samples)
    snap = Snapshot.from_samples(ctx.config, LOCAL, rows)
    snap.health = {name: {"up": bool(h["up"]), "errors": list(h["errors"])}  # type: ignore[call-overload]
                   for name, h in runtime.collector_health().items()}
    if ctx.config.collectors.topology.enabled:
        snap.pd = ctx.shared.pods.analysis() or PdAnalysis()
    return snap


def with_previous(snap: Snapshot, previous: Snapshot, window: float) -> Snapshot:
    snap.previous = previous
    snap.window = window
    return snap


async def report(snap: Snapshot) -> tuple[str, int]:
    """The report and the exit code (1 when any finding is critical)."""
    from kvscope.doctor import sections as _registers  # noqa: F401 - registers the sections

    sections = [await build(snap) for build in SECTIONS]
    critical = any(f.severity is Severity.CRITICAL for s in sections for f in s.findings)
    node = snap.config.node_name if not snap.remote else _node_from(snap)
    return render(sections, node, snap.source), 1 if critical else 0


def _node_from(snap: Snapshot) -> str:
    """The node a remote agent runs on: the dcgm-exporter `Hostname` label of its GPU series
    (`hostname` from dcgm-exporter 4.8.3, see dcgm.compat)."""
    for name in ("kvscope_gpu_up", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_UTIL_RATIO"):
        for labels, _ in snap.samples(name):
            for key in ("Hostname", "hostname"):
                if labels.get(key):
                    return labels[key]
    return "(unknown)"


def doctor_config(config: Config) -> Config:
    """The configuration the doctor polls with: a person reading the report wants every link,
    whatever the agent exports by default."""
    data = config.model_dump()
    set_dotted(data, "collectors.nvlink.per_link", True)
    return Config.model_validate(data)


async def run(ctx: NodeContext, window: float = 0.0) -> tuple[str, int]:
    """Poll this node once (twice, `window` seconds apart, for rates) and report on it."""
    from kvscope.app import build_runtime

    ctx = dataclasses.replace(ctx, config=doctor_config(ctx.config))
    runtime = build_runtime(ctx)
    try:
        await runtime.poll_all_once()
        snap = local_snapshot(ctx, runtime)
        if window > 0:
            await asyncio.sleep(window)
            await runtime.poll_all_once()
            snap = with_previous(local_snapshot(ctx, runtime), snap, window)
    finally:
        await runtime.stop()
    return await report(snap)
