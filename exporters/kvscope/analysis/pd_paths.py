"""Pod attribution and PD path analysis: pure functions over kubelet, API and NVML facts.

The topology collector gathers the facts (kubelet pod-resources, pod objects, the GPU matrix);
this module decides, without any I/O:

* which GPUs each container holds (`attribute`), from device ids as the device plugin reports
  them: `GPU-<uuid>` (NVIDIA's plugin), `nvidia<N>` (GKE's), `<uuid>::<replica>` (time-slicing
  replicas). MIG devices (`MIG-...`) are not attributed yet: their series are not exported.
* which GPUs a container's processes can open (`visible_gpus`);
* for every prefill/decode pair of one PD group, the best physical path between their GPU sets
  and whether the two containers can use it for CUDA P2P/IPC (`pd_pairs`).

Visibility rules (what the NVIDIA container runtime and CUDA do):

* unprivileged: the device plugin's allocation decides; it overrides any NVIDIA_VISIBLE_DEVICES
  in the spec. A container that requests no GPU but sets NVIDIA_VISIBLE_DEVICES=all sees every
  GPU (a known bypass of the plugin);
* privileged: every /dev/nvidia* node is present, so every GPU is visible;
* an explicit CUDA_VISIBLE_DEVICES then narrows that set: UUIDs, or indices into it. CUDA stops
  at the first entry it cannot resolve, and so do we.

IPC verdict for a pair: each container must see the other's GPUs (NCCL and UCX map a peer's
GPU by bus id and fall back to TCP/sockets when it is not visible: the NVLink-bypass incident),
and the two must share an IPC namespace for CUDA IPC handles: same pod, both hostIPC, or both
privileged (the incident's field fix was privileged containers with CUDA_VISIBLE_DEVICES rebuilt
from /proc/driver/nvidia/gpus/*/information, and it worked).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvscope.analysis.pd_roles import DECODE, OTHER, PREFILL, UNKNOWN, label_role
from kvscope.analysis.topology_model import NodeTopology, P2PKind, P2PLink
from kvscope.config import PdSettings
from kvscope.parsers.kube import Container, Pod, parse_pod
from kvscope.sources.nvml import GpuIdentity
from kvscope.sources.pod_resources import ContainerDevices

ROLE_PREFILL = PREFILL
ROLE_DECODE = DECODE
ROLE_OTHER = OTHER
ROLE_UNKNOWN = UNKNOWN  # no pod metadata (Kubernetes API off or unreachable)

REASON_OK = "ok"
REASON_NOT_VISIBLE = "peer_gpus_not_visible"
REASON_NO_SHARED_IPC = "no_shared_ipc_namespace"
REASON_P2P_UNAVAILABLE = "nvlink_p2p_unavailable"

_NVIDIA_N = re.compile(r"^nvidia(\d+)$")
ContainerKey = tuple[str, str, str]  # namespace, pod, container


# The pod facts this analysis reads come from the one Kubernetes JSON reader.
ContainerMeta = Container
PodMeta = Pod


@dataclass(frozen=True)
class GpuContainer:
    namespace: str
    pod: str
    container: str
    gpus: tuple[int, ...]  # allocated by the device plugin
    role: str
    pd_group: str
    visible: tuple[int, ...]  # GPUs its processes can open; == gpus when metadata is unknown
    privileged: bool | None = None
    host_ipc: bool | None = None
    nvidia_visible_devices: str | None = None
    cuda_visible_devices: str | None = None

    @property
    def key(self) -> ContainerKey:
        return self.namespace, self.pod, self.container


@dataclass(frozen=True)
class PdPair:
    namespace: str
    pd_group: str
    prefill: str  # pod name
    decode: str
    prefill_gpus: tuple[int, ...]
    decode_gpus: tuple[int, ...]
    path: P2PLink | None
    ipc_possible: bool
    reason: str
    prefill_cannot_see: tuple[int, ...] = ()  # decode GPUs invisible to the prefill container
    decode_cannot_see: tuple[int, ...] = ()

    @property
    def nvlink_unusable(self) -> bool:
        return self.path is not None and self.path.kind is P2PKind.NVLINK and not self.ipc_possible


# ---- pod metadata from the Kubernetes API ---------------------------------------------------


def pod_meta(obj: Mapping[str, Any]) -> PodMeta | None:
    """The fields of a Pod object this analysis needs; None for an object without a name."""
    return parse_pod(obj)


def role_and_group(labels: Mapping[str, str], pd: PdSettings) -> tuple[str, str]:
    """PD role (prefill, decode, both; other without a role label: analysis/pd_roles.py) and
    PD group from the first matching configured label."""
    role = label_role(labels, pd) or ROLE_OTHER
    group = next((labels[k] for k in pd.group_labels if labels.get(k)), "")
    return role, group


# ---- attribution -----------------------------------------------------------------------------


def device_index(device_id: str, gpus: Sequence[GpuIdentity]) -> int | None:
    """The node GPU index a device-plugin id names, or None (MIG, unknown)."""
    ident = device_id.split("::", 1)[0]  # time-slicing / MPS replicas: <uuid>::<n>
    for gpu in gpus:
        if gpu.uuid == ident:
            return gpu.index
    match = _NVIDIA_N.match(ident)
    if match:
        minor = int(match.group(1))
        for gpu in gpus:
            if gpu.minor == minor:
                return gpu.index
    return None


def attribute(devices: Iterable[ContainerDevices], gpus: Sequence[GpuIdentity],
              resource_names: Iterable[str]) -> dict[ContainerKey, tuple[int, ...]]:
    """(namespace, pod, container) -> GPU indices, for whole-GPU resources only."""
    wanted = set(resource_names)
    out: dict[ContainerKey, set[int]] = {}
    for d in devices:
        if d.resource not in wanted:
            continue
        for device_id in d.device_ids:
            index = device_index(device_id, gpus)
            if index is not None:
                out.setdefault((d.namespace, d.pod, d.container), set()).add(index)
    return {k: tuple(sorted(v)) for k, v in sorted(out.items())}


def gpu_pod_labels(containers: Iterable[GpuContainer],
                   gpus: Sequence[GpuIdentity]) -> dict[str, dict[str, str]]:
    """UUID -> {pod, namespace, container} for the GPU collector's labels.

    A GPU shared by several containers (time-slicing) is labelled with the first by namespace,
    pod and container name, so its series keep one stable identity (dcgm-exporter without
    --kubernetes-virtual-gpus also keeps a single owner).
    """
    by_index = {g.index: g.uuid for g in gpus}
    out: dict[str, dict[str, str]] = {}
    for c in sorted(containers, key=lambda c: c.key):
        for index in c.gpus:
            uuid = by_index.get(index)
            if uuid and uuid not in out:
                out[uuid] = {"pod": c.pod, "namespace": c.namespace, "container": c.container}
    return out


# ---- visibility ------------------------------------------------------------------------------


def _resolve_list(text: str, base: Sequence[int],
                  uuids: Mapping[str, int]) -> tuple[int, ...]:
    out: list[int] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            break
        if entry.isdigit():
            pos = int(entry)
            if pos >= len(base):
                break  # CUDA stops enumerating at the first bad ordinal
            out.append(base[pos])
            continue
        index = next((i for u, i in uuids.items() if u == entry or u.startswith(entry)), None)
        if index is None or index not in base:
            break
        out.append(index)
    return tuple(dict.fromkeys(out))


def visible_gpus(allocated: Sequence[int], all_gpus: Sequence[GpuIdentity], *,
                 privileged: bool, env: Mapping[str, str]) -> tuple[int, ...]:
    """GPU indices a container's processes can open (see the module docstring for the rules)."""
    every = sorted(g.index for g in all_gpus)
    uuids = {g.uuid: g.index for g in all_gpus}
    if privileged:
        base = every
    elif allocated:
        base = sorted(allocated)
    else:
        nvd = env.get("NVIDIA_VISIBLE_DEVICES", "").strip().lower()
        base = every if nvd == "all" else []
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return tuple(base)
    return _resolve_list(cvd, base, uuids)


def gpu_containers(allocation: Mapping[ContainerKey, tuple[int, ...]],
                   metas: Mapping[tuple[str, str], PodMeta] | None,
                   gpus: Sequence[GpuIdentity], pd: PdSettings) -> list[GpuContainer]:
    """Join the kubelet's allocation with pod metadata (None: the API is not available)."""
    out = []
    for (namespace, pod, container), indices in allocation.items():
        meta = metas.get((namespace, pod)) if metas is not None else None
        if meta is None:
            out.append(GpuContainer(namespace, pod, container, indices, ROLE_UNKNOWN, "",
                                    indices))
            continue
        role, group = role_and_group(meta.labels, pd)
        cmeta = meta.containers.get(container, ContainerMeta())
        out.append(GpuContainer(
            namespace, pod, container, indices, role, group,
            visible_gpus(indices, gpus, privileged=cmeta.privileged, env=cmeta.env),
            privileged=cmeta.privileged, host_ipc=meta.host_ipc,
            nvidia_visible_devices=cmeta.env.get("NVIDIA_VISIBLE_DEVICES"),
            cuda_visible_devices=cmeta.env.get("CUDA_VISIBLE_DEVICES")))
    return out


# ---- PD pairs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PodView:
    namespace: str
    pod: str
    role: str
    group: str
    gpus: tuple[int, ...]
    visible: frozenset[int]
    host_ipc: bool
    privileged: bool


def _pod_views(containers: Iterable[GpuContainer]) -> list[_PodView]:
    """One view per pod: a pod's GPU containers pooled (engines run one GPU container)."""
    pods: dict[tuple[str, str], list[GpuContainer]] = {}
    for c in containers:
        pods.setdefault((c.namespace, c.pod), []).append(c)
    views = []
    for (namespace, pod), members in sorted(pods.items()):
        first = members[0]
        views.append(_PodView(
            namespace, pod, first.role, first.pd_group,
            tuple(sorted({g for m in members for g in m.gpus})),
            frozenset(g for m in members for g in m.visible),
            bool(first.host_ipc), all(bool(m.privileged) for m in members)))
    return views


def pd_pairs(containers: Iterable[GpuContainer], topology: NodeTopology | None,
             nvlink_p2p: Mapping[tuple[int, int], str] | None = None) -> list[PdPair]:
    """Every prefill/decode pod pair of one PD group (same namespace) on this node."""
    views = _pod_views(containers)
    pairs = []
    for p in views:
        if p.role != ROLE_PREFILL or not p.group:
            continue
        for d in views:
            if d.role != ROLE_DECODE or d.group != p.group or d.namespace != p.namespace:
                continue
            pairs.append(_pair(p, d, topology, nvlink_p2p or {}))
    return pairs


def _best(topology: NodeTopology | None, a: Sequence[int],
          b: Sequence[int]) -> tuple[P2PLink | None, tuple[int, int] | None]:
    if topology is None:
        return None, None
    best: P2PLink | None = None
    where: tuple[int, int] | None = None
    for x in a:
        for y in b:
            link = topology.link(x, y)
            if link is not None and (best is None or link.better_than(best)):
                best, where = link, (x, y)
    return best, where


def _pair(p: _PodView, d: _PodView, topology: NodeTopology | None,
          nvlink_p2p: Mapping[tuple[int, int], str]) -> PdPair:
    path, where = _best(topology, p.gpus, d.gpus)
    p_missing = tuple(g for g in d.gpus if g not in p.visible)
    d_missing = tuple(g for g in p.gpus if g not in d.visible)
    shared_ipc = (p.host_ipc and d.host_ipc) or (p.privileged and d.privileged)
    if p_missing or d_missing:
        ok, reason = False, REASON_NOT_VISIBLE
    elif not shared_ipc:
        ok, reason = False, REASON_NO_SHARED_IPC
    elif (path is not None and path.kind is P2PKind.NVLINK and where is not None
          and nvlink_p2p.get(where, "ok") != "ok"):
        ok, reason = False, REASON_P2P_UNAVAILABLE
    else:
        ok, reason = True, REASON_OK
    return PdPair(p.namespace, p.group, p.pod, d.pod, p.gpus, d.gpus, path, ok, reason,
                  p_missing, d_missing)
