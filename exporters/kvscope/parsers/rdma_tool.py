"""Parser for iproute2's `rdma -j resource show`: per-device resource counts (qp, cq, mr, ...).

JSON: `[{"ifindex":0,"ifname":"mlx5_0","pd":3,"cq":27,"qp":261933,"cm_id":0,"mr":0,"ctx":1,
"srq":0}, ...]`. Unknown keys are ignored; non-integer values are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

RESOURCE_TYPES = ("qp", "cq", "mr", "pd", "ctx", "cm_id", "srq")


@dataclass(frozen=True)
class Resources:
    by_device: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    error: str | None = None


def parse_resources(text: str) -> Resources:
    try:
        data = json.loads(text)
    except ValueError:
        return Resources(error="not JSON")
    if not isinstance(data, list):
        return Resources(error="JSON is not a list")
    out: dict[str, dict[str, int]] = {}
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("ifname"), str):
            continue
        counts = {k: v for k in RESOURCE_TYPES
                  if isinstance(v := entry.get(k), int) and not isinstance(v, bool)}
        out[entry["ifname"]] = counts
    return Resources(out)
