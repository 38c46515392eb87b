"""Doctor section: GPU topology, NVLink health, pods per GPU and PD pair paths.

Everything printed comes from the metrics the collectors just exported (the matrix, link state,
error counters), plus the topology collector's PD analysis for the details a metric label cannot
carry (which GPUs a container cannot see). A PD pair joined by NVLink whose containers cannot
use it is critical: KV cache then crawls over TCP while the monitoring looks healthy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from kvscope.analysis.pd_paths import (
    REASON_NO_SHARED_IPC,
    REASON_NOT_VISIBLE,
    REASON_P2P_UNAVAILABLE,
    GpuContainer,
    PdPair,
)
from kvscope.analysis.topology_model import P2PKind
from kvscope.doctor import SECTIONS, Finding, Section, Severity, Snapshot, samples

GOOD_NIC_PATHS = ("PIX", "PXB")

REMEDY_VISIBILITY = (
    "either (1) run both engine containers privileged and rebuild CUDA_VISIBLE_DEVICES from "
    "/proc/driver/nvidia/gpus/*/information (the node's GPU list, own GPUs first) so each process "
    "sees its peers' GPUs; or (2) put both roles' GPUs in one pod, or give both pods hostIPC "
    "and device visibility of the peer's GPUs. Then check that NVLink TX/RX counters of these "
    "GPUs move during KV transfer")
REMEDY_IPC = ("give both pods hostIPC: true (or run both roles in one pod) so CUDA IPC handles "
              "can be opened across the containers")
REMEDY_P2P = ("NVLink P2P is refused by the driver: on NVSwitch systems check that "
              "nvidia-fabricmanager is running (systemctl status nvidia-fabricmanager) and "
              "nvidia-smi -q shows the fabric state Completed")


def _gpus(indices: Sequence[int]) -> str:
    return ",".join(str(i) for i in indices) or "none"


def _matrix(snap: Snapshot) -> list[str]:
    cells: dict[tuple[int, int], str] = {}
    for labels, _ in samples(snap, "kvscope_gpu_p2p_link_info"):
        cells[(int(labels["gpu"]), int(labels["peer_gpu"]))] = labels["link_type"]
    nic_cells: dict[tuple[int, str], str] = {}
    for labels, _ in samples(snap, "kvscope_gpu_nic_affinity_info"):
        nic_cells[(int(labels["gpu"]), labels["nic"])] = labels["path"]
    affinity = {int(labels["gpu"]): (labels["cpus"], labels["numa_node"])
                for labels, _ in samples(snap, "kvscope_gpu_cpu_affinity_info")}
    gpus = sorted({a for a, _ in cells} | {b for _, b in cells} | set(affinity))
    if not gpus:
        return []
    nics = sorted({n for _, n in nic_cells})
    head = [f"GPU{g}" for g in gpus] + [f"NIC{i}" for i in range(len(nics))]
    lines = ["      " + "".join(f"{h:<7}" for h in head) + "CPU Affinity     NUMA Affinity"]
    for a in gpus:
        row = ["X" if a == b else cells.get((a, b), "?") for b in gpus]
        row += [nic_cells.get((a, n), "?") for n in nics]
        cpus, numa = affinity.get(a, ("", ""))
        lines.append(f"GPU{a:<3}" + "".join(f"{c:<7}" for c in row) + f"{cpus:<17}{numa}")
    if nics:
        lines.append("NIC legend: " + ", ".join(f"NIC{i}={n}" for i, n in enumerate(nics)))
    return lines


def _link_health(snap: Snapshot, section: Section) -> None:
    up: dict[int, dict[int, float]] = defaultdict(dict)
    for labels, value in samples(snap, "kvscope_nvlink_link_up"):
        up[int(labels["gpu"])][int(labels["link"])] = value
    errors: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in samples(snap, "kvscope_nvlink_errors_total"):
        errors[int(labels["gpu"])][labels["error"]] += value
    if not up:
        _link_totals_health(snap, errors, section)
        return
    section.lines.append("NVLink health (error counts since the driver loaded):")
    for gpu in sorted(up):
        links = up[gpu]
        down = sorted(link for link, v in links.items() if v == 0)
        errs = errors.get(gpu, {})
        err_text = " ".join(f"{k}={int(v)}" for k, v in sorted(errs.items()))
        section.lines.append(f"  GPU{gpu}: {len(links) - len(down)}/{len(links)} links up"
                             + (f" (down: {_gpus(down)})" if down else "")
                             + (f"  {err_text}" if err_text else ""))
        _gpu_link_findings(section, gpu, len(down), len(links), errs=errs,
                           which=f" (links {_gpus(down)})" if down else "")


def _pods(containers: Sequence[GpuContainer], section: Section) -> None:
    if not containers:
        return
    section.lines.append("Pods per GPU:")
    section.lines.append(f"  {'GPU':<5}{'namespace/pod/container':<44}{'role':<9}{'PD group':<16}"
                         "sees GPUs")
    rows = sorted((g, c) for c in containers for g in c.gpus)
    for gpu, c in rows:
        name = f"{c.namespace}/{c.pod}/{c.container}"
        section.lines.append(f"  {gpu:<5}{name:<44.44}{c.role:<9}{c.pd_group:<16.16}"
                             f"{_gpus(c.visible)}")
    for c in containers:
        if c.privileged and c.cuda_visible_devices is None and c.role in ("prefill", "decode"):
            section.findings.append(Finding(
                Severity.WARNING, f"{c.namespace}/{c.pod}/{c.container} is privileged without "
                f"CUDA_VISIBLE_DEVICES: it sees every GPU, so its cuda:0 is GPU 0, not its "
                f"allocated GPU {c.gpus[0] if c.gpus else '?'}",
                "rebuild CUDA_VISIBLE_DEVICES from /proc/driver/nvidia/gpus/*/information with "
                "the allocated GPUs first"))


def _pair_finding(pair: PdPair, containers: Sequence[GpuContainer]) -> Finding | None:
    where = (f"PD group {pair.pd_group}: {pair.prefill} (GPUs {_gpus(pair.prefill_gpus)}) and "
             f"{pair.decode} (GPUs {_gpus(pair.decode_gpus)})")
    path = pair.path.label if pair.path is not None else "unknown"
    if pair.nvlink_unusable:
        if pair.reason == REASON_NOT_VISIBLE:
            who = []
            for pod, missing in ((pair.prefill, pair.prefill_cannot_see),
                                 (pair.decode, pair.decode_cannot_see)):
                if missing:
                    sees = next((c.visible for c in containers if c.pod == pod), ())
                    who.append(f"{pod} sees GPUs {_gpus(sees)} only, not {_gpus(missing)}")
            return Finding(Severity.CRITICAL,
                           f"{where} are joined by {path} but cannot use it: {'; '.join(who)}. "
                           "NCCL/UCX cannot map the peer GPU and KV cache goes over TCP "
                           "(hundreds of MB/s instead of hundreds of GB/s); NVLink counters of "
                           "these GPUs stay flat", REMEDY_VISIBILITY)
        if pair.reason == REASON_NO_SHARED_IPC:
            return Finding(Severity.CRITICAL, f"{where} are joined by {path} but share no IPC "
                           "namespace (different pods, not both hostIPC)", REMEDY_IPC)
        if pair.reason == REASON_P2P_UNAVAILABLE:
            return Finding(Severity.CRITICAL, f"{where} are joined by {path} but NVLink P2P is "
                           "unavailable", REMEDY_P2P)
    if pair.path is not None and pair.path.kind is not P2PKind.NVLINK:
        return Finding(Severity.INFO, f"{where}: best path is {path} (no NVLink between them): "
                       "KV transfer is bound by PCIe P2P or the NIC",
                       "place both roles on NVLink-joined GPUs where the node has them")
    return None


def _pairs(pairs: Sequence[PdPair], containers: Sequence[GpuContainer],
           section: Section) -> None:
    if not pairs:
        return
    section.lines.append("PD pairs on this node:")
    for pair in pairs:
        verdict = "IPC ok" if pair.ipc_possible else f"IPC NOT possible ({pair.reason})"
        path = pair.path.label if pair.path is not None else "unknown"
        section.lines.append(f"  [{pair.pd_group}] {pair.prefill} -> {pair.decode}: "
                             f"path {path}, {verdict}")
        finding = _pair_finding(pair, containers)
        if finding is not None:
            section.findings.append(finding)


def _nic_findings(snap: Snapshot, section: Section) -> None:
    best: dict[str, tuple[str, str]] = {}
    order = [k.value for k in P2PKind]
    for labels, _ in samples(snap, "kvscope_gpu_nic_affinity_info"):
        gpu, path = labels["gpu"], labels["path"]
        if gpu not in best or order.index(path) < order.index(best[gpu][1]):
            best[gpu] = (labels["nic"], path)
    poor = sorted((g for g, (_, p) in best.items() if p not in GOOD_NIC_PATHS), key=int)
    if poor:
        section.findings.append(Finding(
            Severity.WARNING, f"GPUs {','.join(poor)} have no RDMA NIC below their PCIe switch "
            f"(nearest: {', '.join(f'GPU{g}->{best[g][0]} {best[g][1]}' for g in poor)}): "
            "GPUDirect RDMA traffic crosses the CPU",
            "pin cross-node KV transfer of these GPUs to the nearest NIC, or accept the lower "
            "GPUDirect bandwidth"))


def _link_totals_health(snap: Snapshot, errors: dict[int, dict[str, float]],
                        section: Section) -> None:
    """The same checks on the per-GPU totals a running agent exports by default (no per-link
    series): how many links are down is known, which ones is not (the index page reads these)."""
    links = {int(lb["gpu"]): v for lb, v in samples(snap, "kvscope_nvlink_links")}
    active = {int(lb["gpu"]): v for lb, v in samples(snap, "kvscope_nvlink_links_active")}
    if not links:
        section.lines.append("NVLink: none reported (PCIe-only GPUs, or NVML unavailable)")
        return
    section.lines.append("NVLink health, per GPU (error counts since the driver loaded):")
    for gpu in sorted(links):
        down = int(links[gpu] - active.get(gpu, links[gpu]))
        errs = errors.get(gpu, {})
        err_text = " ".join(f"{k}={int(v)}" for k, v in sorted(errs.items()))
        section.lines.append(f"  GPU{gpu}: {int(links[gpu]) - down}/{int(links[gpu])} links up"
                             + (f"  {err_text}" if err_text else ""))
        _gpu_link_findings(section, gpu, down, int(links[gpu]), which="", errs=errs)


def _gpu_link_findings(section: Section, gpu: int, down: int, total: int, *, which: str,
                       errs: dict[str, float]) -> None:
    """Down links and retraining, from per-link series or from the per-GPU totals alike;
    `which` names the down links where the per-link series say which ones."""
    if down > 0:
        section.findings.append(Finding(
            Severity.WARNING, f"GPU {gpu}: {down} of {total} NVLinks down{which}: NVLink "
            "bandwidth to every peer is reduced",
            f"check nvidia-smi nvlink --status -i {gpu}; drain the node and reset the "
            "GPU; persistent down links need the baseboard serviced"))
    if errs.get("recovery", 0) > 0:
        section.findings.append(Finding(
            Severity.WARNING, f"GPU {gpu}: {int(errs['recovery'])} NVLink recoveries "
            f"({int(errs.get('replay', 0))} replays): a link is retraining",
            "watch rate(kvscope_nvlink_errors_total{error=\"recovery\"}); if it keeps "
            "growing, drain the node and have the NVLink/NVSwitch path checked"))


REMEDY_SYS = (
    "schedule the pod's GPUs on one CPU socket (kubelet Topology Manager policy "
    "single-numa-node or restricted, or a GPU allocator that packs by NUMA node); "
    "or lower its tensor-parallel size so the group fits one socket")


REMEDY_MIXED = (
    "give the pod GPUs that are all NVLink-joined (one NVLink-bridge pair or one NVSwitch "
    "domain: a topology-aware GPU allocator, or a smaller tensor-parallel size); with a "
    "bridge pair per two GPUs, TP=2 on a pair beats TP=4 across pairs")


def _pod_gpu_paths(snap: Snapshot, section: Section) -> None:
    """Pods whose own GPUs meet over a slow path: their tensor-parallel traffic (all-reduce, and
    KV between ranks) runs at the speed of the slowest pair.

    - SYS: across CPU sockets (the SMP interconnect, often without P2P at all);
    - PCIe while other pairs of the same pod have NVLink (GPUs on different NVLink bridges): the
      "8 cards slower than 4" incident, where adding GPUs added a PCIe hop to every all-reduce.
    """
    links = {(lb.get("gpu"), lb.get("peer_gpu")): lb.get("link_type", "")
             for lb, _ in samples(snap, "kvscope_gpu_p2p_link_info")}
    pods: dict[tuple[str, str], set[str]] = defaultdict(set)
    for labels, _ in samples(snap, "kvscope_pod_gpu_info"):
        if labels.get("gpu", "").isdigit():
            pods[(labels.get("namespace", ""), labels.get("pod", ""))].add(labels["gpu"])
    for (namespace, pod), gpus in sorted(pods.items()):
        ordered = sorted(gpus, key=int)
        pairs = [(a, b, links.get((a, b), "")) for i, a in enumerate(ordered)
                 for b in ordered[i + 1:]]
        where = f"{namespace}/{pod}: its GPUs {_gpus([int(g) for g in ordered])}"
        sys_pairs = [(a, b) for a, b, kind in pairs if kind == P2PKind.SYS.value]
        if sys_pairs:
            section.findings.append(Finding(
                Severity.WARNING, f"{where} meet over SYS ({_pair_list(sys_pairs)}): "
                "tensor-parallel traffic crosses the CPU interconnect (a fraction of PCIe P2P "
                "bandwidth, and no P2P at all on many platforms)", REMEDY_SYS))
            continue
        nvlinked = [p for p in pairs if p[2].startswith(P2PKind.NVLINK.value)]
        pcie_pairs = [(a, b) for a, b, kind in pairs
                      if kind and not kind.startswith(P2PKind.NVLINK.value)]
        if nvlinked and pcie_pairs:
            section.findings.append(Finding(
                Severity.WARNING, f"{where} mix NVLink and PCIe: {_pair_list(pcie_pairs)} have "
                "no NVLink, so every all-reduce waits on PCIe (more GPUs can be slower than "
                "fewer)", REMEDY_MIXED))


def _pair_list(pairs: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"GPU{a}-GPU{b}" for a, b in pairs[:4])
    return shown + (f" and {len(pairs) - 4} more" if len(pairs) > 4 else "")


def _pairs_from_metrics(snap: Snapshot, section: Section) -> None:
    """PD pairs as the agent exports them (a remote read has no container analysis)."""
    ipc = {(lb.get("namespace", ""), lb.get("pd_group", ""), lb.get("prefill_pod", ""),
            lb.get("decode_pod", "")): (value, lb.get("reason", ""))
           for lb, value in samples(snap, "kvscope_pd_pair_ipc_possible")}
    paths = list(samples(snap, "kvscope_pd_pair_path_info"))
    if not paths:
        return
    section.lines.append("PD pairs on this node:")
    for labels, _ in paths:
        key = (labels.get("namespace", ""), labels.get("pd_group", ""),
               labels.get("prefill_pod", ""), labels.get("decode_pod", ""))
        possible, reason = ipc.get(key, (1.0, "ok"))
        path = labels.get("path", "unknown")
        verdict = "IPC ok" if possible else f"IPC NOT possible ({reason})"
        section.lines.append(f"  [{key[1]}] {key[2]} -> {key[3]}: path {path}, {verdict}")
        where = (f"PD group {key[1]}: {key[2]} (GPUs {labels.get('prefill_gpus', '?')}) and "
                 f"{key[3]} (GPUs {labels.get('decode_gpus', '?')})")
        if not possible and path.startswith(P2PKind.NVLINK.value):
            fix = {REASON_NOT_VISIBLE: REMEDY_VISIBILITY, REASON_NO_SHARED_IPC: REMEDY_IPC,
                   REASON_P2P_UNAVAILABLE: REMEDY_P2P}.get(reason, REMEDY_VISIBILITY)
            section.findings.append(Finding(
                Severity.CRITICAL, f"{where} are joined by {path} but cannot use it "
                f"({reason}): KV cache goes over TCP or PCIe while NVLink stays idle", fix))
        elif not path.startswith(P2PKind.NVLINK.value) and path != "unknown":
            section.findings.append(Finding(
                Severity.INFO, f"{where}: best path is {path} (no NVLink between them): KV "
                "transfer is bound by PCIe P2P or the NIC",
                "place both roles on NVLink-joined GPUs where the node has them"))


async def topology_section(snap: Snapshot) -> Section:
    section = Section("Topology, NVLink and PD paths")
    matrix = _matrix(snap)
    section.lines.extend(matrix or ["no GPU topology (NVML not available)"])
    _link_health(snap, section)
    _nic_findings(snap, section)
    enabled = [v for _, v in samples(snap, "kvscope_pod_attribution_enabled")]
    if enabled == [0.0]:
        section.findings.append(Finding(
            Severity.INFO, "pod attribution off: no kubelet pod-resources socket"
            + ("" if snap.remote else
               f" at {snap.config.collectors.topology.pod_resources_socket}"),
            "mount /var/lib/kubelet/pod-resources into the agent (read-only) to see pods per "
            "GPU and PD paths"))
    _pod_gpu_paths(snap, section)
    if snap.pd is not None:
        _pods(snap.pd.containers, section)
        _pairs(snap.pd.pairs, snap.pd.containers, section)
    elif snap.remote:
        _pairs_from_metrics(snap, section)
    else:
        section.lines.append("topology collector disabled: no pod or PD analysis")
    return section


SECTIONS.append(topology_section)
