"""Inference-engine collector: scrape each engine's /metrics, normalize into kvscope_engine_*.

Targets are the static list in the config plus, when a Kubernetes API is reachable, the pods on
this node that ask for it (annotation `kvscope.io/scrape: "true"`) or carry a PD role label
(`config.pd.role_labels`). Every target is scraped concurrently on the fast tier with its own
timeout, smaller than the tier's, so a slow or dead engine shows up as `kvscope_engine_up 0`
with a reason and never delays the others.

Counters are accumulated here, per target and normalized series: when an engine restarts, its
counters start again from zero; the collector sees the drop, treats it as a reset and adds the
new value, so the exported `kvscope_engine_*_total` never go backwards and `rate()` shows no
negative spike or false burst. Values therefore equal the engine's own counters until its first
restart, and keep growing across restarts after that. The state lives for as long as the target
does (it is dropped when the pod goes away) and is lost when the agent restarts, which
Prometheus sees as one ordinary counter reset.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from kvscope.collectors.base import Collector, PollResult, Pool, Schedule, Tier
from kvscope.config import ENGINE_NAMES, EnginesConfig, PdSettings
from kvscope.context import NodeContext
from kvscope.parsers.engines import FAMILIES, KEEP, Histogram, Normalized
from kvscope.parsers.engines import normalize as normalize_payload
from kvscope.parsers.exposition import ParseCache, ParseError, parse
from kvscope.render.families import counter, gauge, info, non_empty
from kvscope.sources.http_scrape import (
    Scraped,
    ScrapeFailure,
    new_session,
    redact,
    scrape,
    scrub,
)

log = logging.getLogger(__name__)

REFUSALS = ("other_node", "pod_ip", "port", "path")
TARGET_LABELS = ("engine", "role", "pod", "namespace", "instance")
SERIES_LABELS = ("engine", "role", "model", "pod", "namespace", "instance")


@dataclass(frozen=True)
class Target:
    url: str
    engine: str | None = None  # configured or annotated; otherwise detected per scrape
    role: str | None = None
    model: str | None = None
    pod: str = ""
    namespace: str = ""
    source: str = "static"  # static | discovered

    @property
    def instance(self) -> str:
        return _instance(self.url)

    @property
    def safe_url(self) -> str:
        """The URL for log lines: credentials in it replaced."""
        return redact(self.url)


@functools.lru_cache(maxsize=4096)
def _instance(url: str) -> str:
    """host:port of a target URL, plus the path when it is not /metrics."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # Two engines behind one port on different paths must not share an identity.
    path = parts.path if parts.path not in ("", "/", "/metrics") else ""
    return f"{host}:{port}{path}"


# ---- discovery ---------------------------------------------------------------------------

def _pd_role(labels: Mapping[str, str], pd: PdSettings) -> str | None:
    for key in pd.role_labels:
        value = labels.get(key)
        if value:
            value = value.lower()
            if value in pd.prefill_values:
                return "prefill"
            if value in pd.decode_values:
                return "decode"
            return "both"
    return None


def _role_value(value: str | None, pd: PdSettings) -> str | None:
    if not value:
        return None
    value = value.lower()
    if value in ("prefill", *pd.prefill_values):
        return "prefill"
    if value in ("decode", *pd.decode_values):
        return "decode"
    return "both"


def _container_port(spec: Mapping[str, Any]) -> int | None:
    """A pod without a port annotation: its port named metrics, else http, else the first."""
    ports = [p for c in spec.get("containers") or [] for p in c.get("ports") or []
             if isinstance(p, dict) and isinstance(p.get("containerPort"), int)]
    for wanted in ("metrics", "http"):
        for p in ports:
            if p.get("name") == wanted:
                return int(p["containerPort"])
    return int(ports[0]["containerPort"]) if ports else None


# Pod IPs a discovered target may never have: a pod is never given one of these, and each is
# a place a forged or odd pod object could point the agent at (link-local: cloud metadata).
def _usable_pod_ip(raw: object) -> str | None:
    try:
        ip = ipaddress.ip_address(str(raw))
    except ValueError:
        return None
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return None
    return str(ip)


_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


def _metrics_path(raw: object) -> str | None:
    """The annotated path, or None when it is more than a plain path (a query, `..`, `//`)."""
    path = str(raw or "/metrics")
    path = path if path.startswith("/") else "/" + path
    if not _PATH.fullmatch(path) or ".." in path or path.startswith("//"):
        return None
    return path


def _pod_target(pod: Mapping[str, Any], cfg: EnginesConfig, pd: PdSettings,
                node_name: str) -> Target | str | None:
    """The target a pod asks for; a refusal reason; or None when it does not ask."""
    keys = cfg.annotations
    meta = pod.get("metadata") or {}
    ann = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    scrape_flag = str(ann.get(keys.scrape, "")).lower()
    pd_role = _pd_role(labels, pd)
    if scrape_flag == "false" or (scrape_flag != "true" and pd_role is None):
        return None
    if status.get("phase") != "Running" or not status.get("podIP"):
        return None
    where = _endpoint(spec, status, ann, cfg, node_name)
    if isinstance(where, str):
        return where
    ip, port, path = where
    host = f"[{ip}]" if ":" in ip else ip
    engine = ann.get(keys.engine)
    return Target(
        url=f"http://{host}:{port}{path}",
        engine=engine if engine in ENGINE_NAMES else None,
        role=_role_value(ann.get(keys.role), pd) or pd_role,
        model=ann.get(keys.model) or None,
        pod=str(meta.get("name", "")), namespace=str(meta.get("namespace", "")),
        source="discovered")


def _endpoint(spec: Mapping[str, Any], status: Mapping[str, Any], ann: Mapping[str, Any],
              cfg: EnginesConfig, node_name: str) -> tuple[str, int, str] | str:
    """(pod IP, port, path) of a pod's metrics, or the reason it is refused."""
    if spec.get("nodeName") != node_name:
        return "other_node"
    ip = _usable_pod_ip(status.get("podIP"))
    if ip is None:
        return "pod_ip"
    raw_port = ann.get(cfg.annotations.port)
    if raw_port is not None:
        port = int(str(raw_port)) if str(raw_port).isdigit() else None
    else:
        port = _container_port(spec)
    if port is None or not 0 < port < 65536:
        return "port"
    path = _metrics_path(ann.get(cfg.annotations.path))
    return "path" if path is None else (ip, port, path)


@dataclass(frozen=True)
class Discovered:
    targets: list[Target]
    refused: Counter[str]  # reason -> pods that asked to be scraped and were refused
    refused_pods: tuple[tuple[str, str], ...] = ()  # (namespace/name, reason)


def targets_from_pods(pods: Sequence[Mapping[str, Any]], cfg: EnginesConfig,
                      pd: PdSettings, node_name: str) -> Discovered:
    """Running pods of this node that ask to be scraped, as targets (pure: the pod JSON is the
    input). A target is only ever the pod's own IP, on the annotated (or declared) port and a
    plain path: a pod of another node (`other_node`), an IP no pod has (`pod_ip`: link-local
    such as cloud metadata, multicast, garbage), a bad port (`port`) or a path with more than
    a path in it (`path`) is refused and counted."""
    targets: list[Target] = []
    refused: Counter[str] = Counter()
    named: list[tuple[str, str]] = []
    for pod in pods:
        got = _pod_target(pod, cfg, pd, node_name)
        if isinstance(got, Target):
            targets.append(got)
        elif got is not None:
            refused[got] += 1
            meta = pod.get("metadata") or {}
            named.append((f"{meta.get('namespace', '')}/{meta.get('name', '')}", got))
    return Discovered(targets, refused, tuple(named))


# ---- counters across restarts ------------------------------------------------------------

class Accumulator:
    """Monotonic normalized counters for one target, across engine restarts.

    Keyed by normalized series (family, engine, output labels), after the rank and shard
    reductions: an engine restarts all its ranks together, and working on the ~60 normalized
    series instead of the ~500 raw samples behind them keeps the cycle cheap.
    """

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, tuple[tuple[str, str], ...]],
                             tuple[float, float]] = {}  # key -> (last raw, total)
        self._histograms: dict[tuple[str, str, tuple[tuple[str, str], ...]],
                               tuple[tuple[float, ...], list[float], list[float]]] = {}
        self.resets = 0

    def counter(self, family: str, engine: str, labels: tuple[tuple[str, str], ...],
                value: float, hold: bool = False) -> float:
        """A drop in the source reads as a restart: the new value is added, not subtracted.
        `hold`: a counter derived by subtraction may dip by a request in flight; hold it."""
        key = (family, engine, labels)
        seen = self._counters.get(key)
        if seen is None or math.isnan(value):
            if seen is None:
                self._counters[key] = (value, value)
            return value if seen is None else seen[1]
        last, total = seen
        if value >= last:
            total += value - last
        elif not hold:
            total += value
            self.resets += 1
        self._counters[key] = (max(last, value) if hold else value, total)
        return total

    def histogram(self, h: Histogram) -> Histogram:
        """Buckets, count and sum accumulate together: if any went down, the engine restarted."""
        key = (h.family, h.engine, h.labels)
        bounds = tuple(b for b, _ in h.buckets)
        raw = [n for _, n in h.buckets] + [h.count, h.sum if h.sum is not None else 0.0]
        seen = self._histograms.get(key)
        if seen is None or seen[0] != bounds:  # first sight, or new buckets after an upgrade
            self._histograms[key] = (bounds, raw, list(raw))
            return h
        _, last, totals = seen
        reset = any(r < p for r, p in zip(raw, last, strict=True))
        self.resets += reset
        totals = [t + (r if reset else r - p) for t, r, p in zip(totals, raw, last, strict=True)]
        self._histograms[key] = (bounds, raw, totals)
        return replace(h, buckets=tuple(zip(bounds, totals[:-2], strict=True)),
                       count=totals[-2], sum=totals[-1] if h.sum is not None else None)


# ---- per-target state and results --------------------------------------------------------

@dataclass
class TargetState:
    accumulator: Accumulator = field(default_factory=Accumulator)
    cache: ParseCache = field(default_factory=dict)  # series text -> parsed labels
    shards: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    engine: str = ""  # last detected primary engine
    role: str = ""
    up: bool | None = None
    errors: Counter[str] = field(default_factory=Counter)
    invalid_lines: int = 0


@dataclass(frozen=True)
class TargetResult:
    target: Target
    duration: float
    reason: str | None = None  # None when up
    normalized: Normalized | None = None


class EnginesCollector(Collector):
    name = "engines"

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._states: dict[str, TargetState] = {}
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._kube: Any = None
        self._kube_checked = False
        self._discovered: list[Target] = []
        self._discovered_at: float | None = None
        self._discovery_up: bool | None = None
        self._refused: Counter[str] = Counter()
        self._refused_said: set[tuple[str, str]] = set()

    @property
    def _cfg(self) -> EnginesConfig:
        return self._ctx.config.collectors.engines  # read late: the sim rewrites the config

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(self._cfg.cadence.fast, self._cfg.timeout)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        return PollResult(await self._families_of(tier, pool))

    async def _families_of(self, tier: Tier, pool: Pool) -> Sequence[Metric]:
        targets = await self._targets()
        session = self._client_session()
        fetched = await asyncio.gather(*(self._fetch(session, t) for t in targets))
        # Parsing and normalizing 16 x 100 KB is tens of ms of CPU: done in one hop to the
        # tier's worker thread, so the event loop keeps answering scrapes meanwhile.
        results = await pool.run(lambda: [self._process(*item) for item in fetched])
        return self._families(targets, results)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        if self._kube is not None:
            await self._kube.close()

    def _client_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = new_session()
            self._session_loop = loop
        return self._session

    # ---- targets ---------------------------------------------------------------------------

    async def _targets(self) -> list[Target]:
        cfg = self._cfg
        static = [Target(t.url, t.engine, t.role, t.model) for t in cfg.targets]
        if cfg.discovery:
            await self._refresh_discovery()
        urls = {t.url for t in static}
        targets = static + [t for t in self._discovered if t.url not in urls]
        live = {t.url for t in targets}
        for url in [u for u in self._states if u not in live]:
            del self._states[url]  # the pod went away: forget its counters
        return targets

    async def _refresh_discovery(self) -> None:
        from kvscope.sources.kube import KubeClient, KubeError

        config = self._ctx.config
        if not self._kube_checked:
            self._kube_checked = True
            k = config.kubernetes
            self._kube = KubeClient.from_settings(k.api_url, config.node_name,
                                                  token_file=k.token_file, ca_file=k.ca_file,
                                                  timeout=k.timeout)
            if self._kube is None:
                log.info("engines: no Kubernetes API configured or in-cluster; scraping the %d "
                         "static target(s) only", len(self._cfg.targets))
        if self._kube is None:
            return
        now = time.monotonic()
        if self._discovered_at is not None and \
                now - self._discovered_at < self._cfg.discovery_interval:
            return
        self._discovered_at = now
        try:
            pods = await asyncio.wait_for(self._kube.node_pods(), self._cfg.discovery_timeout)
        except (KubeError, TimeoutError) as exc:
            if self._discovery_up is not False:
                log.warning("engines: pod discovery failed (%s); keeping %d known target(s)",
                            exc or "timeout", len(self._discovered))
            self._discovery_up = False
            return
        if self._discovery_up is False:
            log.info("engines: pod discovery works again")
        self._discovery_up = True
        found = targets_from_pods(pods, self._cfg, config.pd, config.node_name)
        self._discovered, self._refused = found.targets, found.refused
        for pod, reason in found.refused_pods:
            if (pod, reason) not in self._refused_said:
                log.warning("engines: not scraping pod %s (%s): a discovered target must be the "
                            "pod's own IP on this node, on a valid port and plain path",
                            pod, reason)
        self._refused_said = set(found.refused_pods)

    # ---- one target ------------------------------------------------------------------------

    async def _fetch(self, session: aiohttp.ClientSession, target: Target,
                     ) -> tuple[Target, float, Scraped | ScrapeFailure | Exception]:
        started = time.monotonic()
        try:
            got = await scrape(session, target.url, time_limit=self._cfg.target_timeout,
                               max_bytes=self._cfg.max_response_bytes)
        except Exception as exc:  # one target's surprise must not cost the others their data
            return target, started, exc
        return target, started, got

    def _process(self, target: Target, started: float,
                 got: Scraped | ScrapeFailure | Exception) -> TargetResult:
        """Parse and normalize one fetched body (on the worker thread)."""
        state = self._states.setdefault(target.url, TargetState())
        try:
            if isinstance(got, Exception):
                raise got
            if isinstance(got, ScrapeFailure):
                return self._down(target, state, got.reason, got.message, got.duration)
            expo = parse(got.body.decode("utf-8", "replace"), KEEP, state.cache)
            if isinstance(expo, ParseError):
                return self._down(target, state, expo.reason,
                                  f"{target.safe_url}: {expo.message}", got.duration)
            state.invalid_lines += expo.invalid_lines
            result = normalize_payload(expo, target.engine, state.shards)
            if not result.engines:
                return self._down(target, state, "unknown_engine",
                                  f"{target.safe_url}: no metric of a known engine "
                                  f"({len(expo.names)} names)", got.duration)
        except Exception as exc:  # one target's surprise must not cost the others their data
            log.exception("engines: scraping %s failed", target.safe_url)
            return self._down(target, state, "internal",
                              f"{target.safe_url}: {scrub(str(exc), target.url)}",
                              time.monotonic() - started)
        if state.up is False:
            log.info("engines: %s is up again", target.safe_url)
        state.up = True
        state.engine = target.engine or result.engines[0]
        state.role = target.role or result.role or state.role
        return TargetResult(target, got.duration, None, result)

    def _down(self, target: Target, state: TargetState, reason: str, message: str,
              duration: float) -> TargetResult:
        if state.up is not False:
            log.warning("engines: target down (%s): %s", reason, message)
        state.up = False
        state.errors[reason] += 1
        return TargetResult(target, duration, reason)

    # ---- families --------------------------------------------------------------------------

    def _families(self, targets: Sequence[Target],
                  results: Sequence[TargetResult]) -> list[Metric]:
        up = gauge("kvscope_engine_up",
                   "1 when the engine's /metrics answered with metrics of a known engine; 0 with "
                   "`reason` (timeout, connect, reset, redirect, http_<code>, too_large, decode, "
                   "parse, unknown_engine) otherwise.")
        duration = gauge("kvscope_engine_scrape_duration_seconds",
                         "Wall time of the last scrape of the engine's /metrics.")
        errors = counter("kvscope_engine_scrape_errors_total",
                         "Failed scrapes of the engine's /metrics since the agent started, by "
                         "reason.")
        invalid = counter("kvscope_engine_exposition_invalid_lines_total",
                          "Malformed lines skipped in the engine's exposition.")
        engine_info = info("kvscope_engine_info",
                           "Engines found behind a target; `variant` names the generation of "
                           "metric names that was read (e.g. vllm v0, v1-0.8, v1).")
        counts = Counter(t.source for t in targets)
        target_count = gauge("kvscope_engine_targets", "Engine targets scraped, by source.")
        for source in ("static", "discovered"):
            target_count.add({"source": source}, counts.get(source, 0))
        series = _SeriesBuilder()
        for result in results:
            t = result.target
            state = self._states[t.url]
            ident = {"engine": state.engine or t.engine or "", "role": self._role(t, state),
                     "pod": t.pod, "namespace": t.namespace, "instance": t.instance}
            up.add({**ident, "reason": result.reason or ""}, 0 if result.reason else 1)
            duration.add(ident, result.duration)
            for reason, n in sorted(state.errors.items()):
                errors.add({**ident, "reason": reason}, n)
            invalid.add(ident, state.invalid_lines)
            if result.normalized is not None:
                self._add_series(series, engine_info, t, state, result.normalized)
        fams = non_empty(target_count, up, duration, errors, invalid, engine_info)
        if self._discovery_up is not None:
            fams += non_empty(gauge("kvscope_engine_discovery_up",
                                    "1 when the last pod list from the Kubernetes API "
                                    "succeeded.").add({}, 1 if self._discovery_up else 0))
            refused = gauge("kvscope_engine_discovery_refused_pods",
                            "Pods of the last pod list that asked to be scraped and were "
                            "refused, by reason (other_node, pod_ip, port, path).")
            for reason in REFUSALS:
                refused.add({"reason": reason}, self._refused.get(reason, 0))
            fams += non_empty(refused)
        return fams + series.metrics()

    @staticmethod
    def _role(target: Target, state: TargetState) -> str:
        return target.role or state.role or "both"

    def _add_series(self, series: _SeriesBuilder, engine_info: Any, t: Target,
                    state: TargetState, norm: Normalized) -> None:
        role = t.role or norm.role or "both"
        model = t.model or norm.model or ""

        def base(engine: str) -> dict[str, str]:
            return {"engine": engine, "role": role, "model": model, "pod": t.pod,
                    "namespace": t.namespace, "instance": t.instance}

        for engine in norm.engines:
            engine_info.add({**base(engine), "variant": norm.variants.get(engine, "")}, 1)
        for v in norm.values:
            value = v.value
            if FAMILIES[v.family].kind == "counter":
                value = state.accumulator.counter(v.family, v.engine, v.labels, value, v.hold)
            series.value(v.family, {**base(v.engine), **dict(v.labels)}, value)
        for raw in norm.histograms:
            h = state.accumulator.histogram(raw)
            series.histogram(h.family, {**base(h.engine), **dict(h.labels)}, h.buckets, h.count,
                             h.sum)


class _SeriesBuilder:
    """Normalized families, created on first use so that absent facts stay absent."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, name: str) -> Metric:
        fam = self._families.get(name)
        if fam is None:
            spec = FAMILIES[name]
            base = name.removesuffix("_total") if spec.kind == "counter" else name
            fam = self._families[name] = Metric(base, spec.help, spec.kind)
        return fam

    def value(self, name: str, labels: dict[str, str], value: float) -> None:
        self._family(name).add_sample(name, labels, value)

    def histogram(self, name: str, labels: dict[str, str],
                  buckets: Sequence[tuple[float, float]], count: float,
                  total: float | None) -> None:
        fam = self._family(name)
        for bound, n in buckets:
            le = floatToGoString(bound)  # type: ignore[no-untyped-call]
            fam.add_sample(f"{name}_bucket", {**labels, "le": le}, n)
        fam.add_sample(f"{name}_count", labels, count)
        if total is not None:
            fam.add_sample(f"{name}_sum", labels, total)

    def metrics(self) -> list[Metric]:
        return [self._families[name] for name in FAMILIES if name in self._families]
