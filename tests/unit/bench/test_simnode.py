"""The benchmark's node shapes: the sizes asked for, and a node the collectors can read."""

from __future__ import annotations

from bench.simnode import NodeShape, build_node


def test_sixteen_gpus_have_distinct_bus_ids_and_pods_keep_existing_gpus() -> None:
    node = build_node(NodeShape(gpus=16))
    assert len(node.gpus) == 16
    assert len({g.pci_bus_id for g in node.gpus}) == 16
    small = build_node(NodeShape(gpus=2))
    assert all(i < 2 for pod in small.pods for i in pod.gpus)
    assert all(f.src < 2 and f.dst < 2 for f in small.topology.flows)


def test_engine_targets_replace_the_scenario_engines() -> None:
    node = build_node(NodeShape(engines=5))
    assert [e.name for e in node.engines] == [f"vllm-{i}" for i in range(5)]
    assert not any("kvscope.io/scrape" in pod.annotations for pod in node.pods)


def test_rdma_devices_beyond_the_board_get_their_own_pci_paths() -> None:
    node = build_node(NodeShape(rdma=8))
    devices = node.rdma.devices
    assert [d.name for d in devices] == [f"mlx5_{i}" for i in range(8)]
    assert len({d.pci for d in devices}) == 8
    assert len({d.netdev for d in devices}) == 8


def test_shape_round_trips_through_json() -> None:
    shape = NodeShape(gpus=4, engines=3, rdma=2, scenario="xid-79")
    assert NodeShape.from_json(shape.to_json()) == shape
