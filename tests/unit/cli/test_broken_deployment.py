"""A broken deployment must not look healthy: no NVML, or a host root that is not there."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from agent import Agent, kvscope
from conftest import collector_up, parse


def test_serve_without_nvml_says_so_once_and_reports_the_gpu_collector_down(
        tmp_path: Path) -> None:
    config = tmp_path / "kvscope.yml"
    # A fast tier of 0.2 s: several failed polls within a second, so "once" is tested.
    config.write_text("collectors:\n  gpu: {cadence: {fast: 0.2}, timeout: 0.15, xid_wait: 0.1}\n")
    with Agent("serve", "--scenario", "no-nvml", "--config", str(config)) as agent:
        agent.wait_ready()
        deadline = time.monotonic() + 15
        failed = 0.0
        while time.monotonic() < deadline and failed < 5:
            metrics = parse(agent.get("/metrics")[1])
            failed = sum(v for lb, v in metrics.get("kvscope_collector_errors_total", [])
                         if lb == {"collector": "gpu", "reason": "nvml_unavailable"})
            time.sleep(0.2)
        assert failed >= 5, "the gpu collector's fast tier should fail on every poll"
        up = collector_up(metrics["kvscope_collector_up"])
        assert up["gpu"] == 0 and up["self"] == 1
        assert metrics["kvscope_gpu_nvml_available"] == [({}, 0.0)]
        page = agent.get("/")[1].decode()  # the index page says why, in words
        assert "none: NVML not available" in page
        assert "<code>fast: nvml_unavailable</code>: fast tier: NVML could not be loaded" in page
        code, stderr = agent.terminate()
    assert code == 0
    warnings = [line for line in stderr.splitlines() if "level=WARNING" in line]
    nvml = [line for line in warnings if "NVML" in line]
    assert len(nvml) == 1, stderr
    assert "--no-collector.gpu" in nvml[0]


@pytest.mark.parametrize("command", ["serve", "collect", "doctor"])
@pytest.mark.parametrize(("flag", "name"), [("--path.sysfs", "sysfs"), ("--path.procfs", "procfs")])
def test_a_host_root_that_does_not_exist_is_refused(tmp_path: Path, command: str, flag: str,
                                                    name: str) -> None:
    missing = tmp_path / "host" / name
    result = kvscope(command, flag, str(missing), "--web.listen-address", "127.0.0.1:0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(rf"kvscope: error: {name} root {re.escape(str(missing))} does not "
                        rf"exist \(--path\.{name} or paths\.{name}; .*\)", lines[0]), lines[0]


def test_a_host_root_from_the_config_file_that_is_a_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "kvscope.yml"
    config.write_text(f"paths: {{sysfs: {config}}}\n")
    result = kvscope("collect", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kvscope: error: sysfs root {config} is not a directory (--path.sysfs or paths.sysfs; "
        "in a container, mount the host's /sys read-only and point it there)")
