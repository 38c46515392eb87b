"""Render helm/kvscope with the real helm binary (tests/setup.d/helm.sh puts it in .tools/bin)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kvscope"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
# Every Prometheus Operator API the chart may render, as `helm --api-versions` names them.
OPERATOR_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor",
                 "monitoring.coreos.com/v1/PrometheusRule",
                 "monitoring.coreos.com/v1alpha1/AlertmanagerConfig")


def helm_binary() -> str:
    local = REPO / ".tools" / "bin" / "helm"
    if local.is_file():
        return str(local)
    found = shutil.which("helm")
    if found is None:
        pytest.skip("helm is not installed (tests/setup.d/helm.sh installs it)")
    return found


def lint(*values_files: str | Path, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    """`helm lint --strict` (warnings fail too) with the given ci/ values files."""
    args = ["lint", str(chart), "--strict", "--namespace", "gpu-monitoring"]
    for values in values_files:
        args += ["-f", str(CHART / "ci" / values)]
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def template_text(*values_files: str | Path, sets: Iterable[str] = (),
                  api_versions: Iterable[str] = (), chart: Path = CHART, check: bool = True,
                  show_only: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ["template", "kvscope", str(chart), "--namespace", "gpu-monitoring"]
    for values in values_files:
        path = Path(values)
        args += ["-f", str(path if path.is_absolute() else CHART / "ci" / path)]
    for item in sets:
        args += ["--set", item]
    for api in api_versions:
        args += ["--api-versions", api]
    if show_only:
        args += ["--show-only", show_only]
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=60,
                            check=False)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
    return result


def render(*values_files: str | Path, sets: Iterable[str] = (),
           api_versions: Iterable[str] = (), chart: Path = CHART) -> list[dict[str, Any]]:
    """Every manifest `helm template` renders, parsed."""
    text = template_text(*values_files, sets=sets, api_versions=api_versions, chart=chart).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def agent_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    containers = [c for c in pod["containers"] if c["name"] == "kvscope"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def chart_copy(tmp_path: Path, rules: dict[str, str] | None = None,
               thresholds: str | None = None, dashboards: dict[str, str] | None = None) -> Path:
    """A copy of the chart with the given synced files instead of the committed ones."""
    chart = tmp_path / "kvscope"
    shutil.copytree(CHART, chart)
    files = chart / "files"
    for sub in ("rules", "dashboards"):
        shutil.rmtree(files / sub, ignore_errors=True)
        (files / sub).mkdir(parents=True)
    (files / "thresholds.yaml").unlink(missing_ok=True)
    for name, text in (rules or {}).items():
        (files / "rules" / name).write_text(text)
    for name, text in (dashboards or {}).items():
        (files / "dashboards" / name).write_text(text)
    if thresholds is not None:
        (files / "thresholds.yaml").write_text(thresholds)
    return chart
