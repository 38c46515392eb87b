"""GPU-to-GPU topology and CPU/NUMA affinity through NVML (blocking; static tier).

The matrix `nvidia-smi topo -m` prints has two ingredients, and NVML gives them separately:

* the PCIe path, from nvmlDeviceGetTopologyCommonAncestor (SINGLE=PIX, MULTIPLE=PXB,
  HOSTBRIDGE=PHB, NODE, SYSTEM=SYS). NVLink is not a level: the 2 x H200 pair joined by 18
  NVLinks reports HOSTBRIDGE;
* the NVLink count, from each link's remote end: links whose remote PCI id is the peer GPU
  (direct NVLink, e.g. NVLink bridges), or, when both GPUs' links go to NVSwitches, the smaller
  of their active switch-link counts (an HGX H100/H200/H20 board shows NV18 for every pair).

nvmlDeviceGetP2PStatus(NVLINK) says whether the driver will actually do P2P over that NVLink
(on NVSwitch systems it needs the fabric manager); it is kept next to the count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kvscope.analysis.topology_model import NodeTopology, P2PKind, P2PLink
from kvscope.parsers.pci import normalise_bus_id
from kvscope.sources.nvml.device import GpuIdentity
from kvscope.sources.nvml.library import NvmlError, NvmlLibrary
from kvscope.sources.nvml.links import Device, LinkState, optional_call

# nvmlGpuTopologyLevel_t -> the PCIe part of nvidia-smi's legend.
PCIE_LEVELS: Mapping[int, P2PKind] = {
    0: P2PKind.PIX,  # INTERNAL: two GPUs on one board
    10: P2PKind.PIX,  # SINGLE: one PCIe switch
    20: P2PKind.PXB,  # MULTIPLE: several PCIe switches, no host bridge
    30: P2PKind.PHB,  # HOSTBRIDGE
    40: P2PKind.NODE,  # NODE: host bridges within one NUMA node
    50: P2PKind.SYS,  # SYSTEM: across the SMP interconnect
}
# NVML_P2P_CAPS_INDEX_NVLINK. pynvml's NVML_P2P_CAPS_INDEX_READ is the tuple (0,) (a stray
# comma), which ctypes refuses; plain ints are passed on purpose.
P2P_CAPS_NVLINK = 2
P2P_STATUS: Mapping[int, str] = {0: "ok", 1: "chipset_not_supported", 2: "gpu_not_supported",
                                 3: "ioh_topology_not_supported", 4: "disabled_by_regkey",
                                 5: "not_supported", 6: "unknown"}


@dataclass(frozen=True)
class PairPath:
    a: int  # GPU index
    b: int
    nvlinks: int
    pcie: P2PKind | None  # None when NVML would not say
    nvlink_p2p: str | None  # P2P status over NVLink; None when there is no NVLink

    @property
    def link(self) -> P2PLink | None:
        if self.nvlinks > 0:
            return P2PLink(P2PKind.NVLINK, self.nvlinks)
        return P2PLink(self.pcie) if self.pcie is not None else None


@dataclass(frozen=True)
class GpuAffinity:
    gpu: GpuIdentity
    cpus: tuple[int, ...]  # logical CPUs near the GPU; () when unknown
    numa_node: int | None


def _active_links(dev: Device, states: Mapping[int, bool]) -> list[int]:
    return [i.link for i in dev.links if states.get(i.link, True)]


def nvlink_count(a: Device, b: Device, states: Mapping[int, Mapping[int, bool]]) -> int:
    """NVLinks usable between two GPUs (direct links to b, or shared NVSwitch fabric)."""
    a_up = set(_active_links(a, states.get(a.identity.index, {})))
    b_up = set(_active_links(b, states.get(b.identity.index, {})))
    direct = sum(1 for i in a.links if i.link in a_up and i.remote_type == "gpu"
                 and i.remote_pci_bus_id == normalise_bus_id(b.identity.pci_bus_id))
    if direct:
        return direct
    a_sw = sum(1 for i in a.links if i.link in a_up and i.remote_type == "nvswitch")
    b_sw = sum(1 for i in b.links if i.link in b_up and i.remote_type == "nvswitch")
    return min(a_sw, b_sw)


def read_pairs(lib: NvmlLibrary, devices: Sequence[Device],
               states: Iterable[LinkState]) -> list[PairPath]:
    """One PairPath per ordered pair of GPUs (the matrix is symmetric; NVML is asked once)."""
    state_map = {s.gpu.index: s.states for s in states}
    out: list[PairPath] = []
    for i, a in enumerate(devices):
        for b in devices[i + 1:]:
            level = optional_call(lib.nvmlDeviceGetTopologyCommonAncestor, a.handle, b.handle)
            pcie = PCIE_LEVELS.get(int(level)) if level is not None else None
            count = nvlink_count(a, b, state_map)
            p2p = None
            if count:
                status = optional_call(lib.nvmlDeviceGetP2PStatus, a.handle, b.handle,
                                   P2P_CAPS_NVLINK)
                p2p = P2P_STATUS.get(int(status), "unknown") if status is not None else None
            ia, ib = a.identity.index, b.identity.index
            out.append(PairPath(ia, ib, count, pcie, p2p))
            out.append(PairPath(ib, ia, count, pcie, p2p))
    return out


def node_topology(devices: Sequence[Device], pairs: Iterable[PairPath]) -> NodeTopology:
    links: dict[tuple[int, int], P2PLink] = {}
    for pair in pairs:
        link = pair.link
        if link is not None:
            links[(pair.a, pair.b)] = link
    uuids = tuple(d.identity.uuid for d in sorted(devices, key=lambda d: d.identity.index))
    return NodeTopology(gpu_uuids=uuids, links=links)


def _mask_bits(words: Iterable[int], word_bits: int = 64) -> tuple[int, ...]:
    bits = []
    for w, word in enumerate(words):
        value = int(word)
        for bit in range(word_bits):
            if value >> bit & 1:
                bits.append(w * word_bits + bit)
    return tuple(bits)


def read_affinity(lib: NvmlLibrary, devices: Sequence[Device], cpu_count: int) -> list[GpuAffinity]:
    """CPUs and NUMA node nearest each GPU (what nvidia-smi topo -m prints at the right)."""
    # At least 1024 CPUs: NVML fills only what fits, and a container may under-report CPUs.
    words = max(16, (cpu_count + 63) // 64)
    out = []
    for dev in devices:
        try:
            mask = optional_call(lib.nvmlDeviceGetCpuAffinity, dev.handle, words)
            # Neither call is in every driver and pynvml release: looked up, not assumed.
            numa_call = getattr(lib, "nvmlDeviceGetNumaNodeId", None)
            numa = optional_call(numa_call, dev.handle) if numa_call is not None else None
            affinity_call = getattr(lib, "nvmlDeviceGetMemoryAffinity", None)
            if numa is None and affinity_call is not None:
                nodes = optional_call(affinity_call, dev.handle, 1, 0)
                bits = _mask_bits(nodes) if nodes is not None else ()
                numa = bits[0] if len(bits) == 1 else None
        except NvmlError:
            continue  # this GPU's affinity is absent; the matrix still stands
        cpus = _mask_bits(mask) if mask is not None else ()
        out.append(GpuAffinity(dev.identity, cpus,
                               int(numa) if numa is not None and int(numa) >= 0 else None))
    return out


def cpu_ranges(cpus: Iterable[int]) -> str:
    """(0,1,2,3,8,9) -> "0-3,8-9", as nvidia-smi and /sys's cpulist write CPU sets."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    start = prev = None
    for cpu in ordered:
        if start is None:
            start = prev = cpu
        elif prev is not None and cpu == prev + 1:
            prev = cpu
        else:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = cpu
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(parts)
