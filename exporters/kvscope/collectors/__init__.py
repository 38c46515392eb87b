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


def _nvlink(ctx: NodeContext) -> Collector:
    from kvscope.collectors.nvlink import NvlinkCollector

    return NvlinkCollector(ctx)


def _topology(ctx: NodeContext) -> Collector:
    from kvscope.collectors.topology import TopologyCollector

    return TopologyCollector(ctx)


def _rdma(ctx: NodeContext) -> Collector:
    from kvscope.collectors.rdma import RdmaCollector

    rdma = getattr(ctx.sim, "rdma", None)  # the simulated node brings its pyverbs fake
    return RdmaCollector(ctx, verbs_lib=rdma.verbs() if rdma is not None else None)


def _engines(ctx: NodeContext) -> Collector:
    from kvscope.collectors.engines import EnginesCollector

    return EnginesCollector(ctx)


# name -> factory, in poll order (topology before the collectors whose series it labels).
REGISTRY: dict[str, Factory] = {
    "gpu": _gpu,
    "nvlink": _nvlink,
    "topology": _topology,
    "rdma": _rdma,
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
