"""Collector registry: every collector by name, with its factory and whether it is on by default.

The names are a contract: they are the `--collector.<name>` flags, the config keys under
`collectors:` and the `collector` label of kvscope_collector_up. The order is the poll order
(topology before the collectors whose series it labels); what collectors share goes through the
typed services of collectors/shared.py, not through each other's modules. `self` (the agent's
own process metrics) is registered like the others but has no config section and no flag: the
agent always reports its own cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry is imported by config.py, which NodeContext imports
    from kvscope.collectors.base import Collector
    from kvscope.config import Config
    from kvscope.context import NodeContext

Factory = Callable[["NodeContext"], "Collector"]


@dataclass(frozen=True)
class Registration:
    name: str
    factory: Factory
    default_enabled: bool = True
    configurable: bool = True  # has a `collectors.<name>` section and a --collector.<name> flag


def _gpu(ctx: NodeContext) -> Collector:
    from kvscope.collectors.gpu import GpuCollector

    return GpuCollector(ctx)


def _nvlink(ctx: NodeContext) -> Collector:
    from kvscope.collectors.nvlink import NvlinkCollector

    return NvlinkCollector(ctx)


def _topology(ctx: NodeContext) -> Collector:
    from kvscope.collectors.topology import TopologyCollector

    return TopologyCollector(ctx)


def _rdma(ctx: NodeContext) -> Collector:
    from kvscope.collectors.rdma import RdmaCollector

    return RdmaCollector(ctx, verbs_lib=ctx.backends.verbs)


def _engines(ctx: NodeContext) -> Collector:
    from kvscope.collectors.engines import EnginesCollector

    return EnginesCollector(ctx)


def _self(ctx: NodeContext) -> Collector:
    from kvscope.collectors.process import ProcessCollector

    return ProcessCollector()


REGISTRY: tuple[Registration, ...] = (
    Registration("gpu", _gpu),
    Registration("nvlink", _nvlink),
    Registration("topology", _topology),
    Registration("rdma", _rdma),
    Registration("engines", _engines),
    Registration("self", _self, configurable=False),
)

# The names with a config section and a flag; config.py checks its sections against these.
CONFIGURABLE: tuple[str, ...] = tuple(r.name for r in REGISTRY if r.configurable)


def enabled(config: Config, registration: Registration) -> bool:
    if not registration.configurable:
        return registration.default_enabled
    section = getattr(config.collectors, registration.name)
    return bool(section.enabled)


def enabled_names(config: Config) -> frozenset[str]:
    """The configurable collectors this configuration switches on."""
    return frozenset(r.name for r in REGISTRY if r.configurable and enabled(config, r))


def build(ctx: NodeContext) -> list[Collector]:
    """Every enabled collector, in poll order."""
    return [r.factory(ctx) for r in REGISTRY if enabled(ctx.config, r)]
