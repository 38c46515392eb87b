"""The README's "Deploy" examples work: the install command's values exist in the chart, and the
scrape job for clusters without the operator is a valid Prometheus configuration."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from helm_chart import OPERATOR_APIS, one, render

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _deploy_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Deploy\n")
    return text[start:text.index("\n## ", start + 1)]


def _block_after(heading: str, language: str) -> str:
    section = _deploy_section()
    after = section[section.index(heading):]
    match = re.search(rf"```{language}\n(.*?)```", after, re.S)
    assert match is not None, f"no {language} block after {heading}"
    return match.group(1)


def test_install_command_values_exist_and_label_the_operator_objects() -> None:
    block = _block_after("### Install with kube-prometheus-stack", "sh")
    command = block.split("helm test")[0].replace("\\\n", " ")
    words = shlex.split(command)
    sets = [words[i + 1].replace("REGISTRY", "registry.example.invalid")
            for i, w in enumerate(words) if w == "--set"]
    assert sets
    docs = render(sets=sets, api_versions=OPERATOR_APIS)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        labels = one(docs, kind)["metadata"]["labels"]
        assert labels["release"] == "kube-prometheus-stack"
    container = one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.invalid/gpu/kvscope:0.1.0"


def test_scrape_job_without_the_operator_is_valid(tmp_path: Path) -> None:
    block = _block_after("### Install without the Prometheus Operator", "yaml")
    rules = tmp_path / "rules"
    if (REPO / "alerts" / "rules").is_dir():
        shutil.copytree(REPO / "alerts" / "rules", rules)
    else:
        rules.mkdir()
    # Debian's Prometheus is built without Kubernetes service discovery, so a static target
    # stands in for it; everything else (relabelings, rule files) is checked as written.
    sd = re.search(r"^ *kubernetes_sd_configs: .*$", block, re.M)
    assert sd is not None
    text = block.replace(sd.group(0), "    static_configs: [{targets: ['127.0.0.1:9447']}]")
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/kvscope/*.yaml", f"{rules}/*.yaml"))
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # The same relabelings as the chart's ServiceMonitor: instance is the node.
    assert "target_label: instance" in block
    assert "honor_labels: true" in block
