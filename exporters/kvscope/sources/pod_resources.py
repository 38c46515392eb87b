"""kubelet pod-resources v1 client: which container holds which device (blocking).

One `List` over the kubelet's unix socket returns every pod's devices. The channel is kept
between refreshes (the collector refreshes on its own cadence, never per scrape) and dropped
after an error so the next refresh reconnects. The receive limit is raised above gRPC's 4 MiB
default, which nodes with many pods exceed (dcgm-exporter #509: 4,753,177 bytes).

grpcio is imported only when a socket exists, so nodes without a kubelet (and the NVLink pair
check script) run without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerDevices:
    pod: str
    namespace: str
    container: str
    resource: str  # e.g. nvidia.com/gpu
    device_ids: tuple[str, ...]  # GPU-<uuid>, nvidia<N>, MIG-<uuid>, <uuid>::<replica>


class PodResourcesError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PodResourcesClient:
    def __init__(self, socket_path: Path, *, timeout: float,
                 max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.socket_path = socket_path
        self._timeout = timeout
        self._max = max_message_bytes
        self._channel: Any = None
        self._stub: Any = None

    def available(self) -> bool:
        return self.socket_path.exists()

    def _connect(self) -> Any:
        if self._stub is None:
            try:
                import grpc

                from kvscope.sources.podresources import api_pb2_grpc
            except (ImportError, RuntimeError) as exc:  # RuntimeError: grpcio too old for stubs
                raise PodResourcesError("grpc_missing", f"gRPC unusable: {exc}") from None
            self._channel = grpc.insecure_channel(
                f"unix://{self.socket_path}",
                options=[("grpc.max_receive_message_length", self._max)])
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    def list(self) -> list[ContainerDevices]:
        """Every container's devices. Raises PodResourcesError with a short reason."""
        stub = self._connect()
        from kvscope.sources.podresources import api_pb2

        try:
            reply = stub.List(api_pb2.ListPodResourcesRequest(), timeout=self._timeout)
        except Exception as exc:
            self.close()
            code = getattr(exc, "code", None)
            name = code().name.lower() if callable(code) else type(exc).__name__
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise PodResourcesError(f"grpc_{name}", f"kubelet pod-resources List on "
                                    f"{self.socket_path}: {name}: {details}") from None
        out = []
        for pod in reply.pod_resources:
            for container in pod.containers:
                for devices in container.devices:
                    out.append(ContainerDevices(pod.name, pod.namespace, container.name,
                                                devices.resource_name,
                                                tuple(devices.device_ids)))
        return out

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None
