"""Incidents that need a second node or a special board to show (the alert rules' scenarios).

* `driver-skew`: this node serves the default PD group (`qwen25-72b`) on another NVIDIA driver.
  Run it next to a `healthy` agent (another NODE_NAME): the group spans two driver versions, the
  node that could not join. Its pods are the group's second replica (`sglang-*-1`).
* `pd-switch-types`: this node of the same PD group sits under an Ethernet (RoCE) switch while
  the `healthy` node sits under an InfiniBand leaf: KV between them cannot use one RDMA fabric.
* `tp-over-pcie`: 8 x H100 NVL bridged in NVLink pairs (0-1, 2-3, ...); the PD pods' TP-4
  groups (GPUs 0-3 and 4-7) each span two bridges, so half their GPU pairs talk over PCIe:
  "8 cards slower than 4".
"""

from __future__ import annotations

from kvscope.sim import scenarios
from kvscope.sim.engines import DECODE, PREFILL
from kvscope.sim.node import SimNode
from kvscope.sim.scenarios import Scenario, SimOptions
from kvscope.sim.topology import _retopologise, nvl_bridged_pairs

SKEWED_DRIVER = "570.133.20"  # the R570 branch next to the default node's 580.95.05
REPLICA = {PREFILL: "sglang-prefill-1", DECODE: "sglang-decode-1"}


def second_replica(node: SimNode) -> None:
    """Rename the PD pods (and the engines they run) to the group's second replica, so that two
    simulated nodes of one PD group have distinct pod names, as Kubernetes guarantees."""
    for pod in node.pods:
        pod.name = REPLICA.get(pod.name, pod.name)
        pod.uid = pod.uid[:-2] + "1" + pod.uid[-1]
    for engine in node.engines:
        pod_name = getattr(engine, "pod", None)
        if pod_name in REPLICA:
            engine.pod = REPLICA[pod_name]
            engine.name = REPLICA[pod_name]


def driver_skew(opts: SimOptions) -> SimNode:
    node = scenarios.healthy(opts)
    node.driver_version = SKEWED_DRIVER
    second_replica(node)
    return node


def ethernet_hypernodes(hostname: str) -> list[dict[str, object]]:
    def hypernode(name: str, tier: int, kind: str, member: str) -> dict[str, object]:
        return {"apiVersion": "topology.volcano.sh/v1alpha1", "kind": "HyperNode",
                "metadata": {"name": name},
                "spec": {"tier": tier, "members": [{"type": kind,
                                                    "selector": {"exactMatch": {"name": member}}}]}}
    return [hypernode("roce-tor-03", 1, "Node", hostname),
            hypernode("roce-spine-1", 2, "HyperNode", "roce-tor-03")]


def pd_switch_types(opts: SimOptions) -> SimNode:
    node = scenarios.healthy(opts)
    node.node_labels.update({"topology.kubernetes.io/switch": "roce-tor-03",
                             "topology.kubernetes.io/switch-type": "ethernet"})
    if node.topology is not None:
        node.topology.hypernodes = ethernet_hypernodes(node.hostname)
    second_replica(node)
    return node


def tp_over_pcie(opts: SimOptions) -> SimNode:
    node = scenarios.healthy(opts)
    for gpu in node.gpus:
        gpu.name = "NVIDIA H100 NVL"
        gpu.memory_total_mib = 95830
    _retopologise(node, nvl_bridged_pairs)
    if node.topology is not None:
        node.topology.flows = []  # prefill and decode share no bridge: KV leaves over PCIe
    return node


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("driver-skew", f"driver {SKEWED_DRIVER} on a node of PD group qwen25-72b "
             "(run next to a healthy agent)", driver_skew),
    Scenario("pd-switch-types", "a node of PD group qwen25-72b under a RoCE (Ethernet) switch "
             "(run next to a healthy agent under InfiniBand)", pd_switch_types),
    Scenario("tp-over-pcie", "8 x H100 NVL bridged in pairs: each TP-4 pod spans two bridges, "
             "half its GPU pairs over PCIe", tp_over_pcie),
)
