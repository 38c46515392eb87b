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
import logging
import math
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
from kvscope.sources.http_scrape import Scraped, ScrapeFailure, new_session, scrape

log = logging.getLogger(__name__)

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


def targets_from_pods(pods: Sequence[Mapping[str, Any]], cfg: EnginesConfig,
                      pd: PdSettings) -> list[Target]:
    """Running pods that ask to be scraped, as targets (pure: the pod JSON is the input)."""
    keys = cfg.annotations
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        ann = meta.get("annotations") or {}
        labels = meta.get("labels") or {}
        status = pod.get("status") or {}
        scrape_flag = str(ann.get(keys.scrape, "")).lower()
        pd_role = _pd_role(labels, pd)
        if scrape_flag == "false" or (scrape_flag != "true" and pd_role is None):
            continue
        ip = status.get("podIP")
        if status.get("phase") != "Running" or not ip:
            continue
        raw_port = ann.get(keys.port)
        port = int(str(raw_port)) if str(raw_port or "").isdigit() else \
            _container_port(pod.get("spec") or {})
        if port is None or not 0 < port < 65536:
            log.debug("engines: pod %s/%s has no usable metrics port; skipped",
                      meta.get("namespace"), meta.get("name"))
            continue
        path = str(ann.get(keys.path) or "/metrics")
        path = path if path.startswith("/") else "/" + path
        host = f"[{ip}]" if ":" in ip else ip
        engine = ann.get(keys.engine)
        out.append(Target(
            url=f"http://{host}:{port}{path}",
            engine=engine if engine in ENGINE_NAMES else None,
            role=_role_value(ann.get(keys.role), pd) or pd_role,
            model=ann.get(keys.model) or None,
            pod=str(meta.get("name", "")), namespace=str(meta.get("namespace", "")),
            source="discovered"))
    return out


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
        self._discovered = targets_from_pods(pods, self._cfg, config.pd)

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
                return self._down(target, state, expo.reason, f"{target.url}: {expo.message}",
                                  got.duration)
            state.invalid_lines += expo.invalid_lines
            result = normalize_payload(expo, target.engine, state.shards)
            if not result.engines:
                return self._down(target, state, "unknown_engine",
                                  f"{target.url}: no metric of a known engine "
                                  f"({len(expo.names)} names)", got.duration)
        except Exception as exc:  # one target's surprise must not cost the others their data
            log.exception("engines: scraping %s failed", target.url)
            return self._down(target, state, "internal", f"{target.url}: {exc}",
                              time.monotonic() - started)
        if state.up is False:
            log.info("engines: %s is up again", target.url)
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
                   "`reason` (timeout, connect, reset, http_<code>, too_large, decode, parse, "
                   "unknown_engine) otherwise.")
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
