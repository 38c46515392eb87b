"""The default node's workload: one PD group of SGLang (prefill on GPUs 0-3, decode on 4-7).

In the healthy node the fix for the NVLink-bypass incident is applied: the engine containers are
privileged with hostIPC and CUDA_VISIBLE_DEVICES rebuilt to list every GPU, so NCCL/UCX can see
their peers. Scenarios break that on purpose.
"""

from __future__ import annotations

from kvscope.sim.node import SimNode, SimPod
from kvscope.sim.scenarios import SimOptions

ROLE_LABEL = "kvscope.io/pd-role"
GROUP_LABEL = "kvscope.io/pd-group"
PD_GROUP = "qwen25-72b"


def pd_pods(node: SimNode, *, isolated: bool = False) -> list[SimPod]:
    """Prefill and decode pods; `isolated` = each container sees only its own GPUs."""
    pods: list[SimPod] = []
    for name, role, gpus in (("sglang-prefill-0", "prefill", (0, 1, 2, 3)),
                             ("sglang-decode-0", "decode", (4, 5, 6, 7))):
        own = ",".join(node.gpus[i].uuid for i in gpus)
        env = {"NVIDIA_VISIBLE_DEVICES": own}
        if not isolated:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g.index) for g in node.gpus)
        pods.append(SimPod(
            name=name, namespace="inference", container="sglang", gpus=gpus,
            labels={ROLE_LABEL: role, GROUP_LABEL: PD_GROUP, "app": "sglang"},
            annotations={"kvscope.io/scrape": "true", "kvscope.io/engine": "sglang",
                         "kvscope.io/role": role},
            env=env, privileged=not isolated, host_ipc=not isolated,
            uid=f"6f1c0d2e-0000-4000-8000-00000000000{len(pods)}"))
    return pods


def equip_pd_pods(node: SimNode, opts: SimOptions) -> None:
    node.pods.extend(pd_pods(node))
    node.node_labels.update({
        "kubernetes.io/hostname": node.hostname,
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "topology.kubernetes.io/switch": "ib-leaf-07",
        "topology.kubernetes.io/switch-type": "infiniband",
    })

