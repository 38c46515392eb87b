"""Topology collector end to end: fake kubelet, fake API server, sysfs tree, doctor, CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import collector_up, context_of, doctor_run
from kvscope.config import Config
from nvlink_support import collect, samples, sim_node

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "exporters")}


def _one(families: list, name: str) -> dict[str, str]:
    [(labels, _)] = samples(families, name)
    return labels


async def test_nvlink_bypass_metrics_show_the_unusable_pair() -> None:
    _, _, families = await collect(sim_node("nvlink-bypass"))
    path = _one(families, "kvscope_pd_pair_path_info")
    assert (path["pd_group"], path["prefill_pod"], path["decode_pod"], path["path"]) == (
        "qwen25-72b", "sglang-prefill-0", "sglang-decode-0", "NV18")
    [(labels, value)] = samples(families, "kvscope_pd_pair_ipc_possible")
    assert (value, labels["reason"]) == (0.0, "peer_gpus_not_visible")
    visibility = {lb["pod"]: lb for lb, _ in samples(families, "kvscope_pod_gpu_visibility_info")}
    assert visibility["sglang-prefill-0"]["visible_gpus"] == "0,1,2,3"
    assert visibility["sglang-prefill-0"]["privileged"] == "false"
    assert visibility["sglang-decode-0"]["nvidia_visible_devices"] == "list"


async def test_healthy_node_pair_can_use_nvlink_and_gpu_series_carry_pods() -> None:
    ctx, _, families = await collect(sim_node("healthy"))
    [(_, value)] = samples(families, "kvscope_pd_pair_ipc_possible")
    assert value == 1.0
    roles = {(lb["gpu"], lb["role"], lb["pod"]) for lb, _ in
             samples(families, "kvscope_pod_gpu_info")}
    assert ("0", "prefill", "sglang-prefill-0") in roles and len(roles) == 8
    up = {lb["gpu"]: lb for lb, _ in samples(families, "kvscope_gpu_up")}
    assert up["5"]["pod"] == "sglang-decode-0" and up["5"]["namespace"] == "inference"
    assert len(ctx.shared.pods.snapshot()) == 8
    topology = ctx.shared.board.topology
    assert topology is not None and topology.link(0, 7).label == "NV18"
    matrix = samples(families, "kvscope_gpu_p2p_link_info")
    assert len(matrix) == 56
    assert {(lb["link_type"], lb["nvlinks"], lb["nvlink_p2p"]) for lb, _ in matrix} == {
        ("NV18", "18", "ok")}
    nic = {(lb["gpu"], lb["nic"]): lb["path"] for lb, _ in
           samples(families, "kvscope_gpu_nic_affinity_info")}
    assert nic[("0", "mlx5_0")] == "PIX" and nic[("7", "mlx5_0")] == "SYS"
    network = _one(families, "kvscope_node_network_info")
    assert (network["source"], network["switch_type"], network["tier1"], network["tier3"]) == (
        "volcano", "infiniband", "ib-leaf-07", "ib-core")
    up_by = collector_up(samples(families, "kvscope_collector_up"))
    assert up_by["topology"] == 1.0 and up_by["nvlink"] == 1.0


async def test_without_volcano_the_placement_comes_from_node_labels() -> None:
    node = sim_node("healthy")
    node.topology.hypernodes = None  # CRD not installed: the API answers 404
    _, _, families = await collect(node)
    network = _one(families, "kvscope_node_network_info")
    assert network["source"] == "labels" and network["switch"] == "ib-leaf-07"
    assert "tier1" not in network


async def test_no_kubelet_socket_means_attribution_off_said_once(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="kvscope.collectors.topology")
    socket = tmp_path / "absent.sock"
    ctx, _, families = await collect(sim_node("healthy"), services=False, collectors={
        "topology": {"pod_resources_socket": str(socket)}})
    assert samples(families, "kvscope_pod_attribution_enabled") == [({}, 0.0)]
    assert not samples(families, "kvscope_pod_gpu_info")
    assert "pod" not in samples(families, "kvscope_gpu_up")[0][0]
    said = [r for r in caplog.records if "attribution off" in r.getMessage()]
    assert len(said) == 1  # static and slow polls both looked; it was said once
    assert ctx.shared.pods.snapshot() == {}
    up = collector_up(samples(families, "kvscope_collector_up"))
    assert up["topology"] == 1.0  # absent socket is not a failure


async def test_kubelet_failure_marks_the_tier_down_and_keeps_the_scrape(tmp_path: Path) -> None:
    import socket as sockets

    dead = tmp_path / "k.sock"
    listener = sockets.socket(sockets.AF_UNIX)
    listener.bind(str(dead))  # exists, never answers
    try:
        # A tier timeout of 1 s needs an API timeout below it (config refuses the default 3 s).
        _, _, families = await collect(sim_node("healthy"), services=False, collectors={
            "topology": {"pod_resources_socket": str(dead), "timeout": 1.0}},
            kubernetes={"timeout": 0.5})
    finally:
        listener.close()
    up = collector_up(samples(families, "kvscope_collector_up"))
    assert up["topology"] == 0.0 and up["gpu"] == 1.0
    errors = {lb["reason"] for lb, _ in samples(families, "kvscope_collector_errors_total")
              if lb["collector"] == "topology"}
    assert errors == {"grpc_unavailable"}
    assert samples(families, "kvscope_gpu_p2p_link_info")  # the static tier still serves


async def test_without_kubernetes_api_pods_have_unknown_roles() -> None:
    node = sim_node("healthy")
    _, _, families = await collect(node, collectors={"topology": {"kubernetes_api": False}})
    roles = {lb["role"] for lb, _ in samples(families, "kvscope_pod_gpu_info")}
    assert roles == {"unknown"}
    assert not samples(families, "kvscope_pd_pair_path_info")
    assert not samples(families, "kvscope_node_network_info")


async def test_pcie_only_pair_path_is_pcie() -> None:
    _, _, families = await collect(sim_node("pcie-only"))
    assert _one(families, "kvscope_pd_pair_path_info")["path"] == "SYS"
    assert not samples(families, "kvscope_nvlink_transmit_bytes_total")


def _doctor(scenario: str) -> tuple[str, int]:
    import asyncio

    config = Config.model_validate({"scenario": scenario, "node_name": "sim-node-0"})
    ctx = context_of(config, oneshot=True, latency_scale=0.0)
    return asyncio.run(doctor_run(ctx))


def test_doctor_flags_the_nvlink_bypass_as_critical() -> None:
    report, code = _doctor("nvlink-bypass")
    assert code == 1
    assert "[CRIT] PD group qwen25-72b: sglang-prefill-0 (GPUs 0,1,2,3) and sglang-decode-0 " \
           "(GPUs 4,5,6,7) are joined by NV18 but cannot use it" in report
    assert "sglang-prefill-0 sees GPUs 0,1,2,3 only, not 4,5,6,7" in report
    assert "privileged" in report and "/proc/driver/nvidia/gpus/*/information" in report
    assert "hostIPC" in report
    assert "GPU0  X      NV18" in report  # the matrix, nvidia-smi style


def test_doctor_healthy_and_degraded_nodes() -> None:
    report, code = _doctor("healthy")
    assert code == 0 and "path NV18, IPC ok" in report and "[CRIT]" not in report
    report, code = _doctor("nvlink-degraded")
    assert code == 0
    assert "GPU 5: 2 of 18 NVLinks down (links 3,4)" in report
    assert "GPU5: 16/18 links up (down: 3,4)" in report


def test_cli_collect_and_doctor_on_the_incident_scenario() -> None:
    run = [sys.executable, "-c", "from kvscope.cli import main; main()"]
    collected = subprocess.run([*run, "collect", "--scenario", "nvlink-bypass"], env=ENV,
                               capture_output=True, text=True, timeout=60, check=False)
    assert collected.returncode == 0, collected.stderr
    assert 'reason="peer_gpus_not_visible"} 0.0' in collected.stdout
    report = subprocess.run([*run, "doctor", "--scenario", "nvlink-bypass"], env=ENV,
                            capture_output=True, text=True, timeout=60, check=False)
    assert report.returncode == 1
    assert "1 critical" in report.stdout


def test_check_nvlink_pair_script_dry_runs() -> None:
    script = [sys.executable, str(ROOT / "scripts" / "check_nvlink_pair.py")]
    fixtures = ROOT / "tests" / "fixtures" / "topology"
    ok = subprocess.run([*script, "--scenario", "h200x2", "--topo-file",
                         str(fixtures / "nvidia-smi-topo-h200x2.txt")],
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "GPU0 NVLink TX bytes" in ok.stdout and "10,737,418,240" in ok.stdout
    assert "GPU0<->GPU1 link" in ok.stdout and "PASS" in ok.stdout
    wrong_matrix = subprocess.run([*script, "--scenario", "h200x2", "--topo-file",
                                   str(fixtures / "nvidia-smi-topo-hgx8-nv18.txt")],
                                  capture_output=True, text=True, timeout=60, check=False)
    assert wrong_matrix.returncode == 1 and "absent" in wrong_matrix.stdout
    off_by_3pct = subprocess.run([*script, "--scenario", "h200x2", "--sim-scale", "1.03",
                                  "--topo-file", str(fixtures / "nvidia-smi-topo-h200x2.txt")],
                                 capture_output=True, text=True, timeout=60, check=False)
    assert off_by_3pct.returncode == 1 and "+3.00%" in off_by_3pct.stdout
    eight = subprocess.run([*script, "--scenario", "healthy", "--topo-file",
                            str(fixtures / "nvidia-smi-topo-hgx8-nv18.txt")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert eight.returncode == 0, eight.stdout
    assert eight.stdout.count("link ") == 28  # every unordered GPU pair compared


def test_demo_serves_the_unusable_pair_over_http() -> None:
    import signal
    import socket as sockets
    import time
    import urllib.request

    with sockets.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = subprocess.Popen(
        [sys.executable, "-c", "from kvscope.cli import main; main()", "demo", "--scenario",
         "nvlink-bypass", "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    body = ""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "kvscope_pd_pair_ipc_possible" not in body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.2)
    finally:
        demo.send_signal(signal.SIGTERM)
        # communicate, not wait: it drains stderr, so a chatty agent cannot block on a full pipe
        try:
            _, stderr = demo.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            demo.kill()
            _, stderr = demo.communicate()
            raise AssertionError(f"demo did not stop:\n{stderr[-6000:]}") from None
    assert demo.returncode == 0, stderr[-2000:]
    assert 'path="NV18"' in body
    assert 'reason="peer_gpus_not_visible"} 0.0' in body
    assert demo.returncode == 0


async def test_readme_nvlink_table_lists_exactly_the_exported_families() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- metrics:nvlink -->")[1].split("<!-- /metrics:nvlink -->")[0]
    documented = set(re.findall(r"^\| `([A-Za-z_:][A-Za-z0-9_:]*)`", table, re.M))
    node = sim_node("nvlink-degraded")
    _, _, per_link = await collect(node, collectors={
        "nvlink": {"per_link": True, "per_link_bytes": True, "data_error_counters": True}})
    _, _, totals = await collect(sim_node("nvlink-degraded"))  # the default: per-GPU totals
    families = [*per_link, *totals]
    ours = re.compile(r"^(kvscope_(nvlink|pd|pod|node_network)_|kvscope_gpu_(p2p|cpu_affinity|"
                      r"nic_affinity)_|DCGM_FI_DEV_NVLINK_)")
    exported = {s.name for f in families for s in f.samples if ours.match(s.name)}
    # kvscope_nvlink_nvml_errors_total only appears after an NVML error: checked by name shape.
    assert documented - exported == {"kvscope_nvlink_nvml_errors_total"}
    assert exported <= documented
