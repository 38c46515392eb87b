"""`kvscope doctor`: a report for one node, for a person at a terminal.

The doctor polls every enabled collector once (the same code as `collect`), then each section
reads what it needs from the runtime and the node context, prints a body and returns findings.
A critical finding makes the command exit non-zero, so it can gate a rollout.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from kvscope.config import Config, set_dotted
from kvscope.context import NodeContext
from kvscope.runtime import Runtime


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


SectionBuilder = Callable[[NodeContext, Runtime], Awaitable[Section]]

# Sections in print order; subsystem modules (doctor/topology.py, doctor/rdma.py) append theirs.
SECTIONS: list[SectionBuilder] = []


def samples(runtime: Runtime, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` in the runtime's current families."""
    for family in runtime.families():
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels, sample.value


def render(sections: list[Section], node_name: str) -> str:
    marks = {Severity.INFO: "info", Severity.WARNING: "WARN", Severity.CRITICAL: "CRIT"}
    out = [f"kvscope doctor: node {node_name}", ""]
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


async def run(ctx: NodeContext) -> tuple[str, int]:
    """The report and the exit code (1 when any finding is critical)."""
    from kvscope import doctor_sections  # noqa: F401 - registers the sections
    from kvscope.app import build_runtime, start_sim_services

    # A person reading the report wants every link, whatever the agent exports by default.
    data = ctx.config.model_dump()
    set_dotted(data, "collectors.nvlink.per_link", True)
    ctx.config = Config.model_validate(data)
    async with AsyncExitStack() as stack:
        await start_sim_services(ctx, stack)
        runtime = build_runtime(ctx)
        try:
            await runtime.poll_all_once()
            sections = [await build(ctx, runtime) for build in SECTIONS]
        finally:
            await runtime.stop()
    critical = any(f.severity is Severity.CRITICAL for s in sections for f in s.findings)
    return render(sections, ctx.config.node_name), 1 if critical else 0
