"""Facts collectors share, as typed services with one documented writer each.

Collectors never import each other: what one learns and another needs goes through one of
these, created once per agent by app.py (via NodeContext) and handed to every collector.

* `PodAttribution`: which pod holds which GPU (or MIG device), plus the PD analysis the doctor
  prints. Writer: the topology collector (its first static poll and its slow pod tier).
  Readers: the GPU and NVLink collectors when they label series, the doctor.
* `TopologyBoard`: the GPU-to-GPU link model. Writer: the topology collector's static tier.
  Readers: the topology collector's pod tier (PD pair paths), the doctor.

Values are replaced whole (immutable mappings and tuples), never mutated in place, so a reader
in another tier's thread sees either the previous publication or the new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvscope.analysis.pd_paths import GpuContainer, PdPair
    from kvscope.analysis.topology_model import NodeTopology

PodLabels = Mapping[str, str]
_NO_PODS: Mapping[str, PodLabels] = MappingProxyType({})


@dataclass(frozen=True)
class PdAnalysis:
    """The containers on the node's GPUs and the PD pairs among them."""

    containers: tuple[GpuContainer, ...] = ()
    pairs: tuple[PdPair, ...] = ()


class PodAttribution:
    """GPU UUID (or MIG device key, see labels.mig_device_key) -> pod labels.

    Written only by the topology collector; a new pod shows on the next fast poll of the GPU
    collector without a scrape doing any lookup."""

    def __init__(self) -> None:
        self._by_device: Mapping[str, PodLabels] = _NO_PODS
        self._analysis: PdAnalysis | None = None

    def publish(self, by_device: Mapping[str, PodLabels]) -> None:
        """Replace the GPU -> pod mapping (the kubelet's latest answer)."""
        self._by_device = MappingProxyType(dict(by_device))

    def publish_analysis(self, containers: Sequence[GpuContainer],
                         pairs: Sequence[PdPair]) -> None:
        self._analysis = PdAnalysis(tuple(containers), tuple(pairs))

    def pod_of(self, device: str) -> PodLabels | None:
        return self._by_device.get(device)

    def snapshot(self) -> Mapping[str, PodLabels]:
        return self._by_device

    def analysis(self) -> PdAnalysis | None:
        """None until the topology collector has attributed pods once (or when it is off)."""
        return self._analysis


class TopologyBoard:
    """The node's GPU link model (NVLink counts, PCIe paths). Writer: the topology collector."""

    def __init__(self) -> None:
        self._topology: NodeTopology | None = None

    def publish(self, topology: NodeTopology) -> None:
        self._topology = topology

    @property
    def topology(self) -> NodeTopology | None:
        return self._topology


@dataclass(frozen=True)
class SharedServices:
    pods: PodAttribution = field(default_factory=PodAttribution)
    board: TopologyBoard = field(default_factory=TopologyBoard)
