"""Parser for iproute2's `rdma -j resource show`: per-device resource counts (qp, cq, mr, ...).

JSON: `[{"ifindex":0,"ifname":"mlx5_0","pd":3,"cq":27,"qp":261933,"cm_id":0,"mr":0,"ctx":1,
"srq":0}, ...]`. Unknown keys are ignored; non-integer values are skipped. An integer wider than
64 bits is refused as one bad field (`malformed`), the device's other counts kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvscope.parsers.numbers import parse_u64

RESOURCE_TYPES = ("qp", "cq", "mr", "pd", "ctx", "cm_id", "srq")


@dataclass(frozen=True)
class Resources:
    by_device: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    error: str | None = None
    malformed: tuple[tuple[str, str, str], ...] = ()  # (device, type, text) of refused values


@dataclass(frozen=True)
class _TooWide:
    """A JSON integer that does not fit 64 bits (kept as text, never converted)."""

    text: str


def _int_or_too_wide(text: str) -> int | _TooWide:
    # json calls this with the literal's text, so int() never sees a 4300-digit string.
    value = parse_u64(text.removeprefix("-"))
    if value is None:
        return _TooWide(text[:80])
    return -value if text.startswith("-") else value


def parse_resources(text: str) -> Resources:
    try:
        data = json.loads(text, parse_int=_int_or_too_wide)
    except ValueError:
        return Resources(error="not JSON")
    if not isinstance(data, list):
        return Resources(error="JSON is not a list")
    out: dict[str, dict[str, int]] = {}
    malformed: list[tuple[str, str, str]] = []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("ifname"), str):
            continue
        device = entry["ifname"]
        counts: dict[str, int] = {}
        for kind in RESOURCE_TYPES:
            value = entry.get(kind)
            if isinstance(value, _TooWide):
                malformed.append((device, kind, value.text))
            elif isinstance(value, int) and not isinstance(value, bool):
                counts[kind] = value
        out[device] = counts
    return Resources(out, malformed=tuple(malformed))
