"""A helper program that floods its output is killed at the cap, not read to its timeout.

Before the reads were bounded, `communicate()` kept everything a program wrote until it ended or
timed out, and the 1 MiB cap applied afterwards: a flooding eadm took the agent from 54 to 811 MB.
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from pathlib import Path

from kvscope.sources.command import CHUNK, MAX_OUTPUT, Outcome, run_command
from rdma_helpers import FIXTURES, cli, collector_up, fake_tool, samples, value

FLOOD = "line = b'hw_tx_bytes_cnt : 1\\n' * 4096\nwhile True: sys.stdout.buffer.write(line)"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_flood_is_cut_at_the_cap_with_bounded_memory(tmp_path: Path) -> None:
    pid = tmp_path / "flood.pid"
    tool = fake_tool(
        tmp_path, "flood", f"pathlib.Path({str(pid)!r}).write_text(str(os.getpid()))\n" + FLOOD
    )
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = asyncio.run(run_command([str(tool)], 20.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.outcome is Outcome.TOO_LARGE
    assert result.stdout == "" and not result.ok
    assert "more than 1048576 bytes of output; killed" in result.describe(20.0)
    assert time.monotonic() - started < 10.0  # the cap ends it, not the 20 s timeout
    # What was held: at most the cap plus one chunk, with the bytearray's slack and copies.
    assert peak < 3 * MAX_OUTPUT + 4 * CHUNK, peak
    assert _gone(int(pid.read_text()))  # killed, not left flooding a pipe nobody reads


def test_flooding_stderr_is_cut_too(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "flood", "while True: sys.stderr.write('x' * 65536)")
    result = asyncio.run(run_command([str(tool)], 20.0))
    assert result.outcome is Outcome.TOO_LARGE


def test_output_just_under_the_cap_is_kept(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "big", f"sys.stdout.write('x' * {MAX_OUTPUT})")
    result = asyncio.run(run_command([str(tool)], 20.0))
    assert result.ok and len(result.stdout) == MAX_OUTPUT


def test_flooding_eadm_is_one_reason_and_the_rest_is_served(tmp_path: Path) -> None:
    eadm = fake_tool(tmp_path, "eadm", FLOOD)
    config = tmp_path / "kvscope.yaml"
    config.write_text("collectors:\n  rdma:\n    eadm_timeout: 20\n    timeout: 25\n")
    started = time.monotonic()
    code, out = cli(
        "collect",
        "--config",
        str(config),
        "--no-collector.gpu",
        "--path.sysfs",
        str(FIXTURES / "erdma-alibaba"),
        "--collector.rdma.eadm-path",
        str(eadm),
    )
    assert code == 0
    assert time.monotonic() - started < 10.0  # the cap ended both eadm calls, not the timeout
    found = samples(out)
    assert (
        value(found, "kvscope_collector_errors_total", collector="rdma", reason="eadm_too_large")
        == 1
    )
    assert value(found, "kvscope_collector_up", collector="rdma", tier="slow") == 0
    assert value(found, "kvscope_collector_up", collector="rdma", tier="fast") == 1
    assert value(found, "kvscope_rdma_port_transmit_bytes_total", device="erdma_0") == 4053240320
    assert not any(
        name.startswith("kvscope_erdma_") and name != "kvscope_erdma_compat_mode" for name in found
    )


def test_flooding_rdma_tool_is_its_own_reason(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "rdma", "while True: sys.stdout.write('[' * 65536)")
    config = tmp_path / "kvscope.yaml"
    config.write_text(
        f"collectors:\n  rdma:\n    rdma_tool_path: {tool}\n"
        "    rdma_tool_timeout: 20\n    timeout: 25\n"
    )
    code, out = cli(
        "collect",
        "--config",
        str(config),
        "--no-collector.gpu",
        "--path.sysfs",
        str(FIXTURES / "mlx5-ib"),
        "--collector.rdma.eadm-path",
        "/nonexistent/eadm",
    )
    assert code == 0
    found = samples(out)
    assert (
        value(
            found, "kvscope_collector_errors_total", collector="rdma", reason="rdma_tool_too_large"
        )
        == 1
    )
    assert collector_up(found, "rdma") == 0
    assert "kvscope_rdma_resources" not in found
