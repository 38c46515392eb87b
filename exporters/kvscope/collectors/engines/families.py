"""Scrape results into metric families: the per-target families by table, then the normalized
series, created on first use so that absent facts stay absent (never a zero)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from kvscope.collectors.engines import schema
from kvscope.collectors.engines.accumulate import TargetState
from kvscope.collectors.engines.discovery import REFUSALS, PodDiscovery, Target
from kvscope.parsers.engines import Fact, Normalized
from kvscope.render.families import Family, counter, gauge, info, non_empty

Labels = dict[str, str]
_MAKE: Mapping[str, Callable[[str, str], Family]] = {
    "gauge": gauge, "counter": counter, "info": info}


@dataclass(frozen=True)
class TargetResult:
    target: Target
    duration: float
    reason: str | None = None  # None when up
    normalized: Normalized | None = None


Rows = Callable[[TargetResult, TargetState], Iterable[tuple[Labels, float]]]

# One row per family about the target itself: its extra labels and value, from the last result
# and the state kept across scrapes.
TARGET_ROWS: tuple[tuple[schema.TargetFamily, Rows], ...] = (
    (schema.UP, lambda r, s: [({"reason": r.reason or ""}, 0 if r.reason else 1)]),
    (schema.DURATION, lambda r, s: [({}, r.duration)]),
    (schema.ERRORS, lambda r, s: [({"reason": k}, n) for k, n in sorted(s.errors.items())]),
    (schema.INVALID, lambda r, s: [({}, s.invalid_lines)]),
    (schema.DROPPED, lambda r, s: [({}, s.dropped)] if s.dropped else []),
)


def _make(spec: schema.TargetFamily) -> Family:
    return _MAKE[spec.kind](spec.name, spec.help)


def role(target: Target, state: TargetState) -> str:
    return target.role or state.role or "both"


def target_families(targets: Sequence[Target], results: Sequence[TargetResult],
                    states: Mapping[str, TargetState], discovery: PodDiscovery,
                    max_series: int) -> list[Metric]:
    """Every family of one poll, in a stable order."""
    counts = Counter(t.source for t in targets)
    target_count = _make(schema.TARGETS)
    for source in ("static", "discovered"):
        target_count.add({"source": source}, counts.get(source, 0))
    rows = [(spec, fn, _make(spec)) for spec, fn in TARGET_ROWS]
    engine_info = _make(schema.INFO)
    series = SeriesBuilder()
    for result in results:
        t = result.target
        state = states[t.url]
        ident = {"engine": state.engine or t.engine or "", "role": role(t, state),
                 "pod": t.pod, "namespace": t.namespace, "instance": t.instance}
        for _, fn, fam in rows:
            for extra, value in fn(result, state):
                fam.add({**ident, **extra}, value)
        if result.normalized is not None:
            add_series(series, engine_info, t, state, result.normalized, max_series=max_series)
    fams = non_empty(target_count, *(fam for _, _, fam in rows), engine_info)
    return fams + discovery_families(discovery) + series.metrics()


def discovery_families(discovery: PodDiscovery) -> list[Metric]:
    if discovery.up is None:
        return []
    up = _make(schema.DISCOVERY_UP).add({}, 1 if discovery.up else 0)
    refused = _make(schema.REFUSED)
    for reason in REFUSALS:
        refused.add({"reason": reason}, discovery.refused.get(reason, 0))
    return non_empty(up, refused)


def add_series(series: SeriesBuilder, engine_info: Family, t: Target, state: TargetState,
               norm: Normalized, *, max_series: int) -> None:
    """The normalized records of one scrape, accumulated, at most `max_series` of them."""
    role_ = t.role or norm.role or "both"
    model = t.model or norm.model or ""

    def base(engine: str) -> Labels:
        return {"engine": engine, "role": role_, "model": model, "pod": t.pod,
                "namespace": t.namespace, "instance": t.instance}

    for engine in norm.engines:
        engine_info.add({**base(engine), "variant": norm.variants.get(engine, "")}, 1)
    _add_records(series, state, norm, base, max_series)


def _add_records(series: SeriesBuilder, state: TargetState, norm: Normalized,
                 base: Callable[[str], Labels], max_series: int) -> None:
    acc, room = state.accumulator, max_series
    for v in norm.values:
        cumulative = schema.FAMILIES[v.family].kind == "counter"
        got = acc.counter(v.family, v.engine, v.labels, v.value, v.hold) if cumulative \
            else v.value
        if got is None or room <= 0:
            state.dropped += 1
            continue
        room -= 1
        series.value(v.family, {**base(v.engine), **dict(v.labels)}, got)
    for raw in norm.histograms:
        size = len(raw.buckets) + 2  # buckets, _count, _sum
        h = acc.histogram(raw) if room >= size else None
        if h is None:
            state.dropped += size
            continue
        room -= size
        series.histogram(h.family, {**base(h.engine), **dict(h.labels)}, h.buckets, h.count,
                         h.sum)
    acc.scraped()


class SeriesBuilder:
    """Normalized families, created on first use so that absent facts stay absent."""

    def __init__(self) -> None:
        self._families: dict[Fact, Metric] = {}

    def _family(self, fact: Fact) -> Metric:
        fam = self._families.get(fact)
        if fam is None:
            spec = schema.FAMILIES[fact]
            base = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
            fam = self._families[fact] = Metric(base, spec.help, spec.kind)
        return fam

    def value(self, fact: Fact, labels: Labels, value: float) -> None:
        self._family(fact).add_sample(schema.FAMILIES[fact].name, labels, value)

    def histogram(self, fact: Fact, labels: Labels, buckets: Sequence[tuple[float, float]],
                  count: float, total: float | None) -> None:
        fam = self._family(fact)
        name = schema.FAMILIES[fact].name
        for bound, n in buckets:
            le = floatToGoString(bound)  # type: ignore[no-untyped-call]
            fam.add_sample(f"{name}_bucket", {**labels, "le": le}, n)
        fam.add_sample(f"{name}_count", labels, count)
        if total is not None:
            fam.add_sample(f"{name}_sum", labels, total)

    def metrics(self) -> list[Metric]:
        return [self._families[fact] for fact in schema.FAMILIES if fact in self._families]
