"""Shared fixtures: the simulated node with a frozen clock, and runtimes built on it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kvscope.app import build_context, build_runtime, start_sim_services
from kvscope.config import load
from kvscope.context import NodeContext
from kvscope.sim.scenarios import SimOptions, build_scenario

NODE = "golden-node"
# The session's shared simulated node (`simulated_node`) and the --update-golden option.
pytest_plugins = ["node_fixture"]


class FrozenClock:
    """A clock tests move by hand; the sim node's values depend only on it."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


def sim_context(scenario: str, clock: Callable[[], float] | None = None,
                fault_delay: float = 0.0, overrides: dict[str, Any] | None = None,
                oneshot: bool = True, **node_changes: Any) -> NodeContext:
    """A context for `scenario` with modelled latency off and, by default, only the GPU
    collector on (other subsystems have their own tests)."""
    settings = {"node_name": NODE, "scenario": scenario,
                **{f"collectors.{c}.enabled": False
                   for c in ("nvlink", "topology", "rdma", "engines")}}
    settings.update(overrides or {})
    config = load(None, settings)
    opts = SimOptions(hostname=NODE, fault_delay=fault_delay, latency_scale=0.0,
                      clock=clock or FrozenClock())
    node = build_scenario(scenario, opts)
    for key, value in node_changes.items():
        setattr(node, key, value)
    return build_context(config, oneshot=oneshot, sim_node=node)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


async def two_poll_families(scenario: str) -> list[Metric]:
    """Every collector on, over the scenario's fake services, polled twice five seconds apart
    (so rates and deltas have a previous sample): the families a scrape would then serve."""
    clock = FrozenClock()
    ctx = sim_context(scenario, clock=clock, overrides={
        f"collectors.{c}.enabled": True for c in ("nvlink", "topology", "rdma", "engines")})
    async with AsyncExitStack() as stack:
        await start_sim_services(ctx, stack)
        runtime = build_runtime(ctx)
        try:
            await runtime.poll_all_once()
            clock.advance(5)
            await runtime.poll_all_once()
            return list(runtime.families())
        finally:
            await runtime.stop()


def parse(body: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Exposition text -> {sample name: [(labels, value)]}, sample names exactly as written.

    (prometheus_client's parser renames un-suffixed counter samples to `_total`, which would
    hide exactly the dcgm-exporter naming these tests check.)
    """
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"unparseable exposition line: {line!r}"
        name, labels, value = match.groups()
        parsed = {k: bytes(v, "utf-8").decode("unicode_escape")
                  for k, v in _LABEL.findall(labels or "")}
        out.setdefault(name, []).append((parsed, float(value)))
    # The real parser must accept the whole body too.
    list(text_string_to_metric_families(body.decode()))
    return out


def by_gpu(samples: list[tuple[dict[str, str], float]]) -> dict[str, float]:
    return {labels["gpu"]: value for labels, value in samples}


__all__ = ["NODE", "FrozenClock", "build_runtime", "by_gpu", "parse", "sim_context"]


def collector_up(series: Iterable[tuple[Mapping[str, str], float]]) -> dict[str, float]:
    """kvscope_collector_up per collector: 1 only when every one of its tiers is up."""
    out: dict[str, float] = {}
    for labels, value in series:
        name = labels["collector"]
        out[name] = min(out.get(name, 1.0), value)
    return out


TESTS = Path(__file__).resolve().parent
# Markers by directory, so a test's place says what it needs: `-m "not integration and not e2e"`
# runs the unit tests alone.
_MARKER_OF_DIR = {"integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        marker = _MARKER_OF_DIR.get(top)
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))
