"""`kvscope doctor --url` against a real `kvscope demo` process on loopback."""

from __future__ import annotations

import pytest

from agent import Agent, free_port, kvscope
from node_fixture import SimulatedNode

pytestmark = pytest.mark.integration


def test_doctor_reads_a_running_demo_and_reports_its_incident() -> None:
    with Agent("demo", "--scenario", "kv-cache-full", "--sim.fault-delay", "0") as agent:
        agent.wait_ready()
        done = kvscope("doctor", "--url", agent.base)  # bare host:port: /metrics is added
        # the agent polls engines every 5 s: a window of 6 s spans a new poll
        twice = kvscope("doctor", "--url", f"{agent.base}/metrics", "--window", "6")
    assert twice.returncode == 1, twice.stderr
    assert "GB/s (over the last 6 s)" in twice.stdout
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith(f"kvscope doctor: node e2e-node (agent at {agent.base}/metrics)\n")
    for section in ("== GPUs ==", "== RDMA ==", "== Topology, NVLink and PD paths ==",
                    "== Inference engines and KV transfer =="):
        assert section in out
    assert "[CRIT] inference/sglang-decode-0 (decode): KV cache 99.0% full" in out
    assert "PD pairs on this node:" in out and "path NV18, IPC ok" in out
    assert out.rstrip().endswith("summary: 1 critical, 0 warning, 0 info")


def test_dead_url_is_one_line_and_exit_2() -> None:
    port = free_port()  # nothing listens there
    done = kvscope("doctor", "--url", f"http://127.0.0.1:{port}/metrics", "--url.timeout", "2")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"kvscope: error: cannot read the agent (connect): "
                                  f"http://127.0.0.1:{port}/metrics")


def test_a_url_that_is_not_an_agent_is_refused(simulated_node: SimulatedNode) -> None:
    done = kvscope("doctor", "--url", f"{simulated_node.url}/nothing-here")
    scheme = kvscope("doctor", "--url", "127.0.0.1:9447")
    assert done.returncode == 2 and "(http_404)" in done.stderr
    assert scheme.returncode == 2
    assert scheme.stderr == ("kvscope: error: --url '127.0.0.1:9447': expected "
                             "http://<host>:<port>[/metrics]\n")


def test_url_and_scenario_together_are_refused() -> None:
    done = kvscope("doctor", "--url", "http://127.0.0.1:9/metrics", "--scenario", "healthy")
    assert done.returncode == 2
    assert done.stderr.startswith("kvscope: error: --url reads another agent; --scenario does "
                                  "not apply")
