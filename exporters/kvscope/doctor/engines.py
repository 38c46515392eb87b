"""Doctor section: inference engines, their KV cache, queues and KV transfer, and the path the
KV cache takes between prefill and decode.

Everything comes from the normalized `kvscope_engine_*` series (so it reads the same from this
node and from a remote agent), joined with the topology series: `kvscope_pd_pair_path_info`
names the path between a PD pair's GPUs on this node, `kvscope_pod_gpu_info` and
`kvscope_gpu_nic_affinity_info` the NICs a pod's KV leaves by when its peer is elsewhere.

Critical: an engine that does not answer, a KV cache that is full (new requests queue and running
ones are preempted), and a KV-transfer backlog (requests parked on prefill until their KV is
sent, or on decode until it arrives). Warnings: a filling KV cache, a scheduling backlog, a
bootstrap backlog, failed transfers, a transfer speed far below the path's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from kvscope.analysis.topology_model import P2PKind
from kvscope.doctor import Finding, Labels, Section, Severity, Snapshot, samples

P = "kvscope_engine_"
KV_FULL = 0.98  # usage at which the engine must preempt or refuse: critical
KV_HIGH = 0.90
QUEUE_BACKLOG = 32  # waiting requests, and more than are running
PD_BACKLOG = 16  # requests parked in one PD stage
SLOW_BYTES_PER_SECOND = 2e9  # average per-transfer speed below which KV transfer is slow

DOWN_FIX = {
    "connect": "the engine process is gone or listens elsewhere: check the pod (kubectl describe "
               "pod, its restarts and last log lines) and the metrics port annotation",
    "timeout": "the engine accepts connections but does not answer /metrics in time: it is hung "
               "or its HTTP server is starved (check the engine's CPU and its log)",
    "reset": "the engine drops connections: it is restarting or crashing; read its log",
    "unknown_engine": "the target answers but with no engine's metrics: wrong port or path "
                      "(kvscope.io/port, kvscope.io/path), or metrics are off in the engine "
                      "(SGLang --enable-metrics)",
    "parse": "the target answers with something that is not Prometheus text: wrong port or path",
    "redirect": "the target answers with a redirect, which kvscope never follows (it could point "
                "the agent anywhere): point the target or the kvscope.io/path annotation at the "
                "final /metrics URL",
    "too_large": "the exposition is larger than collectors.engines.max_response_bytes: raise "
                 "the limit, or find the label that multiplies the engine's series",
}


@dataclass
class EngineRow:
    """One target: its identity and the facts the findings need."""

    labels: Labels
    up: bool
    reason: str
    values: dict[str, float] = field(default_factory=dict)
    queues: dict[str, float] = field(default_factory=dict)
    failures: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        pod = self.labels.get("pod", "")
        ns = self.labels.get("namespace", "")
        return f"{ns}/{pod}" if pod else self.labels.get("instance", "?")

    @property
    def role(self) -> str:
        return self.labels.get("role", "both")


def _key(labels: Labels) -> tuple[str, str]:
    return labels.get("instance", ""), labels.get("engine", "")


def _rows(snap: Snapshot) -> list[EngineRow]:
    rows: dict[tuple[str, str], EngineRow] = {}
    for labels, value in samples(snap, P + "up"):
        rows[_key(labels)] = EngineRow(labels, value == 1.0, labels.get("reason", ""))
    # An instance serves several engines (vLLM + LMCache): the primary one carries `up`.
    by_instance = {k[0]: r for k, r in rows.items()}
    for family in ("kv_cache_usage_ratio", "requests_running", "requests_waiting",
                   "kv_transfer_bytes_total", "kv_transfer_seconds_total",
                   "kv_transfer_last_bytes_per_second", "preemptions_total",
                   "kv_cache_capacity_tokens"):
        for labels, value in samples(snap, P + family):
            row = rows.get(_key(labels))
            if row is not None:  # one series per target and family
                row.values[family] = value
                continue
            # A secondary engine (LMCache in a vLLM pod, vLLM behind Dynamo) fills only what
            # the primary one lacks: the primary's own figure wins.
            row = by_instance.get(labels.get("instance", ""))
            if row is not None:
                row.values.setdefault(family, value)
    for labels, value in samples(snap, P + "pd_queue_requests"):
        row = rows.get(_key(labels))
        if row is not None:
            row.queues[labels.get("stage", "")] = value
    for labels, value in samples(snap, P + "kv_transfer_failures_total"):
        row = rows.get(_key(labels))
        if row is not None and value > 0:
            row.failures[labels.get("kind", "")] = value
    return sorted(rows.values(), key=lambda r: (r.role, r.name))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@dataclass(frozen=True)
class Rates:
    """The snapshot before this one (`kvscope doctor --window`), to turn totals into rates."""

    rows: dict[tuple[str, str], EngineRow]
    window: float

    def before(self, row: EngineRow) -> EngineRow | None:
        return self.rows.get(_key(row.labels))


def _unchanged(rates: Rates, row: EngineRow) -> bool:
    before = rates.before(row)
    return before is not None and before.values == row.values


def _speed(row: EngineRow, rates: Rates | None) -> tuple[float, str] | None:
    """(bytes per second of one transfer, over what): over the window when transfers happened
    in it, else the last-transfer gauge, else the average since start."""
    before = rates.before(row) if rates is not None else None
    if rates is not None and before is not None:
        moved = row.values.get("kv_transfer_bytes_total", 0.0) - \
            before.values.get("kv_transfer_bytes_total", 0.0)
        took = row.values.get("kv_transfer_seconds_total", 0.0) - \
            before.values.get("kv_transfer_seconds_total", 0.0)
        if moved > 0 and took > 0:
            return moved / took, f"over the last {rates.window:g} s"
    last = row.values.get("kv_transfer_last_bytes_per_second")
    if last:
        return last, "last transfer"
    moved = row.values.get("kv_transfer_bytes_total", 0.0)
    took = row.values.get("kv_transfer_seconds_total", 0.0)
    return (moved / took, "average since start") if moved and took else None


def _table(rows: list[EngineRow], rates: Rates | None, section: Section) -> None:
    section.lines.append(f"{'engine':<9}{'role':<9}{'target':<36}{'state':<16}{'KV':>5}"
                         f"{'run':>6}{'wait':>6}  PD queues / KV transfer")
    for row in rows:
        state = "up" if row.up else f"DOWN ({row.reason})"
        queues = " ".join(f"{k}={v:.0f}" for k, v in sorted(row.queues.items()) if v)
        speed = _speed(row, rates)
        xfer = f"xfer {speed[0] / 1e9:.2f} GB/s ({speed[1]})" if speed else ""
        extra = " ".join(x for x in (queues, xfer) if x)
        section.lines.append(
            f"{row.labels.get('engine', ''):<9}{row.role:<9}{row.name:<36.36}{state:<16.16}"
            f"{_pct(row.values.get('kv_cache_usage_ratio')):>5}"
            f"{_num(row.values.get('requests_running')):>6}"
            f"{_num(row.values.get('requests_waiting')):>6}  {extra or '-'}")


def _down(rows: list[EngineRow], section: Section) -> None:
    for row in rows:
        if row.up:
            continue
        pd = " A PD pair loses this side: its peer's requests queue or fail" \
            if row.role in ("prefill", "decode") else ""
        section.findings.append(Finding(
            Severity.CRITICAL, f"{row.labels.get('engine') or 'engine'} {row.name} ({row.role}) "
            f"is down: {row.reason or 'no answer'} at {row.labels.get('instance', '?')}.{pd}",
            DOWN_FIX.get(row.reason, "read the engine's log; `kvscope collect` shows the scrape "
                         "error in kvscope_engine_scrape_errors_total")))


def _kv_pressure(rows: list[EngineRow], section: Section) -> None:
    for row in rows:
        usage = row.values.get("kv_cache_usage_ratio")
        if usage is None or usage < KV_HIGH:
            continue
        waiting = row.values.get("requests_waiting", 0.0)
        preempted = row.values.get("preemptions_total", 0.0)
        critical = usage >= KV_FULL
        section.findings.append(Finding(
            Severity.CRITICAL if critical else Severity.WARNING,
            f"{row.name} ({row.role}): KV cache {usage:.1%} full, {waiting:.0f} requests "
            f"waiting, {preempted:.0f} preempted/retracted since start"
            + (": new requests queue and running ones are evicted and recomputed" if critical
               else ": close to the point where requests queue"),
            "give the engine more KV memory (--mem-fraction-static / --gpu-memory-utilization), "
            "cap concurrency (--max-running-requests / --max-num-seqs) or add decode replicas; "
            "on decode check that finished requests free their KV (a leak grows without load)"))


def _queues(rows: list[EngineRow], section: Section) -> None:
    for row in rows:
        waiting = row.values.get("requests_waiting", 0.0)
        running = row.values.get("requests_running", 0.0)
        if waiting >= QUEUE_BACKLOG and waiting > running:
            section.findings.append(Finding(
                Severity.WARNING, f"{row.name} ({row.role}): {waiting:.0f} requests waiting for "
                f"{running:.0f} running: the engine is saturated and TTFT grows with the queue",
                "add replicas of this role or shed load at the router; if the KV cache is not "
                "full, raise the batch limits"))
        bootstrap = row.queues.get("bootstrap", 0.0)
        if bootstrap >= PD_BACKLOG:
            section.findings.append(Finding(
                Severity.WARNING, f"{row.name} ({row.role}): {bootstrap:.0f} requests in the PD "
                "bootstrap queue: prefill waits for decode to accept (handshake and KV "
                "pre-allocation)",
                "check that the decode side is up and has free KV cache; a bootstrap that "
                "never completes points at the transfer backend's connection setup (RDMA CM, "
                "QP limits: see the RDMA section)"))


def _pods_gpus(snap: Snapshot) -> dict[str, list[int]]:
    gpus: dict[str, list[int]] = defaultdict(list)
    for labels, _ in samples(snap, "kvscope_pod_gpu_info"):
        if labels.get("gpu", "").isdigit():
            gpus[labels.get("pod", "")].append(int(labels["gpu"]))
    return {pod: sorted(g) for pod, g in gpus.items()}


def _path_text(snap: Snapshot, rows: list[EngineRow]) -> tuple[str, bool]:
    """(the likely KV path in words, whether it is NVLink) for the PD pairs behind `rows`."""
    pods = {r.labels.get("pod", "") for r in rows} - {""}
    for labels, _ in samples(snap, "kvscope_pd_pair_path_info"):
        if {labels.get("prefill_pod"), labels.get("decode_pod")} & pods:
            path = labels.get("path", "unknown")
            return (f"{labels.get('prefill_pod')} (GPUs {labels.get('prefill_gpus')}) -> "
                    f"{labels.get('decode_pod')} (GPUs {labels.get('decode_gpus')}) over {path} "
                    "on this node", path.startswith(P2PKind.NVLINK.value))
    nics: dict[str, str] = {}
    gpus = _pods_gpus(snap)
    order = [k.value for k in P2PKind]
    for labels, _ in samples(snap, "kvscope_gpu_nic_affinity_info"):
        gpu, path = labels.get("gpu", ""), labels.get("path", "SYS")
        best = nics.get(gpu)
        if path in order and (best is None or order.index(path) < order.index(best.split()[1])):
            nics[gpu] = f"{labels.get('nic', '?')} {path}"
    for pod in sorted(pods):
        own = [nics[str(g)] for g in gpus.get(pod, []) if str(g) in nics]
        if own:
            return (f"{pod}'s KV leaves the node by its nearest NICs ({', '.join(own)}); the "
                    "peer is on another node", False)
    return "path unknown (no PD pair or pod attribution on this node)", False


def _transfer(snap: Snapshot, rows: list[EngineRow], rates: Rates | None,
              section: Section) -> None:
    stuck = [(r, stage, n) for r in rows for stage, n in sorted(r.queues.items())
             if stage in ("inflight", "transfer", "host_receive") or stage.startswith("kv_fetch")
             if n >= PD_BACKLOG]
    if stuck:
        what = "; ".join(f"{n:.0f} in {stage} on {r.name} ({r.role})" for r, stage, n in stuck)
        path, nvlink = _path_text(snap, [r for r, _, _ in stuck])
        speeds = [s for r in rows if (s := _speed(r, rates))]
        slowest = min(speeds) if speeds else None
        average = (f"; transfers ran at {slowest[0] / 1e9:.2f} GB/s ({slowest[1]})"
                   if slowest else "")
        hint = ("NVLink moves hundreds of GB/s: a backlog over it means the transfer backend "
                "does not use it (check that the NVLink counters of these GPUs move, and the "
                "Topology section for IPC/visibility) or the engines wait on each other"
                if nvlink else
                "check the NICs on that path (RDMA section: port rate, state, drops) and that "
                "the transfer backend uses RDMA, not TCP")
        section.findings.append(Finding(
            Severity.CRITICAL, f"KV transfer backlog: {what}{average}. Likely path: {path}", hint))
    for row in rows:
        speed = _speed(row, rates)
        if speed is not None and speed[0] < SLOW_BYTES_PER_SECOND and not stuck:
            path, _ = _path_text(snap, [row])
            section.findings.append(Finding(
                Severity.WARNING, f"{row.name} ({row.role}): KV transfers run at "
                f"{speed[0] / 1e9:.2f} GB/s ({speed[1]}). Likely path: {path}",
                "compare with the path's bandwidth (NVLink: hundreds of GB/s, a 200 Gb/s NIC: "
                "25 GB/s); a TCP fallback runs at well under 1 GB/s"))
        if row.failures:
            _failures(snap, row, rates, section)


def _failures(snap: Snapshot, row: EngineRow, rates: Rates | None, section: Section) -> None:
    """Failed transfers: new ones (in the window, or since start without one) are a warning;
    only old ones, with none in the window, are info."""
    before = rates.before(row) if rates is not None else None
    severity, counts, when = Severity.WARNING, row.failures, "since start"
    if rates is not None and before is not None:
        fresh = {k: v - before.failures.get(k, 0.0) for k, v in row.failures.items()}
        fresh = {k: v for k, v in fresh.items() if v > 0}
        if fresh:
            counts, when = fresh, f"in the last {rates.window:g} s"
        else:
            severity, when = Severity.INFO, f"since start, none in the last {rates.window:g} s"
    kinds = ", ".join(f"{k} {v:.0f}" for k, v in sorted(counts.items()))
    path, _ = _path_text(snap, [row])
    section.findings.append(Finding(
        severity, f"{row.name} ({row.role}): failed KV transfers {when} ({kinds}). Likely "
        f"path: {path}",
        "rate(kvscope_engine_kv_transfer_failures_total[5m]) says whether they still happen; "
        "the engine's log names the peer; see the RDMA section for QP and port errors"))


async def engines_section(snap: Snapshot) -> Section:
    section = Section("Inference engines and KV transfer")
    rows = _rows(snap)
    if not rows:
        health = snap.health.get("engines")
        section.lines.append("engines collector disabled" if health is None and not snap.remote
                             else "no engine targets (static targets or annotated pods)")
        return section
    rates = Rates({_key(r.labels): r for r in _rows(snap.previous)}, snap.window) \
        if snap.previous is not None else None
    _table(rows, rates, section)
    if rates is not None and all(_unchanged(rates, r) for r in rows if r.up):
        section.lines.append(f"(nothing moved in the {rates.window:g} s window: make it longer "
                             "than the agent's engine poll interval, 5 s by default; totals "
                             "since start are shown)")
    _down(rows, section)
    _kv_pressure(rows, section)
    _queues(rows, section)
    _transfer(snap, [r for r in rows if r.up], rates, section)
    return section

