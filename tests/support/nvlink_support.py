"""Shared helpers for the NVLink/topology tests: a settable clock and one-shot collection."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from typing import Any

from prometheus_client.core import Metric

from conftest import context_of, start_sim_services
from kvscope.app import build_runtime
from kvscope.config import Config
from kvscope.context import NodeContext
from kvscope.runtime import Runtime
from kvscope.sim.node import SimNode
from kvscope.sim.scenarios import SimOptions, build_scenario


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sim_node(scenario: str = "healthy", clock: Callable[[], float] | None = None) -> SimNode:
    opts = SimOptions(latency_scale=0.0, fault_delay=0.0)
    if clock is not None:
        opts = SimOptions(latency_scale=0.0, fault_delay=0.0, clock=clock)
    return build_scenario(scenario, opts)


def context(node: SimNode, **config: Any) -> NodeContext:
    cfg = Config.model_validate({"node_name": node.hostname, **config})
    return context_of(cfg, oneshot=True, sim_node=node)


def samples(families: Iterable[Metric], name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in families for s in f.samples if s.name == name]


async def collect(node: SimNode, *, services: bool = True,
                  **config: Any) -> tuple[NodeContext, Runtime, list[Metric]]:
    """Start the node's fake services (unless told not to), poll every collector once."""
    ctx = context(node, **config)
    async with AsyncExitStack() as stack:
        if services:
            ctx = await start_sim_services(ctx, stack)
        runtime = build_runtime(ctx)
        try:
            await runtime.poll_all_once()
            families = runtime.families()
        finally:
            await runtime.stop()
    return ctx, runtime, families
