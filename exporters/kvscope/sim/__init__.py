"""The simulated node: a node model that drives fakes at every hardware seam.

`kvscope demo`, `kvscope collect --scenario`, the tests and the benchmarks all run the production
collectors against these fakes; only the outside world is replaced. `build_backends` is the one
entry point the agent's cli uses.
"""

from kvscope.sim.backends import build_backends, node_backends
from kvscope.sim.catalogue import SCENARIOS
from kvscope.sim.node import SimGpu, SimNode, SimPod
from kvscope.sim.nvml import FakeNvml
from kvscope.sim.scenarios import build_scenario

__all__ = ["SCENARIOS", "FakeNvml", "SimGpu", "SimNode", "SimPod", "build_backends",
           "build_scenario", "node_backends"]
