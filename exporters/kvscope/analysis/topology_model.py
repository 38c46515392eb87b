"""Shared vocabulary for GPU-to-GPU paths, as `nvidia-smi topo -m` names them.

The topology collector fills a `NodeTopology`; PD path analysis and `kvscope doctor` read it from
the node context.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class P2PKind(enum.StrEnum):
    NVLINK = "NV"  # joined by NVLink (directly or through NVSwitch); label NV<count>
    PIX = "PIX"  # at most one PCIe bridge
    PXB = "PXB"  # several PCIe bridges, no host bridge
    PHB = "PHB"  # through a PCIe host bridge (the CPU)
    NODE = "NODE"  # across host bridges within one NUMA node
    SYS = "SYS"  # across NUMA nodes (SMP interconnect: QPI/UPI/Infinity Fabric)


# Lower is better: the order in which NCCL prefers transports between two GPUs.
RANK: Mapping[P2PKind, int] = {k: i for i, k in enumerate(P2PKind)}


@dataclass(frozen=True)
class P2PLink:
    kind: P2PKind
    nvlinks: int = 0  # number of NVLinks when kind is NVLINK

    @property
    def label(self) -> str:
        return f"NV{self.nvlinks}" if self.kind is P2PKind.NVLINK else self.kind.value

    def better_than(self, other: P2PLink) -> bool:
        if RANK[self.kind] != RANK[other.kind]:
            return RANK[self.kind] < RANK[other.kind]
        return self.nvlinks > other.nvlinks


@dataclass(frozen=True)
class NodeTopology:
    gpu_uuids: tuple[str, ...]  # by GPU index
    links: Mapping[tuple[int, int], P2PLink]  # ordered pairs (a, b), a != b

    def link(self, a: int, b: int) -> P2PLink | None:
        return self.links.get((a, b))

    def best_path(self, group_a: Iterable[int], group_b: Iterable[int]) -> P2PLink | None:
        """Best link between any GPU of one set and any GPU of the other."""
        best: P2PLink | None = None
        targets = list(group_b)
        for a in group_a:
            for b in targets:
                link = self.links.get((a, b))
                if link is not None and (best is None or link.better_than(best)):
                    best = link
        return best
