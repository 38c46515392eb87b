"""NVML topology reads, the sysfs PCI tree and GPU/NIC relations, `nvidia-smi topo -m` parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvscope.analysis.topology_model import P2PKind
from kvscope.parsers.nvidia_smi_topo import parse_topo_matrix
from kvscope.parsers.pci import normalise_bus_id, sysfs_bus_id
from kvscope.sim.topology import write_sysfs
from kvscope.sources.nvml import GpuIdentity
from kvscope.sources.nvml.links import Device, LinkInfo, LinkState, NvlinkSource
from kvscope.sources.nvml.topology import (
    cpu_ranges,
    node_topology,
    nvlink_count,
    read_affinity,
    read_pairs,
)
from kvscope.sources.pci_sysfs import PciPlace, pci_place, rdma_nics, relation
from nvlink_support import context, sim_node

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "topology"


def _matrix(scenario: str) -> dict[tuple[int, int], str]:
    node = sim_node(scenario)
    source = NvlinkSource(context(node).backends.nvml)
    devices = source.open()
    pairs = read_pairs(source.lib, devices, source.states())
    return {(p.a, p.b): p.link.label for p in pairs if p.link is not None}


@pytest.mark.parametrize(("scenario", "expected"), [
    ("healthy", {"NV18"}), ("nvswitch-a100", {"NV12"}), ("h200x2", {"NV18"}),
    ("pcie-only", {"PIX", "NODE", "SYS"}),
])
def test_matrix_per_topology(scenario: str, expected: set[str]) -> None:
    matrix = _matrix(scenario)
    gpus = len(sim_node(scenario).gpus)
    assert len(matrix) == gpus * (gpus - 1)  # one entry per ordered pair
    assert set(matrix.values()) == expected


def test_pcie_only_matrix_follows_switches_and_sockets() -> None:
    matrix = _matrix("pcie-only")
    assert matrix[(0, 1)] == "PIX"  # same PCIe switch
    assert matrix[(0, 2)] == "NODE"  # other switch, same socket
    assert matrix[(0, 4)] == "SYS"  # other socket
    assert matrix[(4, 0)] == "SYS"


def test_down_links_lower_the_nvlink_count() -> None:
    matrix = _matrix("nvlink-degraded")
    assert matrix[(0, 5)] == "NV16"
    assert matrix[(0, 1)] == "NV18"


def test_sim_matrix_equals_the_hgx_nvidia_smi_fixture() -> None:
    parsed = parse_topo_matrix((FIXTURES / "nvidia-smi-topo-hgx8-nv18.txt").read_text())
    assert parsed.error is None
    assert parsed.gpu_pairs() == _matrix("healthy")


def test_direct_gpu_links_are_counted_per_peer() -> None:
    """NVLink bridges (no NVSwitch): links whose remote PCI id is the peer GPU."""
    def gpu(index: int, bus: str) -> GpuIdentity:
        return GpuIdentity(index, index, f"GPU-{index}", "NVIDIA A100 80GB PCIe", bus, None)

    a, b, c = gpu(0, "00000000:17:00.0"), gpu(1, "00000000:65:00.0"), gpu(2, "00000000:CA:00.0")
    links_a = tuple(LinkInfo(i, 4, 25e9, "gpu", "00000000:65:00.0") for i in range(3))
    devices = [Device(a, None, links_a), Device(b, None, ()), Device(c, None, ())]
    states = {0: {0: True, 1: True, 2: False}}
    assert nvlink_count(devices[0], devices[1], states) == 2
    assert nvlink_count(devices[0], devices[2], states) == 0


def test_p2p_status_is_asked_with_a_plain_int() -> None:
    """The fake raises TypeError for pynvml's tuple NVML_P2P_CAPS_INDEX_READ, like ctypes."""
    node = sim_node("healthy")
    node.topology.p2p_status = 5  # fabric manager down: NVLink P2P not supported
    source = NvlinkSource(context(node).backends.nvml)
    devices = source.open()
    with pytest.raises(TypeError):
        source.lib.nvmlDeviceGetP2PStatus(devices[0].handle, devices[1].handle, (0,))
    pairs = read_pairs(source.lib, devices, source.states())
    assert {p.nvlink_p2p for p in pairs} == {"not_supported"}
    topo = node_topology(devices, pairs)
    assert topo.best_path([0], [4, 5]).label == "NV18"


def test_cpu_and_numa_affinity() -> None:
    node = sim_node("healthy")
    source = NvlinkSource(context(node).backends.nvml)
    devices = source.open()
    affinity = {a.gpu.index: a for a in read_affinity(source.lib, devices, 2)}
    assert cpu_ranges(affinity[0].cpus) == "0-47,96-143"
    assert (affinity[0].numa_node, affinity[7].numa_node) == (0, 1)


def test_cpu_ranges() -> None:
    assert cpu_ranges([]) == ""
    assert cpu_ranges([3]) == "3"
    assert cpu_ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"


def test_bus_id_spellings() -> None:
    assert normalise_bus_id("0000:2a:00.0") == "00000000:2A:00.0"
    assert normalise_bus_id("00000000:2A:00.0\x00") == "00000000:2A:00.0"
    assert normalise_bus_id("garbage") == "GARBAGE"
    assert sysfs_bus_id("00000000:2A:00.0") == "0000:2a:00.0"


# ---- sysfs PCI tree ----------------------------------------------------------------------------


def test_gpu_nic_relation_from_the_simulated_tree(tmp_path: Path) -> None:
    node = sim_node("healthy")
    write_sysfs(node, tmp_path)
    nics = {n.name: n for n in rdma_nics(tmp_path)}
    assert sorted(nics) == ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"]
    gpu0 = pci_place(tmp_path, node.gpus[0].pci_bus_id)
    assert gpu0 is not None and gpu0.numa_node == 0
    assert gpu0.chain[0] == "pci0000:15" and gpu0.chain[-1] == "0000:18:00.0"
    assert relation(gpu0, nics["mlx5_0"].place) is P2PKind.PIX
    assert relation(gpu0, nics["mlx5_1"].place) is P2PKind.NODE
    assert relation(gpu0, nics["mlx5_3"].place) is P2PKind.SYS
    write_sysfs(node, tmp_path)  # idempotent
    assert len(rdma_nics(tmp_path)) == 4


def _place(*chain: str, numa: int | None = 0) -> PciPlace:
    return PciPlace(chain[-1], chain, numa)


def test_relation_rules() -> None:
    hb = "pci0000:00"
    gpu = _place(hb, "0000:00:01.0", "0000:01:00.0", "0000:02:00.0", "0000:03:00.0")
    nic_same_switch = _place(hb, "0000:00:01.0", "0000:01:00.0", "0000:02:04.0", "0000:05:00.0")
    nic_deeper = _place(hb, "0000:00:01.0", "0000:01:00.0", "0000:02:08.0", "0000:06:00.0",
                        "0000:07:00.0", "0000:08:00.0")
    nic_other_port = _place(hb, "0000:00:03.0", "0000:09:00.0")
    nic_other_hb = _place("pci0000:40", "0000:40:01.0", "0000:41:00.0")
    nic_other_numa = _place("pci0000:80", "0000:80:01.0", "0000:81:00.0", numa=1)
    assert relation(gpu, nic_same_switch) is P2PKind.PIX
    assert relation(gpu, nic_deeper) is P2PKind.PXB
    assert relation(gpu, nic_other_port) is P2PKind.PHB
    assert relation(gpu, nic_other_hb) is P2PKind.NODE
    assert relation(gpu, nic_other_numa) is P2PKind.SYS
    unknown = _place("pci0000:40", "0000:40:01.0", "0000:41:00.0", numa=None)
    assert relation(_place("pci0000:00", "0000:00:01.0", numa=None), unknown) is P2PKind.SYS


def test_sysfs_without_devices_or_with_virtual_nics(tmp_path: Path) -> None:
    assert rdma_nics(tmp_path) == []  # no /sys/class/infiniband: no NIC, no error
    assert pci_place(tmp_path, "00000000:18:00.0") is None
    virtual = tmp_path / "devices" / "virtual" / "net" / "eth0"
    virtual.mkdir(parents=True)
    link = tmp_path / "class" / "infiniband" / "rxe0" / "device"
    link.parent.mkdir(parents=True)
    link.symlink_to(virtual)
    dangling = tmp_path / "class" / "infiniband" / "mlx5_9" / "device"
    dangling.parent.mkdir(parents=True)
    dangling.symlink_to(tmp_path / "nowhere")
    assert rdma_nics(tmp_path) == []


# ---- nvidia-smi topo -m --------------------------------------------------------------------------


def test_parse_h200_pair() -> None:
    parsed = parse_topo_matrix((FIXTURES / "nvidia-smi-topo-h200x2.txt").read_text())
    assert parsed.error is None
    assert parsed.devices == ("GPU0", "GPU1")
    assert parsed.gpu_pairs() == {(0, 1): "NV18", (1, 0): "NV18"}
    assert parsed.cpu_affinity == {"GPU0": "0-47,96-143", "GPU1": "0-47,96-143"}
    assert parsed.numa_affinity == {"GPU0": "0", "GPU1": "0"}


def test_parse_hgx_board_with_nics_and_terminal_escapes() -> None:
    parsed = parse_topo_matrix((FIXTURES / "nvidia-smi-topo-hgx8-nv18.txt").read_text())
    assert parsed.error is None
    assert len(parsed.gpu_pairs()) == 56 and set(parsed.gpu_pairs().values()) == {"NV18"}
    assert parsed.cells[("GPU0", "NIC0")] == "PIX"
    assert parsed.cells[("GPU5", "NIC0")] == "SYS"
    assert parsed.nic_names == {"NIC0": "mlx5_0", "NIC1": "mlx5_1", "NIC2": "mlx5_2",
                                "NIC3": "mlx5_3"}
    assert parsed.cpu_affinity["GPU6"] == "48-95,144-191"


def test_parse_space_padded_output_of_old_drivers() -> None:
    text = ("        GPU0    GPU1    CPU Affinity\n"
            "GPU0     X      SOC     0-11\n"
            "GPU1    SOC      X      12-23\n")
    parsed = parse_topo_matrix(text)
    assert parsed.error is None
    assert parsed.gpu_pairs() == {(0, 1): "SYS", (1, 0): "SYS"}
    assert parsed.cpu_affinity == {"GPU0": "0-11", "GPU1": "12-23"}


@pytest.mark.parametrize(("text", "error"), [
    ("", "no matrix header"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
     "no matrix header"),
    ("\tGPU0\tGPU1\nGPU0\t X \n", "1 cells for 2 columns"),
    ("\tGPU0\tGPU1\nGPU0\t X \tNV99x\n", "unknown cell"),
    ("\tGPU0\tGPU1\n\nLegend:\n", "without rows"),
])
def test_parse_bad_input_gives_an_error_value(text: str, error: str) -> None:
    parsed = parse_topo_matrix(text)
    assert parsed.error is not None and error in parsed.error


def test_link_state_record_is_per_link() -> None:
    node = sim_node("nvlink-degraded")
    source = NvlinkSource(context(node).backends.nvml)
    source.open()
    states: list[LinkState] = source.states()
    assert [link for link, up in states[5].states.items() if not up] == [3, 4]
