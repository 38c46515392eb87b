"""The `mig` scenario: 8 x H200, GPU 7 in MIG mode with seven 1g.18gb GPU instances.

Profile facts measured on a real H200 (nvidia-smi mig -lgip and NVML, 2026-12-02): 1g.18gb is
NVML profile id 19, up to 7 per GPU, 16384 MiB each (memorySizeMB). Three pods hold one instance
each through the device plugin's mixed strategy (resource nvidia.com/mig-1g.18gb, device ids
MIG-<uuid>); the decode pod keeps GPUs 4-6.
"""

from __future__ import annotations

import uuid

from kvscope.sim.node import SimMig, SimNode, SimPod
from kvscope.sim.scenarios import Scenario, SimOptions, _node

H200_NAME = "NVIDIA H200"
H200_MEMORY_MIB = 143771  # nvidia-smi on the lent H200
MIG_GPU = 7
PROFILE = "1g.18gb"
PROFILE_ID = 19
PROFILE_MEMORY_MIB = 16384
# GPU instance ids NVML hands out for seven one-slice instances.
GPU_INSTANCE_IDS = (7, 8, 9, 10, 11, 12, 13)
MIG_RESOURCE = "nvidia.com/mig-1g.18gb"


def _mig_uuid(host: str, gi: int) -> str:
    return "MIG-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{host}.gpu{MIG_GPU}.gi{gi}.kvscope.sim"))


def mig_node(opts: SimOptions) -> SimNode:
    node = _node(opts)
    for gpu in node.gpus:
        gpu.name = H200_NAME
        gpu.memory_total_mib = H200_MEMORY_MIB
    node.gpus[MIG_GPU].mig_instances = [
        SimMig(gpu_instance_id=gi, profile=PROFILE, profile_id=PROFILE_ID,
               memory_mib=PROFILE_MEMORY_MIB, uuid=_mig_uuid(node.hostname, gi),
               load=0.4 + 0.1 * n, fb_used_ratio=0.3 + 0.08 * n)
        for n, gi in enumerate(GPU_INSTANCE_IDS)]
    for pod in node.pods:
        pod.gpus = tuple(i for i in pod.gpus if i != MIG_GPU)
    for n in range(3):
        node.pods.append(SimPod(
            name=f"embedder-{n}", namespace="inference", container="embedder",
            labels={"app": "embedder"}, mig_resource=MIG_RESOURCE,
            mig_devices=(node.gpus[MIG_GPU].mig_instances[n].uuid,),
            uid=f"6f1c0d2e-0000-4000-8000-0000000001{n:02d}"))
    return node


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("mig", "8 x H200, GPU 7 in MIG mode: 7 x 1g.18gb, three held by pods", mig_node),
)
