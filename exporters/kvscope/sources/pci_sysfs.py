"""GPU-to-RDMA-NIC affinity from the PCI hierarchy in sysfs (blocking; static tier).

A device's place in the PCI tree is the real path behind its sysfs link:
`/sys/bus/pci/devices/0000:18:00.0 -> ../../../devices/pci0000:15/0000:15:01.0/0000:16:00.0/
0000:17:00.0/0000:18:00.0`, and an RDMA NIC's is the path behind
`/sys/class/infiniband/mlx5_0/device`. The first component is the host bridge (root complex),
the ones after it are bridges (root ports, PCIe switch ports), the last is the device.

GPUDirect RDMA moves data between the NIC and GPU memory over PCIe without the CPU: it is good
when both sit below one PCIe switch (PIX, PXB) and poor when the traffic crosses the host bridge
(PHB) or the CPU interconnect (NODE, SYS). The relation uses nvidia-smi's legend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvscope.analysis.topology_model import P2PKind
from kvscope.parsers.pci import sysfs_bus_id


@dataclass(frozen=True)
class PciPlace:
    bus_id: str  # sysfs spelling, e.g. 0000:18:00.0
    chain: tuple[str, ...]  # host bridge first, device last
    numa_node: int | None


@dataclass(frozen=True)
class RdmaNic:
    name: str  # mlx5_0, erdma_0, ...
    place: PciPlace


def _chain(sysfs: Path, link: Path) -> tuple[str, ...] | None:
    try:
        real = Path(os.path.realpath(link, strict=True))
    except OSError:
        return None
    devices = Path(os.path.realpath(sysfs)) / "devices"
    try:
        rel = real.relative_to(devices)
    except ValueError:
        return None  # a link leading out of this sysfs tree: not a PCI device we can place
    parts = tuple(rel.parts)
    if not parts or not parts[0].startswith("pci"):
        return None  # virtual device (e.g. a software RDMA device such as rxe over a netdev)
    return parts


def _numa(device_dir: Path) -> int | None:
    try:
        value = int((device_dir / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None  # -1: the platform does not say


def pci_place(sysfs: Path, nvml_bus_id: str) -> PciPlace | None:
    bus_id = sysfs_bus_id(nvml_bus_id)
    link = sysfs / "bus" / "pci" / "devices" / bus_id
    chain = _chain(sysfs, link)
    if chain is None:
        return None
    return PciPlace(bus_id, chain, _numa(link))


def rdma_nics(sysfs: Path) -> list[RdmaNic]:
    """RDMA devices with a PCI function behind them; none when the class directory is absent."""
    root = sysfs / "class" / "infiniband"
    try:
        names = sorted(p.name for p in root.iterdir())
    except OSError:
        return []
    nics = []
    for name in names:
        link = root / name / "device"
        chain = _chain(sysfs, link)
        if chain is None:
            continue
        nics.append(RdmaNic(name, PciPlace(chain[-1], chain, _numa(link))))
    return nics


def relation(a: PciPlace, b: PciPlace) -> P2PKind:
    """How traffic between two PCI functions travels, in nvidia-smi's words.

    Counting bridges: the ancestors the two chains share decide it. Sharing only the host
    bridge is PHB; sharing a bridge below it with at most one more bridge on each side (the
    downstream ports of one PCIe switch) is PIX; deeper trees are PXB. Different host bridges
    are NODE within one NUMA node and SYS across nodes (unknown NUMA counts as SYS: never claim
    a better path than we can show).
    """
    shared = 0
    for x, y in zip(a.chain[:-1], b.chain[:-1], strict=False):
        if x != y:
            break
        shared += 1
    if shared == 0:
        same_numa = a.numa_node is not None and a.numa_node == b.numa_node
        return P2PKind.NODE if same_numa else P2PKind.SYS
    if shared == 1:
        return P2PKind.PHB
    below_a = len(a.chain) - shared - 1
    below_b = len(b.chain) - shared - 1
    return P2PKind.PIX if below_a <= 1 and below_b <= 1 else P2PKind.PXB
