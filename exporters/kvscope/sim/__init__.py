"""The simulated node: a node model that drives fakes at every hardware seam.

`kvscope demo`, `kvscope collect --scenario`, the tests and the benchmarks all run the production
collectors against these fakes; only the outside world is replaced.
"""

from kvscope.sim.node import SimGpu, SimNode, SimPod
from kvscope.sim.nvml import FakeNvml
from kvscope.sim.scenarios import SCENARIOS, build_scenario

__all__ = ["SCENARIOS", "FakeNvml", "SimGpu", "SimNode", "SimPod", "build_scenario"]
