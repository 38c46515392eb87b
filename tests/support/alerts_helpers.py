"""Shared by the alert tests: the renderer (alerts/render.py, not a package module) and the
alerts/ tree."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
RUNBOOK_BASE = "https://kvscope.example/alerts/runbooks"


def load_renderer() -> ModuleType:
    name = "kvscope_alerts_render"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ALERTS / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rule_files() -> list[Path]:
    return sorted((ALERTS / "rules").glob("*.yaml"))


def alerting_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the rendered files, each with its group name under `_group`."""
    rules = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules.append({**rule, "_group": group["name"], "_file": path.name})
    return rules
