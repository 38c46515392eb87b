"""The ServiceMonitor's label handling, applied by a real Prometheus to a real agent: an engine
series keeps the engine's own `instance`, every other series' `instance` is the node name, the
GPU holder's pod keeps the name `pod` and nothing is attributed to the agent's own pod. That is
what kvscope's rules and dashboards query (alerts/src/engine.yaml, dashboards/common.py). No
operator here, so the test writes the scrape config the operator generates for an endpoint: its
pod/namespace/container target labels, then the chart's relabelings, with the chart's
honorLabels."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import Agent, free_port
from helm_chart import one, render

pytestmark = pytest.mark.integration

NODE = "gpu-node-7"
AGENT_POD = "kvscope-x7k2p"


def _snake(relabel: dict[str, Any]) -> dict[str, Any]:
    """A ServiceMonitor RelabelConfig in Prometheus' own spelling."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {names.get(k, k): v for k, v in relabel.items()}


def _scrape_config(endpoint: dict[str, Any], agent: Agent) -> dict[str, Any]:
    operator_targets = [  # what the operator adds before the endpoint's own relabelings
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    ]
    return {
        "job_name": "kvscope",
        "scrape_interval": "1s",
        "honor_labels": endpoint["honorLabels"],
        "metrics_path": endpoint["path"],
        "static_configs": [{
            "targets": [agent.base.removeprefix("http://")],
            "labels": {"__meta_kubernetes_pod_node_name": NODE,
                       "__meta_kubernetes_namespace": "gpu-monitoring",
                       "__meta_kubernetes_pod_name": AGENT_POD,
                       "__meta_kubernetes_pod_container_name": "kvscope"},
        }],
        "relabel_configs": operator_targets + [_snake(r) for r in endpoint["relabelings"]],
    }


class Prometheus:
    def __init__(self, tmp: Path, scrape: dict[str, Any]) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"},
                                          "scrape_configs": [scrape]}))
        self._log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                result: list[dict[str, Any]] = json.load(resp)["data"]["result"]
                return result
        except OSError:
            return []

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited"
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.3)
        raise AssertionError(f"prometheus never returned {promql}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with Agent("serve", "--scenario", "healthy") as running:
        running.wait_ready()
        yield running


@contextmanager
def _scrape(tmp_path: Path, agent: Agent, sets: tuple[str, ...] = ()
            ) -> Iterator[Prometheus]:
    monitor = one(render(sets=("prometheus.forceCRDs=true", *sets)), "ServiceMonitor")
    prometheus = Prometheus(tmp_path, _scrape_config(monitor["spec"]["endpoints"][0], agent))
    try:
        yield prometheus
    finally:
        prometheus.stop()


def test_default_labels_are_the_ones_the_rules_query(tmp_path: Path, agent: Agent) -> None:
    with _scrape(tmp_path, agent) as prometheus:
        engines = prometheus.wait_for("kvscope_engine_up")
        gpus = prometheus.wait_for("DCGM_FI_DEV_GPU_TEMP")
        health = prometheus.wait_for("kvscope_collector_up")
    engine_instances = {s["metric"]["instance"] for s in engines}
    assert NODE not in engine_instances
    assert all(re.fullmatch(r"[\w.-]+:\d+(/.*)?", i) for i in engine_instances)
    assert {s["metric"]["instance"] for s in gpus} == {NODE}
    assert {s["metric"]["instance"] for s in health} == {NODE}
    held = {s["metric"]["pod"] for s in gpus if "pod" in s["metric"]}
    assert held and AGENT_POD not in held
    # Series kvscope sets no pod on are not given the agent's pod by the target.
    assert not any("pod" in s["metric"] or "namespace" in s["metric"] for s in health)
    assert not any(k.startswith("exported_") for s in gpus + engines for k in s["metric"])


def test_dcgm_exporter_style_labels_when_asked(tmp_path: Path, agent: Agent) -> None:
    sets = ("prometheus.monitor.keepAgentPodLabels=true", "prometheus.monitor.honorLabels=false")
    with _scrape(tmp_path, agent, sets) as prometheus:
        gpus = prometheus.wait_for("DCGM_FI_DEV_GPU_TEMP")
    assert {s["metric"]["pod"] for s in gpus} == {AGENT_POD}
    assert {s["metric"].get("exported_pod") for s in gpus} - {None}
