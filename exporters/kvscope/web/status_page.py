"""The index page (`/`): what a person opening the agent in a browser wants to know first.

The node (real or simulated, and which scenario), a GPU table, each collector's state with its
errors in plain words, and `kvscope doctor`'s findings on the agent's current series. Everything
is read from snapshots the pollers already took; the doctor's sections run in a worker thread on
a frozen copy of the runtime's state, at most once per `DoctorCache.max_age` seconds, and never
on the /metrics path. Every value from the node (labels, pod names, messages) is HTML-escaped.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from kvscope import __version__
from kvscope.collectors.base import Collector
from kvscope.collectors.dcgm_compat import names_in_48_units
from kvscope.context import NodeContext
from kvscope.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeFacts:
    """What app.py knows about the node at start; the page never asks the simulator itself."""

    node_name: str
    scenario: str | None = None  # None: this node's real hardware
    scenario_description: str = ""


# ---- collector errors in plain words ---------------------------------------------------------

TIER_WORDS = {"fast": "fast tier", "slow": "slow tier", "static": "static tier (identity)",
              "event": "event tier (XID)"}

REASON_WORDS: dict[str, str] = {
    "busy": "the previous read of this tier is still running (a read hung in the driver, sysfs "
            "or a subprocess), so this poll was skipped rather than queued behind it",
    "timeout": "the poll took longer than the collector's timeout and was abandoned",
    "stale": "no successful poll for longer than staleness_factor intervals: its series are "
             "dropped from /metrics, not served as if fresh",
    "nvml_unavailable": "NVML could not be loaded: no NVIDIA driver or library on this node, so "
                        "no GPU series (run with --no-collector.gpu on nodes without GPUs)",
    "no_gpus": "NVML loaded but sees no GPU: the agent's container was not given the node's "
               "GPUs (NVIDIA_VISIBLE_DEVICES=all)",
    "not_initialised": "NVML was not initialised by the static tier",
    "eadm_timeout": "Alibaba's eadm tool did not answer within eadm_timeout and was killed",
    "eadm_failed": "Alibaba's eadm tool exited with an error",
    "eadm_parse": "eadm's output could not be parsed",
    "rdma_tool_timeout": "iproute2's rdma tool did not answer within rdma_tool_timeout",
}


def explain(error: str) -> str:
    """'fast: busy' -> 'fast tier: the previous read of this tier is still running ...'."""
    tier, sep, reason = error.partition(": ")
    if not sep:
        tier, reason = "", error
    words = REASON_WORDS.get(reason)
    if words is None:
        if reason.startswith("kube_"):
            words = f"the Kubernetes API could not be read ({reason[5:]})"
        elif reason.endswith("_timeout"):
            words = f"{reason[:-8]} did not answer within its timeout"
        elif reason[:1].isupper():
            words = f"unexpected {reason} inside the collector (a bug: the log has the traceback)"
        else:
            words = f"the source reported {reason!r}"
    where = TIER_WORDS.get(tier, tier)
    return f"{where}: {words}" if where else words


# ---- a frozen view of the runtime for the doctor -------------------------------------------

class FrozenRuntime(Runtime):
    """The runtime's families and health as they stood at one moment, for code that reads a
    Runtime (the doctor's sections) in another thread while the pollers go on."""

    def __init__(self, collectors: Sequence[Collector], families: list[Metric],
                 health: dict[str, dict[str, object]]) -> None:
        super().__init__([])
        self.collectors = list(collectors)
        self._frozen_families = families
        self._frozen_health = health

    def families(self) -> list[Metric]:
        return self._frozen_families

    def collector_health(self) -> dict[str, dict[str, object]]:
        return self._frozen_health


@dataclass(frozen=True)
class DoctorFinding:
    severity: str  # info | warning | critical
    section: str
    title: str
    fix: str


def _run_sections(ctx: NodeContext, view: Runtime) -> list[DoctorFinding]:
    from kvscope import doctor
    from kvscope.doctor import sections as _registers  # noqa: F401 - registers the sections

    snap = doctor.local_snapshot(ctx, view)

    async def run_all() -> list[DoctorFinding]:
        found = []
        for build in doctor.SECTIONS:
            section = await build(snap)
            found += [DoctorFinding(f.severity.name.lower(), section.title, f.title, f.fix)
                      for f in section.findings]
        return found

    return asyncio.run(run_all())


@dataclass
class DoctorCache:
    """Doctor findings, recomputed in a thread when older than `max_age` (one run at a time)."""

    ctx: NodeContext
    max_age: float = 15.0
    wait: float = 3.0  # how long a page waits for a fresh run before showing the last one
    clock: Callable[[], float] = time.monotonic
    findings: list[DoctorFinding] | None = None
    error: str | None = None
    taken: float = float("-inf")
    runs: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def get(self, runtime: Runtime) -> None:
        if self.clock() - self.taken >= self.max_age and self._task is None:
            view = FrozenRuntime(runtime.collectors, runtime.families(),
                                 runtime.collector_health())
            self._task = asyncio.create_task(self._refresh(view))
        if self._task is not None:
            await asyncio.wait([self._task], timeout=self.wait)

    async def _refresh(self, view: Runtime) -> None:
        try:
            self.findings = await asyncio.to_thread(_run_sections, self.ctx, view)
            self.error = None
        except Exception as exc:  # the page shows the failure; the agent goes on
            log.exception("index page: doctor failed")
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.runs += 1
            self.taken = self.clock()
            self._task = None


# ---- the page ------------------------------------------------------------------------------

def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _samples(families: Iterable[Metric], name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), s.value) for f in families for s in f.samples if s.name == name]


def _by_gpu(families: list[Metric], name: str) -> dict[str, tuple[dict[str, str], float]]:
    return {lb["gpu"]: (lb, v) for lb, v in _samples(families, name) if "gpu" in lb}


def _dcgm_by_gpu(families: list[Metric], key: str) -> dict[str, tuple[dict[str, str], float]]:
    """A DCGM reading per GPU in dcgm-exporter 4.8's unit under any dcgm.compat generation;
    the GPU instances of a MIG GPU are summed."""
    for name, factor in names_in_48_units(key):
        found: dict[str, tuple[dict[str, str], float]] = {}
        for lb, v in _samples(families, name):
            if "gpu" in lb:
                found[lb["gpu"]] = (lb, found.get(lb["gpu"], (lb, 0.0))[1] + v * factor)
        if found:
            return found
    return {}


def node_section(facts: NodeFacts, families: list[Metric]) -> str:
    if facts.scenario is not None:
        mode = (f"<b>simulated node</b>, scenario <code>{_e(facts.scenario)}</code>"
                + (f": {_e(facts.scenario_description)}" if facts.scenario_description else ""))
    else:
        mode = "this node's hardware"
    rows = [f"<tr><th>node</th><td>{_e(facts.node_name)}</td></tr>",
            f"<tr><th>source</th><td>{mode}</td></tr>"]
    models = sorted({lb.get("modelName", "") for lb, _ in _samples(families, "kvscope_gpu_up")})
    drivers = sorted({lb.get("DCGM_FI_DRIVER_VERSION", "")
                      for lb, _ in _samples(families, "kvscope_gpu_up")} - {""})
    count = len(_samples(families, "kvscope_gpu_up"))
    if count:
        rows.append(f"<tr><th>GPUs</th><td>{count} x {_e(', '.join(models))}"
                    + (f", driver {_e(', '.join(drivers))}" if drivers else "") + "</td></tr>")
    elif [v for _, v in _samples(families, "kvscope_gpu_nvml_available")] == [0.0]:
        rows.append("<tr><th>GPUs</th><td class=down>none: NVML not available</td></tr>")
    return f"<h2>Node</h2><table>{''.join(rows)}</table>"


def gpu_section(families: list[Metric]) -> str:
    up = _by_gpu(families, "kvscope_gpu_up")
    if not up:
        return ""
    util = _dcgm_by_gpu(families, "gpu_util")
    used = _dcgm_by_gpu(families, "fb_used")
    total = _dcgm_by_gpu(families, "fb_total")
    free = _dcgm_by_gpu(families, "fb_free")
    temp = _dcgm_by_gpu(families, "gpu_temp")
    pods: dict[str, set[str]] = {}
    for lb, _ in _samples(families, "kvscope_pod_gpu_info"):
        role = f" ({lb['role']})" if lb.get("role") not in (None, "", "unknown") else ""
        pods.setdefault(lb.get("gpu", ""), set()).add(
            f"{lb.get('namespace', '')}/{lb.get('pod', '')}{role}")
    for gpu, (lb, _) in up.items():  # dcgm-style attribution on the GPU series itself
        if lb.get("pod") and gpu not in pods:
            pods[gpu] = {f"{lb.get('namespace', '')}/{lb['pod']}"}
    rows = []
    for gpu in sorted(up, key=lambda g: int(g) if g.isdigit() else 1 << 30):
        labels, alive = up[gpu]
        mib_total = total[gpu][1] if gpu in total else (
            used[gpu][1] + free[gpu][1] if gpu in used and gpu in free else None)
        memory = (f"{used[gpu][1] / 1024:.1f} / {mib_total / 1024:.1f} GiB"
                  if gpu in used and mib_total else "-")
        state = "<td class=up>up</td>" if alive else "<td class=down>lost</td>"
        rows.append(
            f"<tr><td>{_e(gpu)}</td><td>{_e(labels.get('modelName', ''))}</td>{state}"
            f"<td class=num>{_e(f'{util[gpu][1]:.0f} %') if gpu in util else '-'}</td>"
            f"<td class=num>{_e(memory)}</td>"
            f"<td class=num>{_e(f'{temp[gpu][1]:.0f} °C') if gpu in temp else '-'}</td>"
            f"<td>{_e(', '.join(sorted(pods.get(gpu, ()))) or '-')}</td></tr>")
    return ("<h2>GPUs</h2><table><tr><th>GPU</th><th>model</th><th>state</th><th>util</th>"
            "<th>memory used / total</th><th>temperature</th><th>pods</th></tr>"
            f"{''.join(rows)}</table>")


def collectors_section(health: dict[str, dict[str, object]]) -> str:
    rows = []
    for name, h in sorted(health.items()):
        errors = [str(e) for e in h["errors"]]  # type: ignore[attr-defined]
        # A tier that failed is news even while another has yet to report (a hung event tier).
        state = "up" if h["up"] else ("down" if errors or h["ready"] else "starting")
        words = "".join(f"<li><code>{_e(e)}</code>: {_e(explain(e))}</li>" for e in errors)
        rows.append(f"<tr><td>{_e(name)}</td><td class={state}>{state}</td>"
                    f"<td>{f'<ul>{words}</ul>' if words else ''}</td></tr>")
    return ("<h2>Collectors</h2><table><tr><th>collector</th><th>state</th><th>last errors</th>"
            f"</tr>{''.join(rows)}</table>")


def doctor_section(cache: DoctorCache | None) -> str:
    head = "<h2>Doctor</h2>"
    if cache is None:
        return ""
    if cache.findings is None:
        note = f"failed: {_e(cache.error)}" if cache.error else "still running; reload shortly"
        return f"{head}<p>{note}</p>"
    note = ("<p class=note>From the agent's current series: what <code>kvscope doctor</code> "
            "reports on this node, with NVLink counted per GPU (which links are down needs "
            "<code>collectors.nvlink.per_link</code>).</p>")
    if not cache.findings:
        return f"{head}{note}<p class=up>no findings</p>"
    order = {"critical": 0, "warning": 1, "info": 2}
    items = []
    for f in sorted(cache.findings, key=lambda f: order.get(f.severity, 3)):
        fix = f"<br><small>fix: {_e(f.fix)}</small>" if f.fix else ""
        items.append(f"<li class={_e(f.severity)}><b>{_e(f.severity)}</b> "
                     f"[{_e(f.section)}] {_e(f.title)}{fix}</li>")
    return f"{head}{note}<ul class=findings>{''.join(items)}</ul>"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em}td,th{padding:4px 12px;
text-align:left;vertical-align:top}.num{text-align:right}.up{color:#1a7f37}.down,.critical{
color:#cf222e}.starting,.warning{color:#9a6700}.info{color:#0969da}ul{margin:0;padding-left:1.2em}
.note{color:#57606a}"""


def render(facts: NodeFacts, families: list[Metric], health: dict[str, dict[str, object]],
           cache: DoctorCache | None) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>kvscope '
            f'{_e(facts.node_name)}</title><style>{STYLE}</style></head><body>'
            f"<h1>kvscope {_e(__version__)}</h1>"
            '<p><a href="metrics">/metrics</a> &middot; <a href="healthz">/healthz</a> &middot; '
            '<a href="readyz">/readyz</a></p>'
            f"{node_section(facts, families)}{gpu_section(families)}"
            f"{collectors_section(health)}{doctor_section(cache)}</body></html>")
