"""Golden exposition per collector: each collector's share of a scrape of the simulated node.

The node runs every collector over its fake services (kubelet, Kubernetes API, engines) with a
frozen clock and is polled twice five seconds apart, as `two_poll_families` does, so counters,
rates and deltas have a previous sample. The second round is polled through the runtime's public
`poll_once`, which returns each collector's own snapshot: that is how the families are split by
collector without knowing which collector owns which name.

What depends on the test machine rather than on the simulated node is normalised, so a golden file
changes only when the exporter's output does:
* the values of series that time real work (poll and probe durations, bandwidth over the real
  monotonic clock, the agent's own RSS and CPU) are written as `<volatile>`;
* loopback ports of the fake services (chosen by the kernel) are written as `127.0.0.1:<port>`;
* samples are sorted within their family, since their order follows those ports.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import AsyncExitStack

from prometheus_client.core import Metric

import timeouts
from conftest import FrozenClock, sim_context, start_sim_services
from kvscope.app import build_runtime
from kvscope.collectors.base import Tier
from kvscope.render.exposition import merge, render_text

OPTIONAL_COLLECTORS = ("nvlink", "topology", "rdma", "engines")
# Series whose value is measured on the test machine: kept with their labels, value hidden.
VOLATILE_VALUES = (
    "process_",
    "kvscope_collector_duration_seconds",
    "kvscope_collector_last_success_timestamp_seconds",
    "kvscope_engine_scrape_duration_seconds",
    "kvscope_rdma_qp_probe_duration_seconds",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",  # KiB over real monotonic seconds between polls
)
HEALTH = ("kvscope_collector_up", "kvscope_collector_errors_total")
_PORT = re.compile(r"(127\.0\.0\.1|localhost|\[::1\]):\d+")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


async def collector_families(scenario: str) -> dict[str, list[Metric]]:
    """{collector name: its families, then its health series} after the second poll round."""
    clock = FrozenClock()
    ctx = sim_context(
        scenario,
        clock=clock,
        overrides={
            **{f"collectors.{c}.enabled": True for c in OPTIONAL_COLLECTORS},
            **timeouts.GENEROUS,  # a timed-out tier under load would change the golden text
        },
    )
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        runtime = build_runtime(ctx)
        try:
            await runtime.poll_all_once()
            clock.advance(5)
            by_collector: dict[str, list[Metric]] = {c.name: [] for c in runtime.collectors}
            for tiers in ({Tier.STATIC}, {Tier.FAST, Tier.SLOW, Tier.EVENT}):
                jobs = [(c, t) for c in runtime.collectors for t in c.schedules() if t in tiers]
                snaps = await asyncio.gather(*(runtime.poll_once(c, t) for c, t in jobs))
                for snap in snaps:
                    by_collector[snap.collector].extend(snap.families)
            health = [f for f in runtime.families() if f.name in HEALTH]
        finally:
            await runtime.stop()
    return {name: [*merge(fams), *_health_of(name, health)] for name, fams in by_collector.items()}


def _health_of(collector: str, health: list[Metric]) -> list[Metric]:
    out = []
    for fam in health:
        mine = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        mine.samples = [s for s in fam.samples if s.labels.get("collector") == collector]
        if mine.samples:
            out.append(mine)
    return out


def normalised(families: list[Metric]) -> str:
    """The families' text exposition with machine-dependent parts normalised (module doc)."""
    lines: list[str] = []
    samples: list[str] = []
    for line in render_text(families).decode().splitlines():
        if line.startswith("#"):
            lines.extend(sorted(samples))
            samples = []
            lines.append(line)
            continue
        samples.append(_normalised_sample(line))
    lines.extend(sorted(samples))
    return "\n".join(lines) + "\n"


def _normalised_sample(line: str) -> str:
    line = _PORT.sub(lambda m: f"{m.group(1)}:<port>", line)
    match = _SAMPLE.match(line)
    assert match, f"unparseable exposition line: {line!r}"
    name, labels, _value = match.groups()
    if name.startswith(VOLATILE_VALUES):
        return f"{name}{labels or ''} <volatile>"
    return line
