"""The rule files under alerts/: fresh, accepted by promtool, unit-tested by promtool, and
complete (severity, static summary, description naming where, runbook for every alert).

Real promtool (Debian's prometheus package, installed by tests/run.sh).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts_helpers import ALERTS, RUNBOOK_BASE, alerting_rules, load_renderer, rule_files

pytestmark = pytest.mark.integration

# The alert names issue #6 fixes (a contract with dashboards, runbooks and users).
CONTRACT_ALERTS = {
    "GPUUtilizationImbalance", "GPUUtilizationLow", "GPUMemoryOOMRisk", "GPUMemoryImbalance",
    "GPUTemperatureHigh", "GPUThrottling", "GPUXidError", "GPULost", "GPUPCIeLinkDegraded",
    "GPURowRemapFailure", "GPUDriverVersionSkew",
    "NVLinkDown", "NVLinkErrorsIncreasing", "TensorParallelOverPCIe", "PDPairIPCUnavailable",
    "KVTransferBypassingNVLink", "PDGroupSpansSwitchTypes",
    "RDMAPortDown", "RDMALinkDegraded", "RDMAQPCreateFailures", "RDMAQPProfileUnsupported",
    "RDMAQPExhaustion", "RDMABandwidthThrottled", "RDMAPortErrors",
    "EngineDown", "EngineKVCacheNearFull", "EnginePrefixCacheHitRateLow", "EngineQueueBacklog",
    "EngineTTFTHigh", "EngineErrorRateHigh", "EnginePreemptionsHigh", "KVTransferFailures",
    "KVTransferThroughputLow",
    "KvscopeCollectorDown", "KvscopeAgentDown",
}
AREAS = {"gpu", "nvlink-topology", "rdma", "engine", "pd", "kvscope", "recording"}
# Labels that say where: at least one must be named in every description.
WHERE = re.compile(r"\{\{ \$labels\.(instance|Hostname|gpu|pod|device|pd_group|cluster|"
                   r"prefill_pod|exported_instance|job) \}\}")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool comes with Debian's prometheus (tests/run.sh)"
    return path


def test_rendered_rules_are_fresh() -> None:
    render = load_renderer()
    stale = render.stale(render.render_all())
    assert not stale, f"alerts/rules is stale ({stale}): run python alerts/render.py"


def test_rule_files_cover_every_area() -> None:
    assert {p.stem for p in (ALERTS / "src").glob("*.yaml")} == AREAS
    assert {p.stem for p in rule_files()} == AREAS


@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


UNIT_TESTS = sorted((ALERTS / "tests").glob("*.test.yaml"))


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests(path: Path) -> None:
    out = subprocess.run([promtool(), "test", "rules", path.name], capture_output=True,
                         text=True, timeout=120, check=False, cwd=path.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_contract_alert_exists() -> None:
    names = {r["alert"] for r in alerting_rules()}
    assert names >= CONTRACT_ALERTS, sorted(CONTRACT_ALERTS - names)


@pytest.mark.parametrize("rule", alerting_rules(),
                         ids=lambda r: f"{r['alert']}-{r['labels'].get('severity')}")
def test_alert_carries_severity_summary_description_runbook(rule: dict[str, object]) -> None:
    labels = rule["labels"]
    annotations = rule["annotations"]
    assert isinstance(labels, dict) and isinstance(annotations, dict)
    assert labels["severity"] in {"critical", "warning", "info"}
    assert "{{" not in annotations["summary"], "summary must be static"
    assert WHERE.search(annotations["description"]), "description must name where"
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}/{rule['alert']}.md"


def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    names = {r["alert"] for r in alerting_rules()}
    runbooks = {p.stem for p in (ALERTS / "runbooks").glob("*.md")}
    assert names == runbooks, {"missing": sorted(names - runbooks),
                               "orphans": sorted(runbooks - names)}
    for name in names:
        text = (ALERTS / "runbooks" / f"{name}.md").read_text()
        for heading in ("## Meaning", "## Impact", "## Confirm", "## Fix"):
            assert heading in text, f"{name}.md lacks {heading}"


def test_one_test_file_per_alert_group_and_every_severity_tested_firing() -> None:
    groups = {r["_group"] for r in alerting_rules()}
    tested: set[tuple[str, str]] = set()
    files_for_group: dict[str, int] = {}
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text())
        order = doc.get("group_eval_order") or []
        alert_groups = [g for g in order if g in groups]
        for g in alert_groups:
            files_for_group[g] = files_for_group.get(g, 0) + 1
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    tested.add((case["alertname"], alert["exp_labels"]["severity"]))
    untested = {(r["alert"], r["labels"]["severity"]) for r in alerting_rules()} - tested
    assert not untested, sorted(untested)
    # kvscope-agent needs no recording rules and so no evaluation order; every other group has
    # exactly one file naming it.
    assert {g: n for g, n in files_for_group.items() if n != 1} == {}
    assert groups - set(files_for_group) <= {"kvscope-agent"}
