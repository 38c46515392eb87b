"""Simulated GPU topology: NVLink fabric, PCIe tree, NUMA, RDMA NIC placement, KV traffic.

`SimTopology` answers what FakeNvml's NVLink and topology calls need, writes a sysfs PCI tree
for GPU/NIC affinity, and serves Volcano HyperNodes from the fake Kubernetes API. NVLink byte
counters are a traffic model: `flows` of bytes per second between GPU pairs, integrated over
`node.elapsed()`, spread evenly over the active links of each end.

Topologies (names are the `topology` argument of `build`):

* `nv18-mesh-8` (default): HGX H100/H200/H20 board, 8 GPUs, 18 NVLink 4.0 links each to four
  NVSwitch chips (5+4+4+5): NV18 between every pair. Two GPUs and one RDMA NIC per PCIe switch,
  four switches, two NUMA nodes.
* `nvswitch`: HGX A100 board, 12 NVLink 3.0 links per GPU to six NVSwitches: NV12 everywhere.
* `pcie-only`: 8 PCIe GPUs without NVLink: PIX within a PCIe switch, NODE across switches of
  one socket, SYS across sockets.
* `h200x2-nv18`: the lent 2 x H200 machine: 18 links each to NVSwitches (remote type 2), one
  host bridge (common ancestor HOSTBRIDGE), no RDMA NIC.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kvscope.sim import kubeapi, scenarios
from kvscope.sim.node import SimNode, SimPod
from kvscope.sim.pods import GROUP_LABEL, PD_GROUP, ROLE_LABEL, pd_pods
from kvscope.sim.scenarios import Scenario, SimOptions

NVML_TOPOLOGY_SINGLE = 10
NVML_TOPOLOGY_HOSTBRIDGE = 30
NVML_TOPOLOGY_NODE = 40
NVML_TOPOLOGY_SYSTEM = 50

# Two sockets x 48 cores x 2 threads, as on common HGX hosts (Xeon 8468 / EPYC 9454).
NUMA_CPUS: dict[int, tuple[int, ...]] = {
    0: (*range(0, 48), *range(96, 144)),
    1: (*range(48, 96), *range(144, 192)),
}
KV_FLOW_BYTES_PER_SECOND = 6.0e9  # one prefill GPU streaming its KV shard to its decode peer


@dataclass(frozen=True)
class Flow:
    src: int  # GPU index
    dst: int
    bytes_per_second: float


@dataclass(frozen=True)
class PciSlot:
    host_bridge: int  # bus number of the root complex (pci0000:<hb>)
    pcie_switch: int | None  # None: the device hangs off its own root port
    numa: int
    port: int  # root port (no switch) or switch downstream port number


@dataclass(frozen=True)
class SimNic:
    name: str  # mlx5_0
    bus: int  # PCI bus of the NIC function
    slot: PciSlot


@dataclass
class SimTopology:
    name: str
    links_per_gpu: int = 0
    switch_links: tuple[int, ...] = ()  # links per NVSwitch chip, summing to links_per_gpu
    nvlink_version: int = 6  # NVML enum: 6 = NVLink 4.0 (H100/H200)
    link_speed_mbps: int = 26562  # NVML field 164 on H200
    slots: list[PciSlot] = field(default_factory=list)  # per GPU index
    nics: list[SimNic] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)
    links_down: set[tuple[int, int]] = field(default_factory=set)  # (gpu, link)
    # (gpu, link) -> (replay, recovery, crc) per hour of elapsed time, from 0 at start
    dl_error_rates: dict[tuple[int, int], tuple[float, float, float]] = field(default_factory=dict)
    data_errors: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    p2p_status: int = 0  # NVML_P2P_STATUS_OK; e.g. 5 when the fabric manager is down
    hypernodes: list[dict[str, Any]] | None = None  # None: the Volcano CRD is not installed
    base_bytes: float = 1.1e12  # bytes already counted when the simulation starts
    # One-off copies (src, dst) -> bytes, added on top of the flows (scripts' dry runs, tests).
    transfers: dict[tuple[int, int], float] = field(default_factory=dict)
    # NVLink bridges instead of NVSwitches: GPU index -> the one peer all its links go to
    # (PCIe cards such as H100 NVL bridged in pairs). Empty: a switched fabric.
    bridges: dict[int, int] = field(default_factory=dict)

    def add_transfer(self, src: int, dst: int, nbytes: float) -> None:
        """A finished copy of `nbytes` from GPU `src` to GPU `dst` over NVLink."""
        self.transfers[(src, dst)] = self.transfers.get((src, dst), 0.0) + nbytes

    # ---- NVLink ----------------------------------------------------------------------------

    def switch_of(self, link: int) -> int:
        edge = 0
        for switch, count in enumerate(self.switch_links):
            edge += count
            if link < edge:
                return switch
        return len(self.switch_links) - 1

    def link_active(self, gpu: int, link: int) -> bool:
        return (gpu, link) not in self.links_down

    def active_links(self, gpu: int) -> list[int]:
        return [lnk for lnk in range(self.links_per_gpu) if self.link_active(gpu, lnk)]

    def gpu_bytes(self, gpu: int, elapsed: float) -> tuple[float, float]:
        """(tx, rx) data bytes over all links since the driver loaded."""
        start = self.base_bytes + gpu * 1.0e10
        tx = sum(f.bytes_per_second for f in self.flows if f.src == gpu) * elapsed
        rx = sum(f.bytes_per_second for f in self.flows if f.dst == gpu) * elapsed
        tx += sum(n for (src, _), n in self.transfers.items() if src == gpu)
        rx += sum(n for (_, dst), n in self.transfers.items() if dst == gpu)
        return start + tx, start * 0.97 + rx

    def link_kib(self, gpu: int, link: int, elapsed: float) -> tuple[int, int]:
        """Per-link (tx, rx) KiB: the GPU's bytes spread over its active links; the last active
        link takes the remainder, so the per-link values sum exactly to the aggregate."""
        active = self.active_links(gpu)
        if link not in active:
            return 0, 0
        totals = [int(b) // 1024 for b in self.gpu_bytes(gpu, elapsed)]
        share = [t // len(active) for t in totals]
        if link == active[-1]:
            return totals[0] - share[0] * (len(active) - 1), totals[1] - share[1] * (len(active)
                                                                                   - 1)
        return share[0], share[1]

    def dl_errors(self, gpu: int, link: int, elapsed: float) -> tuple[int, int, int]:
        rates = self.dl_error_rates.get((gpu, link), (0.0, 0.0, 0.0))
        hours = elapsed / 3600
        return int(rates[0] * hours), int(rates[1] * hours), int(rates[2] * hours)

    # ---- PCIe ------------------------------------------------------------------------------

    def common_ancestor(self, a: int, b: int) -> int:
        sa, sb = self.slots[a], self.slots[b]
        if sa.pcie_switch is not None and sa.pcie_switch == sb.pcie_switch:
            return NVML_TOPOLOGY_SINGLE
        if sa.host_bridge == sb.host_bridge:
            return NVML_TOPOLOGY_HOSTBRIDGE
        return NVML_TOPOLOGY_NODE if sa.numa == sb.numa else NVML_TOPOLOGY_SYSTEM


# ---- topologies ---------------------------------------------------------------------------------

HGX_HOST_BRIDGES = (0x15, 0x37, 0x97, 0xB7)  # one root complex per PCIe switch


def _hgx_slots(count: int) -> list[PciSlot]:
    return [PciSlot(HGX_HOST_BRIDGES[(i // 2) % 4], (i // 2) % 4, 0 if i < 4 else 1, i % 2)
            for i in range(count)]


def _hgx_nics(gpu_buses: Sequence[int]) -> list[SimNic]:
    return [SimNic(f"mlx5_{s}", gpu_buses[2 * s] + 1,
                   PciSlot(HGX_HOST_BRIDGES[s], s, 0 if s < 2 else 1, 2))
            for s in range(min(4, len(gpu_buses) // 2))]


def _buses(node: SimNode) -> list[int]:
    return [int(g.pci_bus_id.split(":")[1], 16) for g in node.gpus]


def nv18_mesh_8(node: SimNode) -> SimTopology:
    return SimTopology("nv18-mesh-8", links_per_gpu=18, switch_links=(5, 4, 4, 5),
                       slots=_hgx_slots(len(node.gpus)), nics=_hgx_nics(_buses(node)))


def nvswitch_a100(node: SimNode) -> SimTopology:
    return SimTopology("nvswitch", links_per_gpu=12, switch_links=(2, 2, 2, 2, 2, 2),
                       nvlink_version=4, link_speed_mbps=25000,
                       slots=_hgx_slots(len(node.gpus)), nics=_hgx_nics(_buses(node)))


def pcie_only(node: SimNode) -> SimTopology:
    return SimTopology("pcie-only", slots=_hgx_slots(len(node.gpus)),
                       nics=_hgx_nics(_buses(node)))


def h200x2(node: SimNode) -> SimTopology:
    slots = [PciSlot(0x00, None, 0, 1 + 2 * i) for i in range(len(node.gpus))]
    return SimTopology("h200x2-nv18", links_per_gpu=18, switch_links=(5, 4, 4, 5), slots=slots)


def nvl_bridged_pairs(node: SimNode) -> SimTopology:
    """PCIe cards joined in pairs by NVLink bridges (H100 NVL: NV12 between 0-1, 2-3, ...);
    every other pair of GPUs talks through PCIe."""
    bridges = {i: i ^ 1 for i in range(len(node.gpus) - len(node.gpus) % 2)}
    return SimTopology("nvl-bridged-pairs", links_per_gpu=12, switch_links=(12,),
                       slots=_hgx_slots(len(node.gpus)), nics=_hgx_nics(_buses(node)),
                       bridges=bridges)


TOPOLOGIES = {"nv18-mesh-8": nv18_mesh_8, "nvswitch": nvswitch_a100, "pcie-only": pcie_only,
              "h200x2-nv18": h200x2, "nvl-bridged-pairs": nvl_bridged_pairs}


def kv_flows(prefill: Sequence[int], decode: Sequence[int],
             rate: float = KV_FLOW_BYTES_PER_SECOND) -> list[Flow]:
    """Each prefill GPU streams its KV shard to the decode GPU of the same rank."""
    return [Flow(p, d, rate) for p, d in zip(prefill, decode, strict=False)]


def default_hypernodes(node: SimNode) -> list[dict[str, Any]]:
    """A leaf/spine/core chain for the node (matches its topology.kubernetes.io/switch label)."""
    def hypernode(name: str, tier: int, kind: str, member: str) -> dict[str, Any]:
        return {"apiVersion": "topology.volcano.sh/v1alpha1", "kind": "HyperNode",
                "metadata": {"name": name},
                "spec": {"tier": tier, "members": [{"type": kind,
                                                    "selector": {"exactMatch": {"name": member}}}]}}
    return [hypernode("ib-leaf-07", 1, "Node", node.hostname),
            hypernode("ib-spine-1", 2, "HyperNode", "ib-leaf-07"),
            hypernode("ib-core", 3, "HyperNode", "ib-spine-1")]


def equip_topology(node: SimNode, opts: SimOptions) -> None:
    """The default node: HGX NV18 mesh, KV flowing prefill GPUs 0-3 -> decode GPUs 4-7."""
    if node.topology is not None:
        return
    topo = nv18_mesh_8(node)
    topo.flows = kv_flows([0, 1, 2, 3], [4, 5, 6, 7])
    topo.hypernodes = default_hypernodes(node)
    node.topology = topo



# ---- sysfs PCI tree -----------------------------------------------------------------------------


def _bdf(bus: int, dev: int = 0, fn: int = 0) -> str:
    return f"0000:{bus:02x}:{dev:02x}.{fn}"


def _chain(slot: PciSlot, bus: int) -> list[str]:
    hb = slot.host_bridge
    if slot.pcie_switch is None:
        return [f"pci0000:{hb:02x}", _bdf(hb, slot.port), _bdf(bus)]
    # root port -> switch upstream port -> switch downstream port -> device
    return [f"pci0000:{hb:02x}", _bdf(hb, 1), _bdf(hb + 1), _bdf(hb + 2, slot.port), _bdf(bus)]


def _place(root: Path, chain: list[str], numa: int) -> Path:
    target = root / "devices" / Path(*chain)
    target.mkdir(parents=True, exist_ok=True)
    (target / "numa_node").write_text(f"{numa}\n")
    return target


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists() and not link.is_symlink():
        # Relative, as the kernel's links are, so the tree works wherever it is mounted.
        link.symlink_to(os.path.relpath(target, link.parent))


def write_sysfs(node: SimNode, root: Path) -> None:
    """GPU and RDMA NIC PCI functions under `root`, in sysfs's layout. Idempotent, and it leaves
    an RDMA device another simulator already wrote in place."""
    topo: SimTopology | None = node.topology
    if topo is None:
        return
    for gpu in node.gpus:
        if gpu.index >= len(topo.slots):
            continue
        bus = int(gpu.pci_bus_id.split(":")[1], 16)
        slot = topo.slots[gpu.index]
        target = _place(root, _chain(slot, bus), slot.numa)
        _link(root / "bus" / "pci" / "devices" / _bdf(bus), target)
    for nic in topo.nics:
        target = _place(root, _chain(nic.slot, nic.bus), nic.slot.numa)
        _link(root / "bus" / "pci" / "devices" / _bdf(nic.bus), target)
        _link(root / "class" / "infiniband" / nic.name / "device", target)


async def start_sysfs(node: SimNode, stack: AsyncExitStack) -> dict[str, Any]:
    """Write the node's PCI tree to a temporary sysfs root and point paths.sysfs at it."""
    from kvscope.sim.services import shared_root

    if node.topology is None:
        return {}
    root = shared_root(node, stack) / "sys"
    write_sysfs(node, root)
    return {"paths.sysfs": str(root)}


def nic_pci_path(node: SimNode, name: str) -> tuple[str, int] | None:
    """(sysfs path under devices/, NUMA node) of an RDMA NIC the topology places, so the RDMA
    simulator writes its device files where the PCI hierarchy puts them."""
    topo: SimTopology | None = node.topology
    for nic in topo.nics if topo is not None else ():
        if nic.name == name:
            return "/".join(_chain(nic.slot, nic.bus)), nic.slot.numa
    return None


# ---- Volcano HyperNodes in the fake API ---------------------------------------------------------

# The path a real API server serves the CRD at: group topology.volcano.sh, version v1alpha1,
# cluster-scoped plural "hypernodes". 404 when the CRD is not installed, as a real server says.
HYPERNODES_PATH = "/apis/topology.volcano.sh/v1alpha1/hypernodes"


def add_hypernodes(app: web.Application, node: SimNode) -> None:
    async def hypernodes(request: web.Request) -> web.Response:
        topo = request.app[kubeapi.NODE_KEY].topology
        items = getattr(topo, "hypernodes", None)
        if items is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"},
                                     status=404)
        return web.json_response({"apiVersion": "topology.volcano.sh/v1alpha1",
                                  "kind": "HyperNodeList", "items": items})

    app.router.add_get(HYPERNODES_PATH, hypernodes)



# ---- scenarios ----------------------------------------------------------------------------------


def _replace_pd_pods(node: SimNode, pods: Sequence[SimPod]) -> None:
    names = {p.name for p in pods}
    node.pods = [p for p in node.pods if p.name not in names and p.labels.get(ROLE_LABEL)
                 not in ("prefill", "decode")] + list(pods)


def nvlink_bypass(opts: SimOptions) -> SimNode:
    """The field incident: PD pods on NV18-joined GPUs, each container sees only its own GPUs
    (device plugin's NVIDIA_VISIBLE_DEVICES, no privilege, no hostIPC), so NCCL/UCX cannot map
    the peer GPU and KV moves over TCP: the NVLink counters stay flat."""
    node = scenarios.healthy(opts)
    _replace_pd_pods(node, pd_pods(node, isolated=True))
    node.topology.flows = []
    return node


def _retopologise(node: SimNode, build: Any) -> None:
    flows = node.topology.flows if node.topology is not None else []
    hypernodes = node.topology.hypernodes if node.topology is not None else None
    node.topology = build(node)
    node.topology.flows = flows
    node.topology.hypernodes = hypernodes


def pcie_only_node(opts: SimOptions) -> SimNode:
    """8 PCIe GPUs without NVLink: the PD pair's best path is PIX/NODE/SYS, never NV#."""
    node = scenarios.healthy(opts)
    for gpu in node.gpus:
        gpu.name = "NVIDIA L40S"
        gpu.memory_total_mib = 46068
        gpu.power_max_w, gpu.power_limit_w = 340.0, 350.0
    _retopologise(node, pcie_only)
    node.topology.flows = []  # no NVLink to count: KV goes over PCIe P2P or the NIC
    return node


def nvswitch_node(opts: SimOptions) -> SimNode:
    """HGX A100: 12 NVLink 3.0 links per GPU through six NVSwitches (NV12 everywhere)."""
    node = scenarios.healthy(opts)
    for gpu in node.gpus:
        gpu.name = "NVIDIA A100-SXM4-80GB"
        gpu.memory_total_mib = 81920
    _retopologise(node, nvswitch_a100)
    return node


def h200x2_node(opts: SimOptions) -> SimNode:
    """The lent 2 x H200 box: GPU0 and GPU1 joined by NV18, prefill on 0, decode on 1."""
    node = scenarios.healthy(opts)
    node.gpus = node.gpus[:2]
    for gpu in node.gpus:
        gpu.name = "NVIDIA H200"
        gpu.memory_total_mib = 143771
    node.topology = h200x2(node)
    node.topology.flows = kv_flows([0], [1])
    node.topology.hypernodes = None
    pods = []
    for name, role, index in (("sglang-prefill-0", "prefill", 0), ("sglang-decode-0", "decode", 1)):
        pods.append(SimPod(name=name, container="sglang", gpus=(index,),
                           labels={ROLE_LABEL: role, GROUP_LABEL: PD_GROUP},
                           env={"NVIDIA_VISIBLE_DEVICES": node.gpus[index].uuid,
                                "CUDA_VISIBLE_DEVICES": "0,1"},
                           privileged=True, host_ipc=True))
    _replace_pd_pods(node, pods)
    return node


def nvlink_degraded(opts: SimOptions) -> SimNode:
    """GPU 5 has two NVLinks down and a third retraining: replays and recoveries climb."""
    node = scenarios.healthy(opts)
    node.topology.links_down = {(5, 3), (5, 4)}
    node.topology.dl_error_rates = {(5, 7): (1800.0, 12.0, 240.0)}
    node.start_elapsed = max(node.start_elapsed, 3600.0)  # an hour in: the counters show it
    return node


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("nvlink-bypass", "PD pods on NV18 GPUs in isolated containers: KV over TCP, "
             "NVLink flat", nvlink_bypass),
    Scenario("pcie-only", "8 x L40S, no NVLink: PD KV path is PCIe (PIX/NODE/SYS)",
             pcie_only_node),
    Scenario("nvswitch-a100", "HGX A100, NV12 through six NVSwitches", nvswitch_node),
    Scenario("h200x2", "2 x H200 joined by NV18 (the lent machine), prefill GPU0 -> decode GPU1",
             h200x2_node),
    Scenario("nvlink-degraded", "GPU 5: two NVLinks down, replay/recovery errors climbing",
             nvlink_degraded),
)
