"""Walk the dashboards as Grafana sees them: the generated JSON, and each source module's list
of incident-only panels."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashboards import build

GENERATED = build.GENERATED


@dataclass(frozen=True)
class Query:
    dashboard: str      # uid
    panel: str          # title
    ref: str
    expr: str


def generated() -> dict[str, dict[str, Any]]:
    """slug -> dashboard JSON, as committed."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(GENERATED.glob("*.json"))}


def incident_only() -> dict[str, dict[str, str]]:
    """dashboard uid -> {panel title: scenario} from each source's INCIDENT_ONLY."""
    out: dict[str, dict[str, str]] = {}
    for source in build.sources():
        module = build.load(source)
        out[module.dashboard.uid] = dict(module.INCIDENT_ONLY.scenarios)
    return out


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included (rows themselves excluded)."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries(dashboard: Mapping[str, Any]) -> Iterator[Query]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Query(dashboard["uid"], panel["title"], target["refId"], target["expr"])


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard["templating"]["list"])


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")

# What Grafana puts in for its built-in variables, chosen for a Prometheus scraping every second
# for a minute or less.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace $name and ${name} as Grafana does; an unknown variable is an error."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        raise KeyError(f"unknown variable ${name} in {expr!r}")
    return _VARIABLE.sub(one, expr)


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$", re.S)


def parse_label_values(query: str) -> tuple[str | None, str]:
    """`label_values(selector, label)` -> (selector, label); the only form our variables use."""
    match = _LABEL_VALUES.match(query.strip())
    if match is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    return match.group("selector"), match.group("label")


def dashboard_dir() -> Path:
    return build.HERE
