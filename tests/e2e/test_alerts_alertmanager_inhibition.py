"""Every inhibit rule of the example routing, in a real Alertmanager (Debian's package).

Alerts are posted straight to Alertmanager's API, as Prometheus would send them, so each root
cause can be paired with the noise it must silence, including KvscopeAgentDown, which the
simulator cannot produce next to live node alerts (a dead agent's series go stale). The
example's receivers point at this test's webhook and its group timers are shortened; routes and
inhibit rules are the shipped ones.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts_helpers import RUNBOOK_BASE
from alerts_processes import (
    alertmanager_config,
    binary,
    get_json,
    listen_port,
    process,
    serve_webhook,
    wait_http,
)

pytestmark = pytest.mark.integration

NODE_A, NODE_B, NODE_C = "127.0.0.1:9447", "127.0.0.2:9447", "127.0.0.3:9447"


def alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, "severity": severity, "job": "kvscope", **labels},
            "annotations": {"summary": name, "description": name,
                            "runbook_url": f"{RUNBOOK_BASE}/{name}.md"}}


# (root cause, alerts it must silence, alerts it must leave alone)
CASES = [
    (alert("GPULost", "critical", instance=NODE_A, gpu="3"),
     [alert("GPUXidError", "critical", instance=NODE_A, gpu="3", xid="79"),
      alert("GPUMemoryOOMRisk", "warning", instance=NODE_A, gpu="3", signal="used_ratio")],
     [alert("GPUXidError", "critical", instance=NODE_A, gpu="4", xid="13"),
      alert("GPUXidError", "critical", instance=NODE_C, gpu="3", xid="48")]),
    (alert("KvscopeAgentDown", "critical", instance=NODE_B, scope="target"),
     [alert("GPUUtilizationImbalance", "warning", instance=NODE_B, scope="node"),
      alert("RDMAPortDown", "critical", instance=NODE_B, device="mlx5_0", port="1")],
     [alert("GPUUtilizationImbalance", "warning", instance=NODE_A, scope="node")]),
    (alert("RDMAPortDown", "critical", instance=NODE_A, device="mlx5_2", port="1"),
     [alert("RDMALinkDegraded", "warning", instance=NODE_A, device="mlx5_2", port="1"),
      alert("RDMAPortErrors", "warning", instance=NODE_A, device="mlx5_2", port="1")],
     [alert("RDMALinkDegraded", "warning", instance=NODE_A, device="mlx5_1", port="1")]),
    (alert("EngineKVCacheNearFull", "critical", instance="127.0.0.5:30000", pod="decode-0"),
     [alert("EngineKVCacheNearFull", "warning", instance="127.0.0.5:30000", pod="decode-0")],
     [alert("EngineKVCacheNearFull", "warning", instance="127.0.0.6:30000", pod="decode-1")]),
]


def post(url: str, alerts: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(url, data=json.dumps(alerts).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200


def key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


async def test_root_causes_silence_their_noise(tmp_path: Path) -> None:
    async with serve_webhook() as (hook, hook_port):
        am_port = listen_port()
        (tmp_path / "am.yml").write_text(yaml.safe_dump(alertmanager_config(hook_port)))
        with ExitStack() as stack:
            stack.enter_context(process([
                binary("prometheus-alertmanager", "alertmanager"),
                f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
            ], tmp_path / "alertmanager.log"))
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{am_port}/-/ready")
            everything = [a for cause, silenced, kept in CASES for a in (cause, *silenced, *kept)]
            await asyncio.to_thread(post, f"http://127.0.0.1:{am_port}/api/v2/alerts",
                                    everything)
            must_arrive = {key(a["labels"]) for cause, _, kept in CASES for a in (cause, *kept)}
            for _ in range(30):  # group_wait is 8 s in the test copy
                if must_arrive <= {key(r.alert["labels"]) for r in hook.received}:
                    break
                await hook.wait(1.0)
            await hook.wait(3.0)  # one more group interval for anything that should not come
            sent = {key(r.alert["labels"]) for r in hook.received}
            assert must_arrive <= sent, must_arrive - sent
            silenced = {key(a["labels"]) for _, quiet, _ in CASES for a in quiet}
            assert not silenced & sent, silenced & sent
            held = await asyncio.to_thread(
                get_json, f"http://127.0.0.1:{am_port}/api/v2/alerts?inhibited=true")
            inhibited = {key(a["labels"]) for a in held if a["status"]["inhibitedBy"]}
            assert inhibited == silenced
            receivers = {r.alert["labels"]["alertname"]: r.receiver for r in hook.received
                         if r.alert["labels"]["severity"] == "critical"}
            assert set(receivers.values()) == {"page"}
