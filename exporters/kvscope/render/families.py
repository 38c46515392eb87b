"""Small builders for metric families.

Collectors yield prometheus_client `Metric` objects (client_python's const-metric pattern); these
helpers keep the naming rules in one place. Counters named with `_total` follow the Prometheus
convention. dcgm-exporter's counters (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, ...) carry no
`_total` suffix; they are kept verbatim for compatibility, and the OpenMetrics renderer types them
`unknown` because OpenMetrics requires counter samples to end in `_total`.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.core import Metric

Labels = Mapping[str, str]


class Family:
    """One metric family being filled with samples."""

    def __init__(self, name: str, documentation: str, kind: str) -> None:
        self.sample_name = name
        base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
        if kind == "info":
            if not name.endswith("_info"):
                raise ValueError(f"info metric {name!r} must end in _info")
            base = name[: -len("_info")]
        self.metric = Metric(base, documentation, kind)

    def add(self, labels: Labels, value: float) -> Family:
        self.metric.add_sample(self.sample_name, dict(labels), float(value))
        return self

    def __len__(self) -> int:
        return len(self.metric.samples)


def gauge(name: str, documentation: str) -> Family:
    return Family(name, documentation, "gauge")


def counter(name: str, documentation: str) -> Family:
    return Family(name, documentation, "counter")


def info(name: str, documentation: str) -> Family:
    return Family(name, documentation, "info")


def non_empty(*families: Family) -> list[Metric]:
    """Families with at least one sample: an absent fact is an absent series, never a zero."""
    return [f.metric for f in families if len(f)]
