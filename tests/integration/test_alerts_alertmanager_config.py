"""The example Alertmanager configuration: valid for Debian's amtool, and routes severities to
the receivers the README promises (critical pages, warning and info make tickets)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from alerts_helpers import ALERTS

pytestmark = pytest.mark.integration

CONFIG = ALERTS / "alertmanager" / "alertmanager.yml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("amtool")
    assert path is not None, "amtool comes with Debian's prometheus-alertmanager (tests/run.sh)"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60, check=False)


def test_amtool_accepts_the_example() -> None:
    out = amtool("check-config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=critical", "alertname=GPULost", "instance=node-a:9447"], "page"),
    (["severity=warning", "alertname=GPUUtilizationImbalance"], "ticket"),
    (["severity=info", "alertname=GPUUtilizationLow"], "ticket"),
    (["alertname=SomethingElse"], "ticket"),
])
def test_routes_by_severity(labels: list[str], receiver: str) -> None:
    out = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == receiver


def test_groups_by_node_and_pd_group_and_inhibits_under_root_causes() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["route"]["group_by"] == ["instance", "pd_group"]
    inhibits = {tuple(rule["source_matchers"]): rule for rule in config["inhibit_rules"]}
    assert inhibits[('alertname="GPULost"',)]["equal"] == ["instance", "gpu"]
    assert inhibits[('alertname="KvscopeAgentDown"',)]["equal"] == ["instance"]
    assert inhibits[('alertname="RDMAPortDown"',)]["equal"] == ["instance", "device"]
    # Receivers of the example only ever dial loopback.
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook["url"].startswith("http://127.0.0.1:")
