"""`kvscope collect --path.sysfs <fixture tree> --no-collector.gpu`, through the CLI, for every
fixture tree: bytes (PMA data counters x 4), rates, states and identity."""

from __future__ import annotations

import pytest

from rdma_helpers import FIXTURES, cli, collector_up, samples, value

HDR = 200 * 125_000_000
EDR_100 = 100 * 125_000_000
ERDMA_25 = 25 * 125_000_000

# tree, device, (state, phys_state, rate B/s, tx bytes, rx bytes, tx packets, rx packets)
CASES = [
    ("mlx5-ib", "mlx5_0", (4, 5, HDR, 2880761508848 * 4, 18126345378 * 4, 10907922116,
                           541889824)),
    ("mlx5-ib", "mlx5_1", (1, 3, 10 * 125_000_000, 4294967295 * 4, 1203417 * 4, 77120, 68211)),
    ("mlx5-roce", "mlx5_0", (4, 5, EDR_100, 97200410112 * 4, 95112200004 * 4, 230114050,
                             229001777)),
    # eRDMA byte counters are bytes already: no x4.
    ("erdma-upstream", "erdma_0", (4, 5, ERDMA_25, 4053240320, 3591372800, 987654, 876543)),
    ("erdma-alibaba", "erdma_0", (4, 5, ERDMA_25, 4053240320, 3591372800, 987654, 876543)),
]


def collect(tree: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    code, out = cli("collect", "--path.sysfs", str(FIXTURES / tree), "--no-collector.gpu",
                    "--collector.rdma.eadm-path", "/nonexistent/eadm")
    assert code == 0
    found = samples(out)
    assert collector_up(found, "rdma") == 1
    return found


@pytest.mark.parametrize(("tree", "device", "expected"), CASES,
                         ids=[f"{t}-{d}" for t, d, _ in CASES])
def test_ports_bytes_rates_states(tree: str, device: str, expected: tuple[float, ...]) -> None:
    found = collect(tree)
    state, phys, rate, tx, rx, tx_p, rx_p = expected
    lb = {"device": device, "port": "1"}
    assert value(found, "kvscope_rdma_port_state", **lb) == state
    assert value(found, "kvscope_rdma_port_physical_state", **lb) == phys
    assert value(found, "kvscope_rdma_port_rate_bytes_per_second", **lb) == rate
    assert value(found, "kvscope_rdma_port_transmit_bytes_total", **lb) == tx
    assert value(found, "kvscope_rdma_port_receive_bytes_total", **lb) == rx
    assert value(found, "kvscope_rdma_port_transmit_packets_total", **lb) == tx_p
    assert value(found, "kvscope_rdma_port_receive_packets_total", **lb) == rx_p


def test_ib_identity_and_affinity_facts() -> None:
    found = collect("mlx5-ib")
    info = {lb["device"]: lb for lb, _ in found["kvscope_rdma_device_info"]}
    assert info["mlx5_0"] == {
        "device": "mlx5_0", "driver": "mlx5_core", "firmware_version": "20.39.1002",
        "hca_type": "MT4123", "board_id": "MT_0000000223", "node_guid": "b83f:d203:00a1:2c40",
        "netdev": "ibp24s0", "numa_node": "0", "pci_bus_id": "0000:18:00.0",
        "pci_path": "/devices/pci0000:16/0000:16:02.0/0000:18:00.0"}
    assert info["mlx5_1"]["numa_node"] == "1"
    ports = {lb["device"]: lb for lb, _ in found["kvscope_rdma_port_info"]}
    assert ports["mlx5_0"] == {"device": "mlx5_0", "port": "1", "link_layer": "InfiniBand",
                               "width": "4X", "speed": "HDR"}
    assert "speed" not in ports["mlx5_1"]  # "10 Gb/sec (4X)": SDR prints no speed


def test_legacy_counters_saturate_and_say_so() -> None:
    found = collect("mlx5-ib")
    assert value(found, "kvscope_rdma_port_saturated_counters", device="mlx5_1") == 3
    assert value(found, "kvscope_rdma_port_saturated_counters", device="mlx5_0") == 0
    # The raw PMA pass-through keeps the kernel's names and raw (word) values.
    assert value(found, "kvscope_rdma_port_counter_total", device="mlx5_1",
                 counter="port_xmit_wait") == 4294967295
    assert value(found, "kvscope_rdma_port_counter_total", device="mlx5_0",
                 counter="port_xmit_data") == 2880761508848


def test_hw_counters_pass_through_without_lifespan() -> None:
    found = collect("mlx5-roce")
    assert value(found, "kvscope_rdma_hw_counter_total", device="mlx5_0",
                 counter="np_ecn_marked_roce_packets") == 21278189006
    counters = {lb["counter"] for lb, _ in found["kvscope_rdma_hw_counter_total"]}
    assert "lifespan" not in counters
    assert len(counters) == 29


def test_upstream_erdma_has_no_pma_counters_and_netdev_from_gid() -> None:
    found = collect("erdma-upstream")
    assert "kvscope_rdma_port_counter_total" not in found
    assert "kvscope_rdma_port_saturated_counters" not in found  # absent, not 0: no counters/
    assert value(found, "kvscope_rdma_hw_counter_total", counter="tx_bps_limit_drop_cnt") == 0
    (labels, _), = found["kvscope_rdma_device_info"]
    assert labels["driver"] == "erdma"
    assert labels["netdev"] == "eth0"
    assert "hca_type" not in labels  # absent attribute: absent label, never ""


def test_alibaba_erdma_driver_counters_in_sysfs() -> None:
    found = collect("erdma-alibaba")
    counters = {lb["counter"]: v for lb, v in found["kvscope_rdma_hw_counter_total"]}
    assert len(counters) == 55
    assert counters["verbs_create_qp_failed_cnt"] == 8
    assert counters["hw_bps_limit_drop_cnt"] == 1532
    # eadm is absent here: its source is off and the collector stays up.
    assert not any(name.startswith("kvscope_erdma_") for name in found)


def test_sysfs_root_without_rdma_is_no_data(tmp_path: object) -> None:
    code, out = cli("collect", "--path.sysfs", str(tmp_path), "--no-collector.gpu")
    found = samples(out)
    assert code == 0
    assert collector_up(found, "rdma") == 1
    assert not any(n.startswith("kvscope_rdma_port") for n in found)
