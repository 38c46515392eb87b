"""Kubernetes API reader: this node's pods and the node object, nothing cluster-wide.

In-cluster credentials (service-account token and CA) by default; `kubernetes.api_url` points it
at any API server, such as the simulator's fake one in tests and the demo. Pods are listed with a
field selector on spec.nodeName, so one agent per node never lists the whole cluster.

Every read is bounded while it is read: a body past `max_bytes` (64 MiB by default, the size of a
pod list of a few thousand pods) is refused as `too_large` before it is all in memory, and a
redirect is an error (`redirect`), never followed with the service account's token.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from kvscope.parsers.kube import KubeFormatError, Pod, parse_json, parse_pod_list

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
CHUNK = 256 * 1024


class KubeError(Exception):
    """The API could not be read; `reason` is a short label for errors_total."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def in_cluster_url() -> str | None:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{port}"


class KubeClient:
    def __init__(self, api_url: str, node_name: str, *, token_file: Path | None = None,
                 ca_file: Path | None = None, timeout: float = 3.0,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.api_url = api_url.rstrip("/")
        self.node_name = node_name
        self._token_file = token_file
        self._ca_file = ca_file
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, api_url: str | None, node_name: str, *, token_file: Path | None,
                      ca_file: Path | None, timeout: float,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> KubeClient | None:
        """A client, or None when there is no API to talk to (not in a cluster, no URL)."""
        url = api_url or in_cluster_url()
        if url is None:
            return None
        if api_url is None:  # in-cluster defaults
            token_file = token_file or SA_DIR / "token"
            ca_file = ca_file or SA_DIR / "ca.crt"
        return cls(url, node_name, token_file=token_file, ca_file=ca_file, timeout=timeout,
                   max_bytes=max_bytes)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token_file is not None:
            try:
                # Re-read each time: projected tokens rotate (kubelet refreshes them hourly).
                token = self._token_file.read_text().strip()
            except OSError as exc:
                raise KubeError("token", f"cannot read token {self._token_file}: "
                                         f"{exc.strerror}") from None
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.api_url.startswith("https"):
            return False
        ctx = ssl.create_default_context()
        if self._ca_file is not None:
            try:
                ctx.load_verify_locations(self._ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise KubeError("ca", f"cannot load CA {self._ca_file}: {exc}") from None
        return ctx

    async def read(self, path: str, params: dict[str, str] | None = None) -> bytes:
        """The body of `GET path`, at most `max_bytes` of it; raises KubeError."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self.api_url}{path}"
        try:
            async with self._session.get(url, params=params, headers=self._headers(),
                                         ssl=self._ssl(), allow_redirects=False) as resp:
                if 300 <= resp.status < 400:
                    raise KubeError("redirect", f"GET {path}: HTTP {resp.status} redirect "
                                                "(not followed)")
                if resp.status != 200:
                    raise KubeError(f"http_{resp.status}", f"GET {path}: HTTP {resp.status}")
                return await self._bounded_body(path, resp)
        except TimeoutError:
            raise KubeError("timeout", f"GET {path}: timed out") from None
        except aiohttp.ClientError as exc:
            raise KubeError("connect", f"GET {path}: {exc}") from None

    async def _bounded_body(self, path: str, resp: aiohttp.ClientResponse) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > self._max_bytes:
            raise KubeError("too_large", f"GET {path}: Content-Length {declared} > "
                                         f"{self._max_bytes} bytes")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(CHUNK):
            body += chunk
            if len(body) > self._max_bytes:
                raise KubeError("too_large", f"GET {path}: body over {self._max_bytes} bytes")
        return bytes(body)

    async def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        """`GET path` decoded from JSON; raises KubeError."""
        data = parse_json(await self.read(path, params))
        if isinstance(data, KubeFormatError):
            raise KubeError(data.reason, f"GET {path}: {data.message}")
        return data

    async def node_pods(self) -> list[Pod]:
        """This node's pods (a field selector on spec.nodeName), parsed."""
        body = await self.read("/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.node_name}"})
        pods = parse_pod_list(body)
        if isinstance(pods, KubeFormatError):
            raise KubeError(pods.reason, f"GET /api/v1/pods: {pods.message}")
        return pods

    async def node(self) -> dict[str, Any]:
        data = await self.get(f"/api/v1/nodes/{self.node_name}")
        if not isinstance(data, dict):
            raise KubeError("decode", "node is not an object")
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
