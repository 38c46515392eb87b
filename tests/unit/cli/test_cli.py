"""The command-line contract: exit codes, one-line errors, flags over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import kvscope
from conftest import collector_up, parse


def test_version() -> None:
    result = kvscope("version")
    assert result.returncode == 0 and result.stdout.startswith("kvscope ")


def test_collect_prints_exposition_and_exits_zero() -> None:
    result = kvscope("collect", "--scenario", "gpu0-hotspot")
    assert result.returncode == 0, result.stderr
    metrics = parse(result.stdout.encode())
    util = {lb["gpu"]: v for lb, v in metrics["DCGM_FI_DEV_GPU_UTIL"]}
    assert util["0"] == pytest.approx(98, abs=1)
    assert {lb["Hostname"] for lb, _ in metrics["DCGM_FI_DEV_GPU_UTIL"]} == {"e2e-node"}


def test_collect_exits_zero_when_a_collector_fails(tmp_path: Path) -> None:
    # An NVML read that hangs for an hour, holding the driver as a wedged GPU does (every NVML
    # caller blocks): collect prints after one timeout and exits 0, kvscope_collector_up says
    # the NVML collectors are down, kvscope_gpu_up says 0 for every GPU, the collectors that
    # need no NVML are up, and the hung threads do not hold the exit.
    config = tmp_path / "kvscope.yml"
    config.write_text("collectors:\n  gpu:\n    timeout: 0.5\n"
                      "  nvlink:\n    timeout: 0.5\n    cadence: {slow: 1}\n")
    result = kvscope("collect", "--config", str(config), "--scenario", "nvml-hang",
                     "--log.level", "error", timeout=20)
    assert result.returncode == 0, result.stderr
    metrics = parse(result.stdout.encode())
    up = collector_up(metrics["kvscope_collector_up"])
    assert up["gpu"] == 0 and up["nvlink"] == 0
    assert up["self"] == 1 and up["rdma"] == 1 and up["engines"] == 1
    errors = {(lb["collector"], lb["reason"])
              for lb, _ in metrics["kvscope_collector_errors_total"]}
    assert ("gpu", "timeout") in errors
    assert [v for _, v in metrics["kvscope_gpu_up"]] == [0.0] * 8  # the GPULost alert fires


@pytest.mark.parametrize(("content", "flags", "expected"), [
    ("collectors:\n  gpu:\n    cadnce: {fast: 1}\n", (),
     "unknown key 'collectors.gpu.cadnce' (allowed here: cadence, enabled"),
    ("collectors:\n  gpu:\n    cadence: {fast: -5}\n", (),
     "'collectors.gpu.cadence.fast': Input should be greater than 0"),
    ("web:\n  listen_address: nine-four-four-seven\n", (),
     "'web.listen_address': must be [host]:port, e.g. ':9447'"),
    ("- just\n- a list\n", (), "top level must be a mapping"),
    ("", ("--web.listen-address", "localhost"), "must be [host]:port"),
    ("", ("--scenario", "no-such-scenario"), "unknown scenario 'no-such-scenario'"),
])
def test_config_errors_are_one_line(tmp_path: Path, content: str, flags: tuple[str, ...],
                                    expected: str) -> None:
    config = tmp_path / "kvscope.yml"
    config.write_text(content)
    result = kvscope("collect", "--config", str(config), *flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvscope: error: ") and expected in lines[0]


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = kvscope("collect", "--config", str(tmp_path / "absent.yml"))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"kvscope: error: cannot read config file "
                                     f"{tmp_path / 'absent.yml'}: No such file or directory")


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "kvscope.yml"
    config.write_text("collectors:\n  gpu:\n    enabled: true\nhostname_label: hostname\n")
    result = kvscope("collect", "--config", str(config), "--scenario", "healthy",
                     "--no-collector.gpu")
    assert result.returncode == 0
    metrics = parse(result.stdout.encode())
    assert "DCGM_FI_DEV_GPU_UTIL" not in metrics and "kvscope_gpu_up" not in metrics
    assert "gpu" not in {lb["collector"] for lb, _ in metrics["kvscope_collector_up"]}


def test_doctor_exit_code_gates_on_critical() -> None:
    healthy = kvscope("doctor", "--scenario", "gpu0-hotspot")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "GPU load imbalance: GPU 0 at 98% while GPU 7" in healthy.stdout
    lost = kvscope("doctor", "--scenario", "xid-79")
    assert lost.returncode == 1
    assert "[CRIT] GPU 3 is lost" in lost.stdout
