"""kubelet pod-resources over a real gRPC unix socket, attribution and PD path analysis."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvscope.analysis.pd_paths import (
    REASON_NO_SHARED_IPC,
    REASON_NOT_VISIBLE,
    REASON_OK,
    REASON_P2P_UNAVAILABLE,
    ContainerMeta,
    GpuContainer,
    PodMeta,
    attribute,
    gpu_containers,
    gpu_pod_labels,
    pd_pairs,
    pod_meta,
    role_and_group,
    visible_gpus,
)
from kvscope.analysis.topology_model import NodeTopology, P2PKind, P2PLink
from kvscope.config import PdSettings
from kvscope.parsers.hypernodes import parse_hypernodes, switch_chain
from kvscope.sim.kubeapi import pod_object
from kvscope.sim.kubelet import start_kubelet_sync
from kvscope.sources.nvml import GpuIdentity
from kvscope.sources.pod_resources import ContainerDevices, PodResourcesClient, PodResourcesError
from nvlink_support import sim_node


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="kvs-") as d:
        yield Path(d)


def test_list_over_a_real_unix_socket(short_dir: Path) -> None:
    node = sim_node("healthy")
    kubelet = start_kubelet_sync(node, short_dir)
    client = PodResourcesClient(kubelet.socket_path, timeout=5)
    try:
        assert client.available()
        devices = client.list()
        devices_again = client.list()  # the channel is kept between refreshes
    finally:
        client.close()
        kubelet.stop()
    by_pod = {d.pod: d for d in devices}
    assert set(by_pod) == {"sglang-prefill-0", "sglang-decode-0"}
    prefill = by_pod["sglang-prefill-0"]
    assert (prefill.namespace, prefill.container, prefill.resource) == (
        "inference", "sglang", "nvidia.com/gpu")
    assert prefill.device_ids == tuple(node.gpus[i].uuid for i in range(4))
    assert devices_again == devices
    assert kubelet.lister.calls == 2


def test_replies_above_grpcs_4_mib_default_are_accepted(short_dir: Path) -> None:
    node = sim_node("healthy")
    kubelet = start_kubelet_sync(node, short_dir, extra_pods=60_000)  # ~5 MiB reply
    try:
        small = PodResourcesClient(kubelet.socket_path, timeout=10,
                                   max_message_bytes=4 * 1024 * 1024)
        with pytest.raises(PodResourcesError) as err:
            small.list()
        assert err.value.reason == "grpc_resource_exhausted"
        big = PodResourcesClient(kubelet.socket_path, timeout=10)  # default: 64 MiB
        devices = big.list()
        big.close()
    finally:
        kubelet.stop()
    assert {d.pod for d in devices} == {"sglang-prefill-0", "sglang-decode-0"}


def test_absent_and_dead_sockets(short_dir: Path) -> None:
    absent = PodResourcesClient(short_dir / "kubelet.sock", timeout=1)
    assert not absent.available()
    dead_path = short_dir / "dead.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(dead_path))  # the file exists, nobody listens
    try:
        client = PodResourcesClient(dead_path, timeout=1)
        assert client.available()
        with pytest.raises(PodResourcesError) as err:
            client.list()
        assert err.value.reason == "grpc_unavailable"
        assert "dead.sock" in str(err.value)
    finally:
        dead.close()


# ---- attribution ---------------------------------------------------------------------------------


GPUS = [GpuIdentity(i, i, f"GPU-{i:04d}", "NVIDIA H20", f"00000000:{0x18 + i:02X}:00.0", None)
        for i in range(8)]


def test_attribute_device_id_forms() -> None:
    devices = [
        ContainerDevices("p", "ns", "c", "nvidia.com/gpu", ("GPU-0001", "GPU-0000")),
        ContainerDevices("gke", "ns", "c", "nvidia.com/gpu", ("nvidia5",)),
        ContainerDevices("ts", "ns", "c", "nvidia.com/gpu", ("GPU-0006::2",)),
        ContainerDevices("mig", "ns", "c", "nvidia.com/mig-1g.10gb", ("MIG-abc",)),
        ContainerDevices("nic", "ns", "c", "rdma/hca_shared_devices_a", ("mlx5_0",)),
        ContainerDevices("unknown", "ns", "c", "nvidia.com/gpu", ("GPU-ffff",)),
    ]
    allocation = attribute(devices, GPUS, ["nvidia.com/gpu"])
    assert allocation == {("ns", "gke", "c"): (5,), ("ns", "p", "c"): (0, 1),
                          ("ns", "ts", "c"): (6,)}


def test_gpu_pod_labels_pick_one_stable_owner_for_a_shared_gpu() -> None:
    shared = [GpuContainer("ns", "b-pod", "c", (2,), "other", "", (2,)),
              GpuContainer("ns", "a-pod", "c", (2,), "other", "", (2,))]
    assert gpu_pod_labels(shared, GPUS) == {
        "GPU-0002": {"pod": "a-pod", "namespace": "ns", "container": "c"}}


@pytest.mark.parametrize(("privileged", "env", "allocated", "expected"), [
    (False, {"NVIDIA_VISIBLE_DEVICES": "GPU-0000"}, (0, 1), (0, 1)),  # the plugin decides
    (True, {}, (4, 5), tuple(range(8))),  # privileged: every device node
    (True, {"CUDA_VISIBLE_DEVICES": "4,5,0,1,2,3,6,7"}, (4, 5), (4, 5, 0, 1, 2, 3, 6, 7)),
    (False, {"CUDA_VISIBLE_DEVICES": "1"}, (4, 5), (5,)),  # indices into the visible set
    (False, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, (4, 5), (4, 5)),  # CUDA stops at ordinal 2
    (False, {"CUDA_VISIBLE_DEVICES": "GPU-0005"}, (4, 5), (5,)),
    (False, {"CUDA_VISIBLE_DEVICES": "GPU-0000"}, (4, 5), ()),  # not in the visible set
    (False, {"NVIDIA_VISIBLE_DEVICES": "all"}, (), tuple(range(8))),  # no request: bypass
    (False, {"CUDA_VISIBLE_DEVICES": ""}, (4,), ()),
    # CUDA stops at the first bad entry: nothing after it counts, even a good one.
    (False, {"CUDA_VISIBLE_DEVICES": "0,7,1"}, (4, 5), (4,)),  # bad ordinal
    (False, {"CUDA_VISIBLE_DEVICES": "GPU-0005,GPU-9999,0"}, (4, 5), (5,)),  # unknown UUID
    (False, {"CUDA_VISIBLE_DEVICES": "1,,0"}, (4, 5), (5,)),  # empty entry
])
def test_visibility_rules(privileged: bool, env: dict[str, str], allocated: tuple[int, ...],
                          expected: tuple[int, ...]) -> None:
    assert visible_gpus(allocated, GPUS, privileged=privileged, env=env) == expected


def test_role_and_group_from_configured_labels() -> None:
    pd = PdSettings()
    assert role_and_group({"kvscope.io/pd-role": "Prefill", "kvscope.io/pd-group": "g"},
                          pd) == ("prefill", "g")
    assert role_and_group({"pd-role": "d", "app.kubernetes.io/instance": "x"}, pd) == (
        "decode", "x")
    assert role_and_group({"app": "web"}, pd) == ("other", "")
    custom = PdSettings(role_labels=("role",), decode_values=("gen",))
    assert role_and_group({"role": "gen"}, custom)[0] == "decode"


@pytest.mark.parametrize(("labels", "pod_role", "engine_role"), [
    ({"kvscope.io/pd-role": "prefill"}, "prefill", "prefill"),
    ({"kvscope.io/pd-role": "D"}, "decode", "decode"),
    # labelled, but neither prefill nor decode: a PD pod serving both phases, for both readers
    ({"kvscope.io/pd-role": "unified"}, "both", "both"),
    ({"pd-role": "aggregated"}, "both", "both"),
    # an empty value is no label: the next configured key decides
    ({"kvscope.io/pd-role": "", "pd-role": "decode"}, "decode", "decode"),
    # unlabelled: not a PD pod (attribution says other); the engine is not discovered by label
    ({"app": "web"}, "other", None),
])
def test_pod_attribution_and_engine_discovery_read_roles_alike(
        labels: dict[str, str], pod_role: str, engine_role: str | None) -> None:
    from kvscope.collectors.engines.discovery import pod_target
    from kvscope.config import EnginesConfig
    from kvscope.parsers.kube import ContainerPort, Pod

    pd = PdSettings()
    assert role_and_group(labels, pd)[0] == pod_role
    pod = Pod("p", "ns", labels, False, {"c": ContainerMeta(ports=(ContainerPort("http", 80),))},
              node_name="n", phase="Running", pod_ip="127.0.0.9")
    target = pod_target(pod, EnginesConfig(), pd, "n")
    assert (target.role if target is not None and not isinstance(target, str) else None) \
        == engine_role


def test_pod_meta_reads_the_api_object_and_survives_garbage() -> None:
    node = sim_node("nvlink-bypass")
    meta = pod_meta(pod_object(node.pods[0], node.hostname))
    assert meta is not None
    assert (meta.name, meta.host_ipc) == ("sglang-prefill-0", False)
    assert meta.containers["sglang"].privileged is False
    assert "NVIDIA_VISIBLE_DEVICES" in meta.containers["sglang"].env
    assert pod_meta({}) is None
    assert pod_meta({"metadata": "x", "spec": []}) is None
    odd = pod_meta({"metadata": {"name": "p", "labels": {"a": {"b": 1}}},
                    "spec": {"containers": ["x", {"name": 3}, {"name": "c", "env": [
                        {"name": "A", "valueFrom": {}}, {"name": "B", "value": "1"}]}]}})
    assert odd is not None and odd.labels == {} and odd.containers["c"].env == {"B": "1"}


# ---- PD pairs ------------------------------------------------------------------------------------


NV18 = P2PLink(P2PKind.NVLINK, 18)
MESH = NodeTopology(tuple(g.uuid for g in GPUS),
                    {(a, b): NV18 for a in range(8) for b in range(8) if a != b})


def _meta(name: str, role: str, *, privileged: bool = False, host_ipc: bool = False,
          env: dict[str, str] | None = None) -> PodMeta:
    return PodMeta(name, "inference", {"kvscope.io/pd-role": role, "kvscope.io/pd-group": "g"},
                   host_ipc, {"engine": ContainerMeta(privileged, env or {})})


def _pairs(metas: list[PodMeta], p2p: dict[tuple[int, int], str] | None = None) -> list:
    allocation = {("inference", metas[0].name, "engine"): (0, 1, 2, 3),
                  ("inference", metas[1].name, "engine"): (4, 5, 6, 7)}
    containers = gpu_containers(allocation, {("inference", m.name): m for m in metas}, GPUS,
                                PdSettings())
    return pd_pairs(containers, MESH, p2p)


def test_isolated_containers_cannot_use_nvlink() -> None:
    [pair] = _pairs([_meta("p", "prefill"), _meta("d", "decode")])
    assert pair.path == NV18 and not pair.ipc_possible
    assert pair.reason == REASON_NOT_VISIBLE and pair.nvlink_unusable
    assert pair.prefill_cannot_see == (4, 5, 6, 7)
    assert pair.decode_cannot_see == (0, 1, 2, 3)


def test_privileged_containers_with_rebuilt_cuda_visible_devices_can() -> None:
    [pair] = _pairs([_meta("p", "prefill", privileged=True,
                           env={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}),
                     _meta("d", "decode", privileged=True,
                           env={"CUDA_VISIBLE_DEVICES": "4,5,6,7,0,1,2,3"})])
    assert (pair.ipc_possible, pair.reason) == (True, REASON_OK)


def test_visible_peers_without_a_shared_ipc_namespace() -> None:
    everything = {"NVIDIA_VISIBLE_DEVICES": "all"}
    metas = [_meta("p", "prefill", env=everything), _meta("d", "decode", env=everything)]
    allocation = {("inference", "p", "engine"): (), ("inference", "d", "engine"): ()}
    containers = gpu_containers(allocation, {("inference", m.name): m for m in metas}, GPUS,
                                PdSettings())
    containers = [GpuContainer(c.namespace, c.pod, c.container, g, c.role, c.pd_group,
                               c.visible, c.privileged, c.host_ipc)
                  for c, g in zip(containers, [(0, 1), (4, 5)], strict=True)]
    [pair] = pd_pairs(containers, MESH)
    assert pair.reason == REASON_NO_SHARED_IPC and not pair.ipc_possible


def test_fabric_refusing_nvlink_p2p() -> None:
    [pair] = _pairs([_meta("p", "prefill", privileged=True), _meta("d", "decode",
                                                                    privileged=True)],
                    p2p={(a, b): "not_supported" for a in range(8) for b in range(8)})
    assert pair.reason == REASON_P2P_UNAVAILABLE and pair.nvlink_unusable


def test_pairs_need_a_group_and_one_namespace() -> None:
    containers = [
        GpuContainer("a", "p", "c", (0,), "prefill", "g", (0,), False, True),
        GpuContainer("b", "d", "c", (1,), "decode", "g", (1,), False, True),
        GpuContainer("a", "p2", "c", (2,), "prefill", "", (2,), False, True),
        GpuContainer("a", "x", "c", (3,), "unknown", "", (3,)),
    ]
    assert pd_pairs(containers, MESH) == []


def test_without_topology_the_path_is_unknown_but_visibility_still_judged() -> None:
    containers = [GpuContainer("n", "p", "c", (0,), "prefill", "g", (0,), False, False),
                  GpuContainer("n", "d", "c", (1,), "decode", "g", (1,), False, False)]
    [pair] = pd_pairs(containers, None)
    assert pair.path is None and pair.reason == REASON_NOT_VISIBLE and not pair.nvlink_unusable


# ---- Volcano HyperNodes --------------------------------------------------------------------------


def _hn(name: str, tier: int, kind: str, selector: dict) -> dict:
    return {"metadata": {"name": name}, "spec": {"tier": tier, "members": [
        {"type": kind, "selector": selector}]}}


def test_switch_chain_with_every_selector_kind() -> None:
    items = [
        _hn("leaf-a", 1, "Node", {"regexMatch": {"pattern": "gpu-node-[0-3]"}}),
        _hn("leaf-b", 1, "Node", {"labelMatch": {"matchLabels": {"rack": "r9"}}}),
        _hn("spine", 2, "HyperNode", {"exactMatch": {"name": "leaf-a"}}),
        _hn("core", 3, "HyperNode", {"regexMatch": {"pattern": "^spine$"}}),
        _hn("other-spine", 2, "HyperNode", {"exactMatch": {"name": "leaf-b"}}),
    ]
    nodes = parse_hypernodes(items)
    assert switch_chain(nodes, "gpu-node-2", {}) == [(1, "leaf-a"), (2, "spine"), (3, "core")]
    assert switch_chain(nodes, "gpu-node-9", {"rack": "r9"}) == [(1, "leaf-b"),
                                                                  (2, "other-spine")]
    assert switch_chain(nodes, "elsewhere", {}) == []


def test_hypernode_garbage_and_cycles_end_quietly() -> None:
    items = ["x", {"metadata": {}}, {"metadata": {"name": "n"}, "spec": {"tier": "one"}},
             _hn("bad-regex", 1, "Node", {"regexMatch": {"pattern": "("}}),
             _hn("a", 1, "Node", {"exactMatch": {"name": "node"}}),
             _hn("b", 2, "HyperNode", {"exactMatch": {"name": "a"}}),
             _hn("a", 3, "HyperNode", {"exactMatch": {"name": "b"}})]
    nodes = parse_hypernodes(items)
    assert [h.name for h in nodes] == ["bad-regex", "a", "b", "a"]
    assert switch_chain(nodes, "node", {}) == [(1, "a"), (2, "b")]
