"""Rendering snapshots into exposition bytes (Prometheus text 0.0.4 and OpenMetrics 1.0)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

TEXT_CONTENT_TYPE = CONTENT_TYPE_LATEST
OPENMETRICS_CONTENT_TYPE = OPENMETRICS_TYPE


class _Families:
    """The minimal registry interface prometheus_client's renderers need."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _for_openmetrics(family: Metric) -> Metric:
    # OpenMetrics demands `_total` on counter samples; DCGM's compatibility counters lack it.
    if family.type == "counter" and any(not s.name.endswith(("_total", "_created"))
                                        for s in family.samples):
        clone = Metric(family.name, family.documentation, "unknown")
        clone.samples = list(family.samples)
        return clone
    return family


def merge(families: Iterable[Metric]) -> list[Metric]:
    """Join families of the same name from different tiers or sources into one.

    A family may be produced by several pollers (e.g. per-GPU samples from the fast tier and the
    lost-GPU markers from the static tier); the exposition formats allow one HELP/TYPE per name.
    """
    by_name: dict[str, Metric] = {}
    for fam in families:
        existing = by_name.get(fam.name)
        if existing is None:
            copy = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            copy.samples = list(fam.samples)
            by_name[fam.name] = copy
        else:
            existing.samples.extend(fam.samples)
    return list(by_name.values())


def render_text(families: Iterable[Metric]) -> bytes:
    body: bytes = generate_text(_Families(families))
    return body


def render_openmetrics(families: Iterable[Metric]) -> bytes:
    registry = _Families(_for_openmetrics(f) for f in families)
    body: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    return body
