"""The chart's PrometheusRule: alerts/src's templates with thresholds from files/thresholds.yaml
and values, checked by the real promtool, equal to alerts/render.py's output by default."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helm_chart import CHART, chart_copy, one, render, template_text

pytestmark = pytest.mark.integration

RULE_API = "monitoring.coreos.com/v1/PrometheusRule"
SYNCED = sorted((CHART / "files" / "rules").glob("*.yaml"))
RENDERED_RULES = Path(__file__).resolve().parents[2] / "alerts" / "rules"


def needs_rules(test: Any) -> Any:
    """Rule tests need the synced rule files; their absence is a failure, not a skip."""
    return test


def test_the_chart_carries_the_rules() -> None:
    assert SYNCED, "helm/kvscope/files/rules is empty: run python3 scripts/sync_chart.py"


def _groups(sets: tuple[str, ...] = (), chart: Path = CHART) -> list[dict[str, Any]]:
    rule = one(render(sets=sets, api_versions=[RULE_API], chart=chart), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _promtool_check(groups: list[dict[str, Any]], tmp_path: Path) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _thresholds() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "files" / "thresholds.yaml").read_text())
    return data


def _alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


@needs_rules
def test_rendered_rules_pass_promtool(tmp_path: Path) -> None:
    groups = _groups()
    out = _promtool_check(groups, tmp_path)
    count = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {count} rules found" in out


@needs_rules
@pytest.mark.skipif(not RENDERED_RULES.is_dir(), reason="alerts/rules is not in this checkout")
def test_default_rules_equal_what_alerts_render_py_writes() -> None:
    expected = {}
    for path in sorted(RENDERED_RULES.glob("*.yaml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            expected[group["name"]] = group
    assert {g["name"]: g for g in _groups()} == expected


def _numeric_threshold_in_an_expr() -> str:
    """A numeric threshold that some alert's expression uses (found in the synced templates)."""
    numeric = {k for k, v in _thresholds().items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    for path in SYNCED:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    for name in re.findall(r"\$\{([a-z0-9_]+)\}", rule["expr"]):
                        if name in numeric:
                            return name
    raise AssertionError("no alert expression uses a numeric threshold")


@needs_rules
def test_a_threshold_override_changes_the_rules_that_use_it(tmp_path: Path) -> None:
    name = _numeric_threshold_in_an_expr()
    users = {r["alert"] for path in SYNCED
             for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]
             if "alert" in r and f"${{{name}}}" in r["expr"]}
    default = _alerts(_groups())
    changed = _alerts(_groups((f"prometheusRule.thresholds.{name}=12345.5",)))
    for alert in users:
        assert "12345.5" in changed[alert]["expr"], alert
        assert "12345.5" not in default[alert]["expr"], alert
    untouched = set(default) - users
    assert all(default[a] == changed[a] for a in untouched)
    _promtool_check(_groups((f"prometheusRule.thresholds.{name}=12345.5",)), tmp_path)


@needs_rules
def test_runbook_base_url_comes_from_values() -> None:
    assert "runbook_base_url" in _thresholds(), "alerts/thresholds.yaml lost runbook_base_url"
    base = "https://runbooks.invalid/kv"
    alerts = _alerts(_groups((f"prometheusRule.thresholds.runbook_base_url={base}",)))
    urls = [a["annotations"]["runbook_url"] for a in alerts.values()
            if "runbook_url" in a.get("annotations", {})]
    assert urls
    assert all(u.startswith(f"{base}/") for u in urls)


@needs_rules
def test_unknown_threshold_is_refused() -> None:
    result = template_text(sets=["prometheusRule.thresholds.no_such_threshold=1"],
                           api_versions=[RULE_API], check=False)
    assert result.returncode != 0
    assert "prometheusRule.thresholds.no_such_threshold: unknown threshold" in result.stderr


@needs_rules
def test_groups_and_alerts_can_be_left_out_and_labelled() -> None:
    groups = _groups()
    first_group = groups[0]["name"]
    an_alert = next(iter(_alerts(groups)))
    trimmed = _groups((f"prometheusRule.disabledGroups[0]={first_group}",
                       f"prometheusRule.disabledAlerts[0]={an_alert}",
                       "prometheusRule.additionalAlertLabels.team=gpu-platform"))
    assert first_group not in {g["name"] for g in trimmed}
    alerts = _alerts(trimmed)
    assert an_alert not in alerts
    assert alerts
    assert all(a["labels"]["team"] == "gpu-platform" for a in alerts.values())
    records = [r for g in trimmed for r in g["rules"] if "record" in r]
    assert all("team" not in r.get("labels", {}) for r in records)


# The mechanism on its own, with fixture templates (independent of what alerts/ holds today).
TEMPLATE = """groups:
  - name: fixture
    rules:
      - alert: FixtureGPUHot
        expr: DCGM_FI_DEV_GPU_TEMP > ${temp_celsius}
        for: ${temp_for}
        labels: {severity: warning}
        annotations:
          summary: A GPU is hot.
          description: "GPU {{ $labels.gpu }} is at {{ $value }} C."
          runbook_url: ${runbook_base_url}/FixtureGPUHot.md
"""
THRESHOLDS = "runbook_base_url: https://runbooks.invalid\ntemp_celsius: 83\ntemp_for: 5m\n"


def test_substitution_keeps_prometheus_templates_and_checks(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path, rules={"fixture.yaml": TEMPLATE}, thresholds=THRESHOLDS)
    groups = _groups(chart=chart)
    rule = groups[0]["rules"][0]
    assert rule["expr"] == "DCGM_FI_DEV_GPU_TEMP > 83"
    assert rule["for"] == "5m"
    assert rule["annotations"]["description"] == "GPU {{ $labels.gpu }} is at {{ $value }} C."
    assert rule["annotations"]["runbook_url"] == "https://runbooks.invalid/FixtureGPUHot.md"
    _promtool_check(groups, tmp_path)
    hotter = _groups(("prometheusRule.thresholds.temp_celsius=90",), chart=chart)
    assert hotter[0]["rules"][0]["expr"] == "DCGM_FI_DEV_GPU_TEMP > 90"


def test_a_placeholder_without_a_value_fails_with_its_name(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path, rules={"fixture.yaml": TEMPLATE.replace("temp_for", "tmp_for")},
                       thresholds=THRESHOLDS)
    result = template_text(api_versions=[RULE_API], chart=chart, check=False)
    assert result.returncode != 0
    assert "files/rules/fixture.yaml: placeholder ${tmp_for} has no value" in result.stderr


def test_a_template_that_is_not_yaml_fails_with_its_file(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path, rules={"broken.yaml": "groups: [\n"}, thresholds=THRESHOLDS)
    result = template_text(api_versions=[RULE_API], chart=chart, check=False)
    assert result.returncode != 0
    assert "files/rules/broken.yaml:" in result.stderr


def test_no_rule_files_renders_no_prometheus_rule(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path)
    docs = render(api_versions=[RULE_API], chart=chart)
    assert not [d for d in docs if d["kind"] == "PrometheusRule"]
    assert any(d["kind"] == "DaemonSet" for d in docs)


@needs_rules
def test_agent_job_follows_the_chart_name_unless_set() -> None:
    assert "agent_job" in _thresholds(), "alerts/thresholds.yaml lost agent_job"

    def job_exprs(sets: tuple[str, ...]) -> set[str]:
        return {r["expr"] for g in _groups(sets) for r in g["rules"]
                if "alert" in r and "up{job=" in r["expr"]}

    assert job_exprs(()) and all('job="kvscope"' in e for e in job_exprs(()))
    renamed = job_exprs(("nameOverride=gpu-agent",))
    assert renamed and all('job="gpu-agent"' in e for e in renamed)
    forced = job_exprs(("nameOverride=gpu-agent", "prometheusRule.thresholds.agent_job=mine"))
    assert all('job="mine"' in e for e in forced)
