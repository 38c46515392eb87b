"""Collector registry: one module per collector, each registered here by name.

The names are a contract: they are the `--collector.<name>` flags, the config keys under
`collectors:` and the `collector` label of kvscope_collector_up.
"""

from __future__ import annotations

from collections.abc import Callable

from kvscope.context import NodeContext
from kvscope.runtime import Collector

Factory = Callable[[NodeContext], Collector]


def _gpu(ctx: NodeContext) -> Collector:
    from kvscope.collectors.gpu import GpuCollector

    return GpuCollector(ctx, library=ctx.nvml)


def _engines(ctx: NodeContext) -> Collector:
    from kvscope.collectors.engines import EnginesCollector

    return EnginesCollector(ctx)


# name -> factory; later collectors (nvlink, topology, rdma, engines) add themselves here.
REGISTRY: dict[str, Factory] = {
    "gpu": _gpu,
    "engines": _engines,
}


def build(ctx: NodeContext) -> list[Collector]:
    """Every enabled, implemented collector, plus the agent's own process metrics."""
    from kvscope.collectors.process import ProcessCollector

    enabled = []
    for name, factory in REGISTRY.items():
        if getattr(ctx.config.collectors, name).enabled:
            enabled.append(factory(ctx))
    return [*enabled, ProcessCollector()]
