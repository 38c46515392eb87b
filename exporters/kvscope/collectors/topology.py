"""Topology collector: GPU matrix, CPU/NUMA and NIC affinity, pod attribution, PD paths.

Tiers:

* static (default 300 s): the GPU-to-GPU matrix from NVML (published on the shared
  TopologyBoard), CPU and NUMA
  affinity, GPU-to-RDMA-NIC affinity from sysfs, the node's network placement (node labels, or
  Volcano HyperNodes). It also takes a first pod reading, so the GPU collector's first fast poll
  already carries pod labels.
* slow (default 30 s): pod attribution from the kubelet's pod-resources socket (the one
  writer of the shared PodAttribution, collectors/shared.py), pod metadata from the Kubernetes
  API, and the PD path analysis. Never per scrape.

Without a kubelet socket pod attribution is off (said once at info level; the socket is looked
for again on every refresh). Without an API server (not in a cluster, no URL) pods keep their
GPUs but have role "unknown" and no PD pairs. A failing kubelet or API read makes the slow tier
report itself down; GPU series keep the last known pod labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from prometheus_client.core import Metric

from kvscope.analysis.pd_paths import (
    GpuContainer,
    PdPair,
    PodMeta,
    attribute,
    gpu_containers,
    gpu_pod_labels,
    pd_pairs,
)
from kvscope.collectors.base import Collector, CollectorError, PollResult, Pool, Schedule, Tier
from kvscope.collectors.labels import gpu_labels, mig_device_pods
from kvscope.context import NodeContext
from kvscope.parsers.hypernodes import parse_hypernodes, switch_chain
from kvscope.parsers.kube import node_labels
from kvscope.render.families import Family, gauge, info, non_empty
from kvscope.sources.kube import KubeClient, KubeError
from kvscope.sources.nvml import NvmlError, NvmlUnavailable
from kvscope.sources.nvml.links import Device, NvlinkSource
from kvscope.sources.nvml.topology import (
    GpuAffinity,
    PairPath,
    cpu_ranges,
    node_topology,
    read_affinity,
    read_pairs,
)
from kvscope.sources.pci_sysfs import PciPlace, RdmaNic, pci_place, rdma_nics, relation
from kvscope.sources.pod_resources import PodResourcesClient, PodResourcesError

log = logging.getLogger(__name__)

HYPERNODES_PATH = "/apis/topology.volcano.sh/v1alpha1/hypernodes"


def _bool(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def _env_kind(value: str | None) -> str:
    """NVIDIA_VISIBLE_DEVICES summarised: the raw value (8 UUIDs) is too long for a label."""
    if value is None:
        return "unset"
    text = value.strip().lower()
    return text if text in ("all", "none", "void", "") else "list"


class TopologyCollector(Collector):
    name = "topology"

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._cfg = ctx.config.collectors.topology
        self._source = NvlinkSource(ctx.backends.nvml)
        self._devices: list[Device] = []
        self._pairs: list[PairPath] = []
        self._kubelet: PodResourcesClient | None = None
        self._kube: KubeClient | None = None
        self._kube_checked = False
        self._attribution: bool | None = None  # last said state, to log changes once
        self.containers: list[GpuContainer] = []
        self.pairs: list[PdPair] = []

    def schedules(self) -> dict[Tier, Schedule]:
        c = self._cfg.cadence
        t = self._cfg.timeout
        return {Tier.STATIC: Schedule(c.static, max(t, 10.0)), Tier.SLOW: Schedule(c.slow, t)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        if tier is Tier.STATIC:
            families = await self._poll_static(pool)
            if self._attribution is None:
                try:
                    errors = await self._refresh_pods(pool)  # labels for the first GPU poll
                except CollectorError as failure:
                    errors = [failure]
                for error in errors:
                    log.warning("topology: first pod reading failed: %s", error)
            return PollResult(families)
        return await self._poll_pods(pool)

    # ---- static: the hardware ------------------------------------------------------------

    async def _poll_static(self, pool: Pool) -> list[Metric]:
        families: list[Metric] = []
        self._devices = await self._read_gpus(pool)
        if self._devices:
            states = await pool.run(self._source.states)
            self._pairs = await pool.run(read_pairs, self._source.lib, self._devices, states)
            self._ctx.shared.board.publish(node_topology(self._devices, self._pairs))
            affinity = await pool.run(read_affinity, self._source.lib, self._devices,
                                      os.cpu_count() or 1)
            places = await pool.run(self._pci_places)
            nics = await pool.run(rdma_nics, self._ctx.config.paths.sysfs)
            families += self._matrix_families(affinity)
            families += self._nic_families(places, nics)
        families += await self._network_families()
        return families

    async def _read_gpus(self, pool: Pool) -> list[Device]:
        try:
            return await pool.run(self._source.open)
        except NvmlUnavailable as exc:
            log.debug("no GPU topology: %s", exc)
            return []
        except NvmlError as exc:
            raise CollectorError(f"nvml_{exc.name.removeprefix('nvml_')}",
                                 f"NVML: {exc}") from None

    def _pci_places(self) -> dict[int, PciPlace]:
        out = {}
        for dev in self._devices:
            place = pci_place(self._ctx.config.paths.sysfs, dev.identity.pci_bus_id)
            if place is not None:
                out[dev.identity.index] = place
        return out

    def _matrix_families(self, affinity: Sequence[GpuAffinity]) -> list[Metric]:
        matrix = info("kvscope_gpu_p2p_link_info",
                      "Path between two GPUs as nvidia-smi topo -m names it (link_type NV<n>, "
                      "PIX, PXB, PHB, NODE, SYS), NVLink count, PCIe path and NVLink P2P status. "
                      "NVML TopologyCommonAncestor, NvLinkRemotePciInfo, P2PStatus.")
        by_index = {d.identity.index: d.identity for d in self._devices}
        for pair in self._pairs:
            link = pair.link
            a, b = by_index.get(pair.a), by_index.get(pair.b)
            if link is None or a is None or b is None:
                continue
            matrix.add({**gpu_labels(self._ctx.config, a), "peer_gpu": str(b.index),
                        "peer_UUID": b.uuid, "link_type": link.label,
                        "nvlinks": str(pair.nvlinks),
                        "pcie": pair.pcie.value if pair.pcie is not None else "",
                        "nvlink_p2p": pair.nvlink_p2p or ""}, 1)
        cpus = info("kvscope_gpu_cpu_affinity_info",
                    "CPUs and NUMA node nearest the GPU (nvidia-smi topo -m's affinity columns). "
                    "NVML CpuAffinity, NumaNodeId.")
        for item in affinity:
            if item.cpus or item.numa_node is not None:
                cpus.add({**gpu_labels(self._ctx.config, item.gpu), "cpus": cpu_ranges(item.cpus),
                          "numa_node": "" if item.numa_node is None else str(item.numa_node)},
                         1)
        return non_empty(matrix, cpus)

    def _nic_families(self, places: dict[int, PciPlace], nics: Sequence[RdmaNic]) -> list[Metric]:
        family = info("kvscope_gpu_nic_affinity_info",
                      "PCIe path between a GPU and an RDMA NIC from the sysfs PCI tree: PIX/PXB "
                      "(GPUDirect RDMA through a PCIe switch: good), PHB, NODE, SYS (through the "
                      "CPU or across sockets: poor).")
        for dev in self._devices:
            place = places.get(dev.identity.index)
            if place is None:
                continue
            for nic in nics:
                family.add({**gpu_labels(self._ctx.config, dev.identity), "nic": nic.name,
                            "nic_pci_bus_id": nic.place.bus_id,
                            "path": relation(place, nic.place).value}, 1)
        return non_empty(family)

    # ---- Kubernetes API ------------------------------------------------------------------

    def _kube_client(self) -> KubeClient | None:
        if not self._kube_checked:
            self._kube_checked = True
            k = self._ctx.config.kubernetes
            if self._cfg.kubernetes_api:
                self._kube = KubeClient.from_settings(
                    k.api_url, self._ctx.config.node_name, token_file=k.token_file,
                    ca_file=k.ca_file, timeout=k.timeout)
            if self._kube is None:
                log.info("topology: no Kubernetes API (not in a cluster, no kubernetes.api_url):"
                         " no PD roles, pairs or node placement")
        return self._kube

    async def _network_families(self) -> list[Metric]:
        kube = self._kube_client()
        if kube is None:
            return []
        try:
            node = await kube.node()
        except KubeError as exc:
            log.warning("topology: cannot read node %s: %s", self._ctx.config.node_name, exc)
            return []
        labels = node_labels(node)
        family = info("kvscope_node_network_info",
                      "Where the node sits in the network: switch and switch_type from node "
                      "labels (collectors.topology.switch_label / switch_type_label), and "
                      "tier1..tierN, the chain of Volcano HyperNodes from the node's leaf up.")
        values = {"node": self._ctx.config.node_name,
                  "switch": labels.get(self._cfg.switch_label, ""),
                  "switch_type": labels.get(self._cfg.switch_type_label, ""),
                  "source": "labels"}
        chain = await self._hypernode_chain(kube, labels)
        if chain:
            values["source"] = "volcano"
            values.update({f"tier{tier}": name for tier, name in chain})
        if values["switch"] or values["switch_type"] or chain:
            family.add(values, 1)
        return non_empty(family)

    async def _hypernode_chain(self, kube: KubeClient,
                               labels: dict[str, str]) -> list[tuple[int, str]]:
        if not self._cfg.volcano_hypernodes:
            return []
        try:
            data = await kube.get(HYPERNODES_PATH)
        except KubeError as exc:
            # 404: Volcano's CRD is not installed, the normal case. Anything else is worth a line.
            (log.debug if exc.reason == "http_404" else log.warning)(
                "topology: no Volcano HyperNodes: %s", exc)
            return []
        items = data.get("items") if isinstance(data, dict) else None
        return switch_chain(parse_hypernodes(items or []), self._ctx.config.node_name, labels)

    async def _pod_metas(self) -> dict[tuple[str, str], PodMeta] | None:
        kube = self._kube_client()
        if kube is None:
            return None
        try:
            pods = await kube.node_pods()
        except KubeError as exc:
            raise CollectorError(f"kube_{exc.reason}", f"pod metadata: {exc}") from None
        return {(pod.namespace, pod.name): pod for pod in pods}

    # ---- slow: pods ----------------------------------------------------------------------

    def _kubelet_client(self) -> PodResourcesClient:
        if self._kubelet is None or self._kubelet.socket_path != self._cfg.pod_resources_socket:
            # The List deadline stays inside the tier's timeout, so a slow kubelet is reported
            # as a gRPC deadline, not as an abandoned poll that blocks the next one.
            self._kubelet = PodResourcesClient(
                self._cfg.pod_resources_socket, timeout=self._cfg.timeout * 0.75,
                max_message_bytes=self._cfg.pod_resources_max_message_bytes)
        return self._kubelet

    def _say_attribution(self, enabled: bool) -> None:
        if enabled != self._attribution:
            if enabled:
                log.info("topology: pod attribution on (%s)", self._cfg.pod_resources_socket)
            else:
                log.info("topology: pod attribution off: no kubelet pod-resources socket at %s",
                         self._cfg.pod_resources_socket)
        self._attribution = enabled

    async def _refresh_pods(self, pool: Pool) -> list[CollectorError]:
        """Re-read which pod holds which GPU. The kubelet is the source of the attribution: when
        it fails, this raises. The Kubernetes API only adds roles and groups: when it fails, the
        pods are kept with role unknown and its error is returned."""
        client = self._kubelet_client()
        if not await pool.run(client.available):
            self._say_attribution(False)
            self.containers, self.pairs = [], []
            self._publish({})
            return []
        self._say_attribution(True)
        try:
            devices = await pool.run(client.list)
        except PodResourcesError as exc:
            raise CollectorError(exc.reason, str(exc)) from None
        gpus = [d.identity for d in self._devices]
        allocation = attribute(devices, gpus, self._cfg.gpu_resource_names)
        # Whatever the API says, the kubelet's answer labels the GPU series.
        plain = gpu_containers(allocation, None, gpus, self._ctx.config.pd)
        # MIG devices (MIG-<uuid>) label the GPU-instance series (collectors/labels.py).
        self._ctx.shared.pods.publish({**gpu_pod_labels(plain, gpus), **mig_device_pods(devices)})
        errors: list[CollectorError] = []
        try:
            metas = await self._pod_metas()
        except CollectorError as exc:
            metas, errors = None, [exc]
        self.containers = gpu_containers(allocation, metas, gpus, self._ctx.config.pd)
        p2p = {(p.a, p.b): p.nvlink_p2p for p in self._pairs if p.nvlink_p2p is not None}
        self.pairs = pd_pairs(self.containers, self._ctx.shared.board.topology, p2p)
        self._ctx.shared.pods.publish_analysis(self.containers, self.pairs)
        return errors

    def _publish(self, by_device: dict[str, dict[str, str]]) -> None:
        self._ctx.shared.pods.publish(by_device)
        self._ctx.shared.pods.publish_analysis(self.containers, self.pairs)

    async def _poll_pods(self, pool: Pool) -> PollResult:
        errors = await self._refresh_pods(pool)
        enabled = gauge("kvscope_pod_attribution_enabled",
                        "1 when the kubelet pod-resources socket is there and GPUs are "
                        "attributed to pods; 0 when attribution is off.")
        enabled.add({}, 1 if self._attribution else 0)
        return PollResult([*non_empty(enabled), *self._pod_families(), *self._pair_families()],
                          errors)

    def _pod_families(self) -> list[Metric]:
        pods = info("kvscope_pod_gpu_info",
                    "GPU held by a pod's container (kubelet pod-resources), with the pod's PD "
                    "role (prefill, decode, both, other; unknown without the API) and PD group.")
        visibility = info("kvscope_pod_gpu_visibility_info",
                          "What a GPU container can see: privileged, host_ipc, "
                          "NVIDIA_VISIBLE_DEVICES (unset, all, none, list), explicit "
                          "CUDA_VISIBLE_DEVICES, and the GPU indices its processes can open.")
        by_index = {d.identity.index: d.identity for d in self._devices}
        for c in self.containers:
            base = {"pod": c.pod, "namespace": c.namespace, "container": c.container}
            for index in c.gpus:
                gpu = by_index.get(index)
                if gpu is not None:
                    pods.add({**base, "role": c.role, "pd_group": c.pd_group,
                              **gpu_labels(self._ctx.config, gpu)}, 1)
            if c.privileged is not None:
                visibility.add({**base, "privileged": _bool(c.privileged),
                                "host_ipc": _bool(c.host_ipc),
                                "nvidia_visible_devices": _env_kind(c.nvidia_visible_devices),
                                "cuda_visible_devices": "unset" if c.cuda_visible_devices is None
                                else "set",
                                "visible_gpus": ",".join(str(g) for g in c.visible)}, 1)
        return non_empty(pods, visibility)

    def _pair_families(self) -> list[Metric]:
        path = info("kvscope_pd_pair_path_info",
                    "Best physical path between a prefill pod's GPUs and a decode pod's GPUs of "
                    "one PD group on this node (NV<n>, PIX, PXB, PHB, NODE, SYS).")
        possible: Family = gauge(
            "kvscope_pd_pair_ipc_possible",
            "1 when the pair's containers can use that path for CUDA P2P/IPC (each sees the "
            "other's GPUs and they share an IPC namespace); 0 with the reason "
            "(peer_gpus_not_visible, no_shared_ipc_namespace, nvlink_p2p_unavailable).")
        for pair in self.pairs:
            base = {"namespace": pair.namespace, "pd_group": pair.pd_group,
                    "prefill_pod": pair.prefill, "decode_pod": pair.decode}
            path.add({**base, "path": pair.path.label if pair.path is not None else "unknown",
                      "prefill_gpus": ",".join(map(str, pair.prefill_gpus)),
                      "decode_gpus": ",".join(map(str, pair.decode_gpus))}, 1)
            possible.add({**base, "reason": pair.reason}, 1 if pair.ipc_possible else 0)
        return non_empty(path, possible)

    async def close(self) -> None:
        import asyncio

        if self._kubelet is not None:
            await asyncio.to_thread(self._kubelet.close)
        if self._kube is not None:
            await self._kube.close()
