"""Kubernetes API JSON into typed records: pods (for attribution and engine discovery), the node.

One reader for every caller, so the topology collector and engine discovery agree on what a pod
says. Pure and lenient: a field of the wrong type reads as absent, an object without a name is
skipped, and a reply that is not a list of objects at all is a `KubeFormatError` value, never an
exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ContainerPort:
    name: str
    port: int


@dataclass(frozen=True)
class Container:
    privileged: bool = False
    env: Mapping[str, str] = field(default_factory=dict)  # literal values only
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: Mapping[str, str]
    host_ipc: bool
    containers: Mapping[str, Container]  # by container name
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_name: str = ""  # spec.nodeName
    phase: str = ""  # status.phase
    pod_ip: str = ""  # status.podIP

    def ports(self) -> tuple[ContainerPort, ...]:
        return tuple(p for c in self.containers.values() for p in c.ports)


@dataclass(frozen=True)
class KubeFormatError:
    """The reply is not the object it should be; `reason` is a short label for errors_total."""

    reason: str
    message: str


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _dict(value).items()
            if isinstance(v, str | int | float | bool)}


def _env(items: Any) -> dict[str, str]:
    env = {}
    for item in items if isinstance(items, list) else []:
        # valueFrom (secrets, field refs) cannot be resolved here; only literal values count.
        if isinstance(item, dict) and isinstance(item.get("value"), str):
            env[str(item.get("name"))] = item["value"]
    return env


def _ports(items: Any) -> tuple[ContainerPort, ...]:
    ports = []
    for item in items if isinstance(items, list) else []:
        number = item.get("containerPort") if isinstance(item, dict) else None
        if isinstance(number, int) and not isinstance(number, bool):
            ports.append(ContainerPort(str(item.get("name") or ""), number))
    return tuple(ports)


def _container(obj: dict[str, Any]) -> Container:
    privileged = bool(_dict(obj.get("securityContext")).get("privileged"))
    return Container(privileged, _env(obj.get("env")), _ports(obj.get("ports")))


def parse_pod(obj: Any) -> Pod | None:
    """One Pod object; None for an object without a name."""
    meta, spec, status = (_dict(_dict(obj).get(k)) for k in ("metadata", "spec", "status"))
    name, namespace = meta.get("name"), meta.get("namespace", "default")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    containers = {c["name"]: _container(c) for c in spec.get("containers") or []
                  if isinstance(c, dict) and isinstance(c.get("name"), str)}
    return Pod(name, namespace, _str_map(meta.get("labels")), bool(spec.get("hostIPC")),
               containers, _str_map(meta.get("annotations")),
               _text(spec.get("nodeName")), _text(status.get("phase")),
               _text(status.get("podIP")))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_json(body: bytes | str) -> Any:
    """Decoded JSON, or a KubeFormatError."""
    try:
        return json.loads(body)
    except ValueError as exc:
        return KubeFormatError("decode", f"not JSON: {exc}")


def parse_pod_list(data: Any) -> list[Pod] | KubeFormatError:
    """A PodList's pods (raw JSON text or already decoded)."""
    if isinstance(data, bytes | str):
        data = parse_json(data)
        if isinstance(data, KubeFormatError):
            return data
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return KubeFormatError("decode", "pod list without items")
    return [pod for pod in map(parse_pod, items) if pod is not None]


def node_labels(data: Any) -> dict[str, str]:
    """A Node object's labels; {} when it has none or is not an object."""
    return _str_map(_dict(_dict(data).get("metadata")).get("labels"))
