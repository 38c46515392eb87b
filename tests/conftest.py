"""Shared fixtures: the simulated node with a frozen clock, and runtimes built on it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kvscope import doctor
from kvscope.app import build_runtime
from kvscope.backends import Backends
from kvscope.config import Config, load
from kvscope.context import NodeContext
from kvscope.sim.backends import node_backends, start_services
from kvscope.sim.node import SimNode
from kvscope.sim.nvml import FakeNvml
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


@dataclass(frozen=True)
class SimContext(NodeContext):
    """The agent's context over a simulated node, with the node and its fake NVML at hand for
    the test to steer and count (production code sees only the NodeContext part)."""

    node: SimNode | None = None
    fake_nvml: FakeNvml | None = None

    @property
    def sim(self) -> SimNode:
        assert self.node is not None
        return self.node

    @property
    def nvml(self) -> FakeNvml:
        assert self.fake_nvml is not None
        return self.fake_nvml


def context_for(config: Config, backends: Backends | None = None, *,
                oneshot: bool = False) -> NodeContext:
    """The agent's context for `config` over `backends` (default: the host's, unloaded)."""
    return NodeContext(config, backends or Backends(), oneshot=oneshot)


def sim_context_for(config: Config, node: SimNode, *, oneshot: bool = True) -> SimContext:
    """The context over `node`'s fakes; its services are not started (see start_sim_services)."""
    backends, fake = node_backends(node, config.scenario)
    return SimContext(config, backends, oneshot=oneshot, node=node, fake_nvml=fake)


async def start_sim_services(ctx: SimContext, stack: AsyncExitStack) -> SimContext:
    """Start the node's fake services for the life of `stack`: the returned context carries the
    final config that points the collectors at them (as kvscope.sim.build_backends does)."""
    return dataclasses.replace(ctx, config=await start_services(ctx.sim, ctx.config, stack))


async def doctor_run(ctx: NodeContext, window: float = 0.0) -> tuple[str, int]:
    """`kvscope doctor` on the (simulated) node: doctor settings, then services, then the run."""
    ctx = dataclasses.replace(ctx, config=doctor.doctor_config(ctx.config))
    async with AsyncExitStack() as stack:
        if isinstance(ctx, SimContext):
            ctx = await start_sim_services(ctx, stack)
        return await doctor.run(ctx, window)


def context_of(config: Config, *, oneshot: bool = False, fault_delay: float | None = None,
               latency_scale: float = 1.0, sim_node: SimNode | None = None) -> NodeContext:
    """The context cli.py would build for `config`: over `sim_node`, or the scenario's node
    (services not started), or the host."""
    if sim_node is None and config.scenario is not None:
        delay = fault_delay if fault_delay is not None else (0.0 if oneshot else 30.0)
        sim_node = build_scenario(config.scenario, SimOptions(
            hostname=config.node_name, fault_delay=delay, latency_scale=latency_scale))
    if sim_node is not None:
        return sim_context_for(config, sim_node, oneshot=oneshot)
    return context_for(config, oneshot=oneshot)


async def collect_sim_once(ctx: NodeContext) -> bytes:
    """`kvscope collect`: the simulated node's services (if any) running, every collector
    polled once."""
    from kvscope.app import collect_once

    async with AsyncExitStack() as stack:
        if isinstance(ctx, SimContext):
            ctx = await start_sim_services(ctx, stack)
        return await collect_once(ctx)


def sim_context(scenario: str, clock: Callable[[], float] | None = None,
                fault_delay: float = 0.0, overrides: dict[str, Any] | None = None,
                oneshot: bool = True, **node_changes: Any) -> SimContext:
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
    return sim_context_for(config, node, oneshot=oneshot)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


async def two_poll_families(scenario: str) -> list[Metric]:
    """Every collector on, over the scenario's fake services, polled twice five seconds apart
    (so rates and deltas have a previous sample): the families a scrape would then serve."""
    clock = FrozenClock()
    ctx = sim_context(scenario, clock=clock, overrides={
        f"collectors.{c}.enabled": True for c in ("nvlink", "topology", "rdma", "engines")})
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
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


__all__ = ["NODE", "FrozenClock", "SimContext", "build_runtime", "by_gpu", "collect_sim_once",
           "context_for", "context_of",
           "doctor_run", "parse", "sim_context", "sim_context_for", "start_sim_services"]


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
