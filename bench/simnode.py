"""The simulated node the benchmarks run against, with its size as parameters.

The agent process and the simulator-services process (bench/sim_services.py) each build it
from the same `NodeShape`, so the fake NVML inside the agent and the fake engines, kubelet,
Kubernetes API and RDMA sysfs tree outside it describe one node. Values are functions of
elapsed time, so the two copies agree to within their start-up skew.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NodeShape:
    scenario: str = "healthy"
    gpus: int = 8  # 1 to 16
    engines: int | None = None  # None: the scenario's engines; N: N vLLM static targets
    rdma: int | None = None  # None: the scenario's NICs; N: N mlx5 devices (1 to 8)
    hostname: str = "sim-node-0"
    fault_delay: float = 30.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NodeShape:
        return cls(**json.loads(text))


def build_node(shape: NodeShape) -> Any:
    from kvscope.sim.scenarios import SimOptions, build_scenario

    node = build_scenario(shape.scenario, SimOptions(hostname=shape.hostname,
                                                     fault_delay=shape.fault_delay))
    if shape.gpus != len(node.gpus):
        _resize_gpus(node, shape.gpus)
    if shape.engines is not None:
        _vllm_targets(node, shape.engines)
    if shape.rdma is not None:
        _mlx5_devices(node, shape.rdma)
    return node


def _resize_gpus(node: Any, count: int) -> None:
    """`count` H100s on an NV18-style board; pods and KV flows keep the GPUs that exist."""
    from kvscope.sim.node import make_gpus
    from kvscope.sim.topology import kv_flows, nv18_mesh_8

    gpus = make_gpus(node.hostname, count)
    for gpu in gpus:  # a second board's bus ids: the HGX table has eight
        if gpu.index >= 8:
            bus = int(gpu.pci_bus_id.split(":")[1], 16) + 1
            gpu.pci_bus_id = f"00000000:{bus:02X}:00.0"
    node.gpus = gpus
    for pod in node.pods:
        pod.gpus = tuple(i for i in pod.gpus if i < count)
    for engine in node.engines:
        engine.gpus = tuple(i for i in getattr(engine, "gpus", ()) if i < count)
    half = count // 2
    topo = nv18_mesh_8(node)
    topo.flows = kv_flows(list(range(half)), list(range(half, 2 * half)))
    topo.hypernodes = node.topology.hypernodes
    node.topology = topo


def _vllm_targets(node: Any, count: int) -> None:
    """Replace the engines with `count` vLLM servers (LMCache on), each a static target."""
    from kvscope.sim.engines import Load, SimEngine

    node.engines = [SimEngine(f"vllm-{i}", "vllm", model="llama-3.1-8b",
                              features=frozenset({"lmcache"}),
                              load=Load(running=12, waiting=i % 3, kv_usage=0.44, req_rate=3.0))
                    for i in range(count)]
    for pod in node.pods:
        pod.annotations.pop("kvscope.io/scrape", None)


def _mlx5_devices(node: Any, count: int) -> None:
    """`count` mlx5 NICs: the board's four where the topology puts them, then more under the
    same root ports."""
    from kvscope.sim.rdma import SimRdmaDevice, mlx5_ib_devices

    devices = mlx5_ib_devices()
    for i in range(len(devices), count):
        base = devices[i % 4]
        bus = int(base.pci.rsplit(":", 2)[-2], 16) + 1 + i // 4
        root = base.pci.rsplit("/", 1)[0].rsplit(".", 1)[0]
        devices.append(dataclasses.replace(
            base, name=f"mlx5_{i}", pci=f"{root}.{i // 4}/0000:{bus:02x}:00.0",
            netdev=f"ibp{bus}s0", node_guid=f"b83f:d203:00a1:2c{40 + i:02x}", phase=0.8 * i))
    node.rdma.devices = devices[:count]
    assert isinstance(devices[0], SimRdmaDevice)
