"""What the collector keeps per target between scrapes, all of it bounded.

Counters are accumulated per target and normalized series: when an engine restarts, its
counters start again from zero; the accumulator sees the drop, treats it as a reset and adds the
new value, so the exported `kvscope_engine_*_total` never go backwards and `rate()` shows no
negative spike or false burst. Values therefore equal the engine's own counters until its first
restart, and keep growing across restarts after that.

Nothing here grows with label churn (a target whose label values change every scrape once took
the agent from 82 to 521 MB in 260 s):

* the parse cache and the shard memo hold at most about twice the lines of the last payload
  (plus a little slack) and start again empty when they pass that;
* the accumulator holds at most `max_series` series; a series not seen for `FORGET_AFTER`
  successful scrapes is forgotten (it left the engine), and a new series past the limit is not
  exported and counted in `dropped`;
* a target's state goes with the target (the pod went away).

The state is lost when the agent restarts, which Prometheus sees as one ordinary counter reset.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kvscope.parsers.engines import Histogram, LabelKey
from kvscope.parsers.exposition import ParseCache

# Successful scrapes a series may be absent before its running total is forgotten: five minutes
# at the 5 s cadence, longer than an engine takes to print a counter again after a restart.
FORGET_AFTER = 60
CACHE_SLACK = 1024  # entries over twice the payload's lines before a cache starts again

Key = tuple[str, str, LabelKey]  # fact, engine, output labels


class Accumulator:
    """Monotonic normalized counters for one target, across engine restarts.

    Keyed by normalized series (fact, engine, output labels), after the rank and shard
    reductions: an engine restarts all its ranks together, and working on the ~60 normalized
    series instead of the ~500 raw samples behind them keeps the cycle cheap.
    """

    def __init__(self, max_series: int = 10_000) -> None:
        self.max_series = max_series
        self._counters: dict[Key, tuple[float, float, int]] = {}  # (last raw, total, seen)
        self._histograms: dict[Key, tuple[tuple[float, ...], list[float], list[float], int]] = {}
        self._scrape = 0
        self.resets = 0

    def __len__(self) -> int:
        return len(self._counters) + len(self._histograms)

    def _full(self, key: Key, table: Mapping[Key, object]) -> bool:
        return key not in table and len(self) >= self.max_series

    def counter(self, family: str, engine: str, labels: LabelKey, value: float,
                hold: bool = False) -> float | None:
        """The accumulated value; None when the series is new and the target is at its limit.
        A drop in the source reads as a restart: the new value is added, not subtracted.
        `hold`: a counter derived by subtraction may dip by a request in flight; hold it."""
        key = (family, engine, labels)
        if self._full(key, self._counters):
            return None
        seen = self._counters.get(key)
        if seen is None or math.isnan(value):
            if seen is None:
                self._counters[key] = (value, value, self._scrape)
            return value if seen is None else seen[1]
        last, total, _ = seen
        if value >= last:
            total += value - last
        elif not hold:
            total += value
            self.resets += 1
        self._counters[key] = (max(last, value) if hold else value, total, self._scrape)
        return total

    def histogram(self, h: Histogram) -> Histogram | None:
        """Buckets, count and sum accumulate together: if any went down, the engine restarted.
        None when the series is new and the target is at its limit."""
        key = (h.family, h.engine, h.labels)
        if self._full(key, self._histograms):
            return None
        bounds = tuple(b for b, _ in h.buckets)
        raw = [n for _, n in h.buckets] + [h.count, h.sum if h.sum is not None else 0.0]
        seen = self._histograms.get(key)
        if seen is None or seen[0] != bounds:  # first sight, or new buckets after an upgrade
            self._histograms[key] = (bounds, raw, list(raw), self._scrape)
            return h
        _, last, totals, _ = seen
        reset = any(r < p for r, p in zip(raw, last, strict=True))
        self.resets += reset
        totals = [t + (r if reset else r - p) for t, r, p in zip(totals, raw, last, strict=True)]
        self._histograms[key] = (bounds, raw, totals, self._scrape)
        return replace(h, buckets=tuple(zip(bounds, totals[:-2], strict=True)),
                       count=totals[-2], sum=totals[-1] if h.sum is not None else None)

    def scraped(self) -> None:
        """One successful scrape is done: forget the series that left the engine long ago."""
        self._scrape += 1
        oldest = self._scrape - FORGET_AFTER
        self._counters = {k: v for k, v in self._counters.items() if v[2] >= oldest}
        self._histograms = {k: v for k, v in self._histograms.items() if v[3] >= oldest}


def bound_cache(cache: dict[str, Any], lines: int) -> None:
    """Start a per-target cache again once it holds far more than one payload's worth."""
    if len(cache) > 2 * lines + CACHE_SLACK:
        cache.clear()


@dataclass
class TargetState:
    accumulator: Accumulator = field(default_factory=Accumulator)
    cache: ParseCache = field(default_factory=dict)  # series text -> parsed labels
    shards: dict[str, LabelKey] = field(default_factory=dict)  # series -> shard labels
    engine: str = ""  # last detected primary engine
    role: str = ""
    up: bool | None = None
    errors: Counter[str] = field(default_factory=Counter)
    invalid_lines: int = 0
    dropped: int = 0  # series not exported: past max_series_per_target

    def parsed(self, lines: int) -> None:
        """Bound the caches after a payload of `lines` lines was parsed and normalized."""
        bound_cache(self.cache, lines)
        bound_cache(self.shards, lines)
