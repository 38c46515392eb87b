"""End to end: every incident scenario pages through a real Prometheus and a real Alertmanager.

One run starts, on loopback:
* one `kvscope demo --scenario X` agent per simulated node (several for incidents that span
  nodes, each with its own NODE_NAME), all in parallel;
* Debian's Prometheus scraping them every 2 seconds and evaluating a temporary copy of
  alerts/rules rendered with shortened durations: every `for` is 5s (EngineTTFTHigh's 60s, the
  agent and collector alerts' 15-20s) and rate windows are 1m, so the whole run takes about two
  minutes (the copy is rendered by alerts/render.py with overrides; expressions and thresholds
  are the shipped ones);
* Debian's Alertmanager with the example routing of alerts/alertmanager/alertmanager.yml: its
  routes, grouping and inhibit rules as shipped, only the receivers' URLs pointed at this test's
  webhook server and the group timers shortened;
* an aiohttp webhook receiver in the test, recording every notification.

Each incident's agents are scraped by their own job whose metric relabelling puts the incident's
name into `namespace` (of every series: the sim's pods all live in `inference`), so the incidents
of one run never join each other; the job label stays `kvscope`. Agents are scraped with
honor_labels: true, as the README asks.

Asserted: every expected page arrives at the right receiver with its labels, severity and runbook
link; alerts under a root cause are inhibited (Alertmanager holds them, suppressed, and never
sends them); the healthy node pages nobody and Prometheus has no alert for it at all.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts_helpers import RUNBOOK_BASE, load_renderer
from alerts_processes import (
    Webhook,
    agent_env,
    alertmanager_config,
    binary,
    get_json,
    listen_port,
    process,
    serve_webhook,
    wait_http,
)

pytestmark = pytest.mark.integration

SHORT_FOR = "5s"
DEADLINE = 150.0  # seconds for every expected page to arrive
SETTLE = 10.0  # seconds after the last expected page in which nothing unexpected may arrive


@dataclass(frozen=True)
class Page:
    receiver: str  # page | ticket
    alertname: str
    severity: str
    labels: dict[str, str] = field(default_factory=dict)  # a subset the alert must carry


@dataclass(frozen=True)
class Incident:
    name: str
    nodes: tuple[str, ...]  # scenario of each simulated node; node names are <incident>-<i>
    pages: tuple[Page, ...] = ()
    inhibited: tuple[Page, ...] = ()  # reach Alertmanager, suppressed, never sent
    dead_target: bool = False  # a scrape target where no agent listens
    # Seconds of healthy node before the fault. A fault read against the node's own history
    # (RDMALinkDegraded's max_over_time) must strike after Prometheus' first scrapes, which
    # start once every agent listens.
    fault_delay: float = 8.0


def crit(alertname: str, **labels: str) -> Page:
    return Page("page", alertname, "critical", labels)


def warn(alertname: str, **labels: str) -> Page:
    return Page("ticket", alertname, "warning", labels)


INCIDENTS: tuple[Incident, ...] = (
    Incident("healthy", ("healthy",)),
    Incident("gpu0-hotspot", ("gpu0-hotspot",),
             (warn("GPUUtilizationImbalance", scope="node", Hostname="gpu0-hotspot-0"),)),
    Incident("oom-risk", ("oom-risk",),
             (crit("GPUMemoryOOMRisk", gpu="2", signal="used_ratio"),
              warn("GPUMemoryImbalance", gpu="2", pod="sglang-prefill-0"))),
    Incident("xid-79", ("xid-79",), (crit("GPULost", gpu="3"),),
             inhibited=(crit("GPUXidError", gpu="3", xid="79"),)),
    # The hung call holds the driver, so every NVML reader stops; kvscope_gpu_up says 0 for
    # each GPU (the fast tier answers at its deadline), so GPULost pages from boot.
    Incident("nvml-hang", ("nvml-hang",), (
        warn("KvscopeCollectorDown", collector="gpu"),
        warn("KvscopeCollectorDown", collector="nvlink"),
        *(crit("GPULost", gpu=str(g)) for g in range(8)))),
    Incident("nvlink-degraded", ("nvlink-degraded",),
             (warn("NVLinkDown", gpu="5"), warn("NVLinkErrorsIncreasing", gpu="5"))),
    Incident("nvlink-bypass", ("nvlink-bypass",),
             (warn("PDPairIPCUnavailable", reason="peer_gpus_not_visible",
                   prefill_pod="sglang-prefill-0"),
              warn("KVTransferBypassingNVLink", pod="sglang-prefill-0", path="NV18"))),
    Incident("tp-over-pcie", ("tp-over-pcie",),
             (warn("TensorParallelOverPCIe", pod="sglang-prefill-0"),
              warn("TensorParallelOverPCIe", pod="sglang-decode-0"))),
    Incident("qp-failure", ("qp-failure",),
             (crit("RDMAQPCreateFailures", source="driver", device="erdma_0"),
              crit("RDMAQPCreateFailures", source="engine_log", framework="dlslime"),
              warn("RDMAQPProfileUnsupported", device="erdma_0", profile="dlslime-0.0.1"))),
    Incident("erdma-throttle", ("erdma-throttle",),
             (warn("RDMABandwidthThrottled", device="erdma_0"),
              warn("RDMAQPProfileUnsupported", device="erdma_0", profile="dlslime-0.0.1"))),
    Incident("link-degraded", ("link-degraded",), (warn("RDMALinkDegraded", device="mlx5_1"),),
             fault_delay=40.0),
    # The port's rate drops with it: RDMALinkDegraded fires and is inhibited.
    Incident("port-down", ("port-down",), (crit("RDMAPortDown", device="mlx5_2"),),
             inhibited=(warn("RDMALinkDegraded", device="mlx5_2"),), fault_delay=40.0),
    Incident("kv-cache-full", ("kv-cache-full",),
             (crit("EngineKVCacheNearFull", pod="sglang-decode-0", role="decode"),
              warn("EnginePreemptionsHigh", pod="sglang-decode-0"))),
    Incident("prefix-hit-low", ("prefix-hit-low",),
             (crit("EnginePrefixCacheHitRateLow", pod="sglang-prefill-0", role="prefill"),
              crit("EnginePrefixCacheHitRateLow", engine="vllm"),
              crit("EnginePrefixCacheHitRateLow", engine="lmcache"),
              crit("EngineTTFTHigh", pod="sglang-prefill-0"))),
    Incident("queue-backlog", ("queue-backlog",),
             (warn("EngineQueueBacklog", pod="sglang-prefill-0"),
              crit("EngineTTFTHigh", pod="sglang-prefill-0"))),
    Incident("kv-transfer-slow", ("kv-transfer-slow",),
             (warn("KVTransferThroughputLow", pod="sglang-prefill-0"),
              crit("EngineTTFTHigh", pod="sglang-decode-0"))),
    Incident("engine-down", ("engine-down",),
             (crit("EngineDown", pod="sglang-decode-0", reason="connect"),)),
    Incident("driver-skew", ("healthy", "driver-skew"),
             (warn("GPUDriverVersionSkew", Hostname="driver-skew-0",
                   DCGM_FI_DRIVER_VERSION="580.95.05"),
              warn("GPUDriverVersionSkew", Hostname="driver-skew-1",
                   DCGM_FI_DRIVER_VERSION="570.133.20"))),
    Incident("pd-switch-types", ("healthy", "pd-switch-types"),
             (warn("PDGroupSpansSwitchTypes", Hostname="pd-switch-types-0",
                   switch_type="infiniband"),
              warn("PDGroupSpansSwitchTypes", Hostname="pd-switch-types-1",
                   switch_type="ethernet"))),
    Incident("agent-down", (), (crit("KvscopeAgentDown", scope="target"),), dead_target=True),
)


# ---- processes --------------------------------------------------------------------------------

# ---- configuration ----------------------------------------------------------------------------

def short_rules(out: Path) -> None:
    """The rules as shipped, with every `for` at SHORT_FOR and shorter windows (test only)."""
    render = load_renderer()
    values = render.load_thresholds()
    overrides: dict[str, str] = {name: SHORT_FOR for name in values if name.endswith("_for")}
    # A 1m rate window holds a few hundred simulated requests: TTFT's p99 from histogram
    # buckets is stable over that many, jumpy over the few dozen of a shorter window. While the
    # window is still filling after Prometheus starts (up to ~50 s for the simulated vLLM at
    # 3 requests/s) it is not, hence a `for` longer than that.
    # A scrape that times out on a busy CI machine must not read as a dead agent: the agent and
    # collector alerts wait longer than one slow scrape.
    overrides.update(rate_window="1m", engine_ttft_for="60s", gpu_xid_window="2m",
                     gpu_memory_forecast_window="30s", kvscope_agent_down_for="20s",
                     kvscope_collector_down_for="15s")
    render.write(render.render_all(values=render.with_overrides(overrides)), out)


def prometheus_config(targets: dict[str, list[str]], am_port: int, rules: Path) -> dict[str, Any]:
    jobs = []
    for incident, addresses in targets.items():
        jobs.append({
            "job_name": f"kvscope-{incident}",
            "honor_labels": True,
            "static_configs": [{"targets": addresses}],
            "relabel_configs": [{"target_label": "job", "replacement": "kvscope"}],
            "metric_relabel_configs": [{"source_labels": ["namespace"], "regex": "inference|",
                                        "target_label": "namespace", "replacement": incident}],
        })
    return {"global": {"scrape_interval": "2s", "scrape_timeout": "1900ms",
                       "evaluation_interval": "1s"},
            "rule_files": [str(rules / "*.yaml")],
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": jobs}


# ---- matching ---------------------------------------------------------------------------------

def belongs(labels: dict[str, str], incident: Incident, instances: dict[str, list[str]]) -> bool:
    nodes = {f"{incident.name}-{i}" for i in range(len(incident.nodes))}
    return (labels.get("namespace") == incident.name or labels.get("Hostname") in nodes
            or labels.get("instance") in instances[incident.name])


def matches(page: Page, receiver: str, labels: dict[str, str]) -> bool:
    return (receiver == page.receiver and labels.get("alertname") == page.alertname
            and labels.get("severity") == page.severity
            and all(labels.get(k) == v for k, v in page.labels.items()))


def missing_pages(hook: Webhook, instances: dict[str, list[str]]) -> list[str]:
    missing = []
    for incident in INCIDENTS:
        for page in incident.pages:
            if not any(matches(page, r.receiver, r.alert["labels"])
                       and belongs(r.alert["labels"], incident, instances)
                       for r in hook.received):
                missing.append(f"{incident.name}: {page}")
    return missing


WHERE_KEYS = ("namespace", "Hostname", "gpu", "pod", "device", "engine", "instance")


def short(receiver: str, labels: dict[str, str]) -> str:
    where = ",".join(f"{k}={labels[k]}" for k in WHERE_KEYS if k in labels)
    return f"{receiver}:{labels['alertname']}/{labels.get('severity')}[{where}]"


def summary(hook: Webhook) -> list[str]:
    return [short(r.receiver, r.alert["labels"]) for r in hook.received]


def unexpected(hook: Webhook, instances: dict[str, list[str]]) -> list[str]:
    out = []
    for r in hook.received:
        labels = r.alert["labels"]
        owners = [i for i in INCIDENTS if belongs(labels, i, instances)]
        if not any(matches(p, r.receiver, labels) for i in owners for p in i.pages):
            out.append(short(r.receiver, labels))
    return out


# ---- the test ---------------------------------------------------------------------------------

@pytest.fixture
async def webhook() -> AsyncIterator[tuple[Webhook, int]]:
    async with serve_webhook() as served:
        yield served


async def test_every_incident_pages_through_alertmanager(
        webhook: tuple[Webhook, int], tmp_path: Path) -> None:
    hook, hook_port = webhook
    prom_port, am_port = listen_port(), listen_port()
    rules = tmp_path / "rules"
    short_rules(rules)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(hook_port)))

    with ExitStack() as stack:
        stack.enter_context(process([
            binary("prometheus-alertmanager", "alertmanager"),
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
        ], tmp_path / "alertmanager.log"))
        instances: dict[str, list[str]] = {}
        launched = time.monotonic()
        for incident in INCIDENTS:
            instances[incident.name] = []
            for i, scenario in enumerate(incident.nodes):
                port = listen_port()
                instances[incident.name].append(f"127.0.0.1:{port}")
                node = f"{incident.name}-{i}"
                stack.enter_context(process([
                    sys.executable, "-m", "kvscope.cli", "demo", "--scenario", scenario,
                    "--sim.fault-delay", str(incident.fault_delay),
                    "--web.listen-address", f"127.0.0.1:{port}",
                ], tmp_path / f"agent-{node}.log", env=agent_env(node)))
            if incident.dead_target:
                instances[incident.name].append(f"127.0.0.1:{listen_port()}")
        agents = [a for i in INCIDENTS if not i.dead_target for a in instances[i.name]]
        await asyncio.gather(*(asyncio.to_thread(wait_http, f"http://{a}/metrics", 120)
                               for a in agents))
        listening = time.monotonic()
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(prometheus_config(instances, am_port, rules)))
        stack.enter_context(process([
            binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ], tmp_path / "prometheus.log"))
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{am_port}/-/ready")
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{prom_port}/-/ready")

        started = time.monotonic()
        while missing_pages(hook, instances) and time.monotonic() - started < DEADLINE:
            await hook.wait(2.0)
        print(f"agents listening after {listening - launched:.1f} s; every page in "
              f"{time.monotonic() - started:.1f} s after Prometheus started")
        assert not missing_pages(hook, instances), (
            f"pages that never arrived: {missing_pages(hook, instances)}\n"
            f"received: {sorted(set(summary(hook)))}")
        await asyncio.sleep(SETTLE)

        # Every page carries its runbook and its severity's receiver.
        for r in hook.received:
            name = r.alert["labels"]["alertname"]
            assert r.alert["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}/{name}.md"
            assert r.alert["annotations"]["summary"] and r.alert["annotations"]["description"]
        assert not unexpected(hook, instances), sorted(set(unexpected(hook, instances)))

        # Inhibited alerts reached Alertmanager and were held back there.
        am_alerts = await asyncio.to_thread(
            get_json, f"http://127.0.0.1:{am_port}/api/v2/alerts?inhibited=true")
        for incident in INCIDENTS:
            for page in incident.inhibited:
                held = [a for a in am_alerts if belongs(a["labels"], incident, instances)
                        and matches(page, page.receiver, a["labels"])]
                assert held, f"{incident.name}: {page} never reached Alertmanager"
                assert all(a["status"]["inhibitedBy"] for a in held), held
                assert not any(matches(page, r.receiver, r.alert["labels"])
                               and belongs(r.alert["labels"], incident, instances)
                               for r in hook.received), f"{page} was sent"

        # The healthy node pages nobody, and Prometheus has no firing alert for it either (a
        # pending one may come and go while the rate windows fill: that is what `for` is for).
        healthy = next(i for i in INCIDENTS if i.name == "healthy")
        prom_alerts = (await asyncio.to_thread(
            get_json, f"http://127.0.0.1:{prom_port}/api/v1/alerts"))["data"]["alerts"]
        assert not [a for a in prom_alerts if belongs(a["labels"], healthy, instances)
                    and a["state"] == "firing"]
        assert not [r for r in hook.received if belongs(r.alert["labels"], healthy, instances)]
