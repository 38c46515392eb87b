"""The fake kubelet's gRPC server (imported only when it runs: grpcio costs ~9 MiB of RSS).

A fake kubelet pod-resources v1 server: real gRPC on a unix socket, answering List.

It serves the simulated node's pods with their GPUs as NVIDIA's device plugin reports them
(`nvidia.com/gpu`, GPU UUIDs), so kvscope's production client is what talks to it. `extra_pods`
pads the reply (tests use it to go past gRPC's 4 MiB default receive limit).
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from kvscope.sim.node import SimNode
from kvscope.sources.podresources import api_pb2, api_pb2_grpc

GPU_RESOURCE = "nvidia.com/gpu"


def list_reply(node: SimNode, extra_pods: int = 0) -> Any:
    reply = api_pb2.ListPodResourcesResponse()
    for pod in node.pods:
        item = reply.pod_resources.add(name=pod.name, namespace=pod.namespace)
        container = item.containers.add(name=pod.container)
        if pod.gpus:
            devices = container.devices.add(resource_name=GPU_RESOURCE)
            devices.device_ids.extend(node.gpus[i].uuid for i in pod.gpus if i < len(node.gpus))
        if pod.mig_devices:
            migs = container.devices.add(resource_name=pod.mig_resource)
            migs.device_ids.extend(pod.mig_devices)
    for n in range(extra_pods):
        # CPU-only pods as a busy node has hundreds of: no devices, a few exclusive CPUs.
        item = reply.pod_resources.add(name=f"batch-job-{n:06d}-{'x' * 40}", namespace="batch")
        item.containers.add(name="worker", cpu_ids=[n % 192, (n + 1) % 192])
    return reply


class _Lister(api_pb2_grpc.PodResourcesListerServicer):  # type: ignore[misc]
    def __init__(self, node: SimNode, extra_pods: int) -> None:
        self.node = node
        self.extra_pods = extra_pods
        self.calls = 0

    def List(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return list_reply(self.node, self.extra_pods)


class FakeKubelet:
    """Serves List for `node` on `socket_path` until stopped."""

    def __init__(self, node: SimNode, socket_path: Path, *, extra_pods: int = 0) -> None:
        self.socket_path = socket_path
        self.lister = _Lister(node, extra_pods)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self.lister, self._server)
        if self._server.add_insecure_port(f"unix://{socket_path}") == 0:
            raise OSError(f"cannot bind fake kubelet to {socket_path}")

    def start(self) -> FakeKubelet:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)


def start_kubelet_sync(node: SimNode, directory: Path, *, extra_pods: int = 0) -> FakeKubelet:
    return FakeKubelet(node, directory / "kubelet.sock", extra_pods=extra_pods).start()
