"""The simulated node as `Backends`: what cli.py (and the tests) hand the agent instead of the
host's hardware.

`build_backends` builds the scenario's node, starts the fakes the enabled collectors read (the
Kubernetes API, the kubelet, the sysfs tree, eadm, the engines) inside the caller's exit stack,
and returns the Backends together with the final Config that points kvscope's real clients at
those fakes. Nothing rewrites the configuration after the collectors are built.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from kvscope.backends import Backends, SimulatedNode
from kvscope.collectors.registry import enabled_names
from kvscope.config import Config, ConfigError, set_dotted
from kvscope.sim.node import SimNode
from kvscope.sim.nvml import FakeNvml
from kvscope.sim.scenarios import SimOptions, all_scenarios, build_scenario
from kvscope.sources.nvml import NvmlLibrary, NvmlSession


def node_backends(node: SimNode, scenario: str | None = None) -> tuple[Backends, FakeNvml]:
    """Backends over `node`'s fakes (no service started), and the fake NVML behind them."""
    fake = FakeNvml(node)
    library: NvmlLibrary = fake  # mypy checks the fake against the library's Protocol
    simulated = None
    if scenario is not None:
        known = all_scenarios().get(scenario)
        simulated = SimulatedNode(scenario, known.description if known is not None else "")
    rdma = node.rdma
    return Backends(nvml=NvmlSession(lambda: library),
                    verbs=rdma.verbs() if rdma is not None else None,
                    simulated=simulated), fake


async def start_services(node: SimNode, config: Config, stack: AsyncExitStack) -> Config:
    """Start the fakes the enabled collectors read, for the life of `stack`; returns the config
    pointed at them."""
    from kvscope.sim.services import start_all

    overrides = await start_all(node, stack, enabled_names(config))
    if not overrides:
        return config
    data = config.model_dump()
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    return Config.model_validate(data)


def scenario_node(config: Config, *, fault_delay: float, latency_scale: float = 1.0) -> SimNode:
    """The node of `config.scenario`; an unknown name is a configuration error."""
    assert config.scenario is not None
    opts = SimOptions(hostname=config.node_name, fault_delay=fault_delay,
                      latency_scale=latency_scale)
    try:
        return build_scenario(config.scenario, opts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def build_backends(config: Config, stack: AsyncExitStack, *, fault_delay: float,
                         latency_scale: float = 1.0,
                         node: SimNode | None = None) -> tuple[Backends, Config]:
    """Backends and final Config of the simulated node of `config.scenario` (or `node`)."""
    if node is None:
        node = scenario_node(config, fault_delay=fault_delay, latency_scale=latency_scale)
    backends, _ = node_backends(node, config.scenario)
    return backends, await start_services(node, config, stack)


__all__ = ["build_backends", "node_backends", "scenario_node", "start_services"]
