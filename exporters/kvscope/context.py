"""What collectors share: the configuration, the simulated node (if any) and cross-collector state.

Pod attribution (issue: topology) writes `gpu_pods`; the GPU collector reads it when it labels
its series, so a new pod shows up on the next fast poll without a scrape doing any lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvscope.config import Config


@dataclass
class NodeContext:
    config: Config
    sim: Any = None  # kvscope.sim.SimNode when serving the simulated node
    nvml: Any = None  # NVML library object shared by collectors: pynvml, or the sim's fake
    gpu_pods: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # UUID -> pod labels
    topology: Any = None  # analysis.topology_model.NodeTopology; the topology collector sets it
    oneshot: bool = False  # `kvscope collect`: event tiers drain without waiting

    def nvml_library(self) -> Any:
        """The NVML library object every NVML collector shares: the simulator's fake, or pynvml
        loaded once. Raises kvscope.sources.nvml.NvmlUnavailable when there is none."""
        if self.nvml is None:
            from kvscope.sources.nvml import load_library

            self.nvml = load_library(self.config.collectors.gpu.nvml_library)
        return self.nvml
