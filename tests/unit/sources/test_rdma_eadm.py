"""eadm through real subprocesses: counters under stable names, malformed output, absent tool,
failing tool, and a hung eadm that costs one timeout and nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kvscope.collectors.rdma_schema import EADM_NAMES
from kvscope.parsers.eadm import OOT_COUNTERS, parse_stat, parse_version
from rdma_helpers import FIXTURES, cli, collector_up, eadm_printing, fake_tool, samples, value

ALIBABA = str(FIXTURES / "erdma-alibaba")


def collect(*extra: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    code, out = cli("collect", "--path.sysfs", ALIBABA, "--no-collector.gpu", *extra)
    assert code == 0
    return samples(out)


def test_stable_names_cover_the_55_driver_counters() -> None:
    assert len(OOT_COUNTERS) == 55 == len(set(EADM_NAMES.values()))
    assert EADM_NAMES["verbs_create_qp_failed_cnt"] == \
        "kvscope_erdma_verbs_create_qp_failed_total"
    assert EADM_NAMES["hw_bps_limit_drop_cnt"] == "kvscope_erdma_hw_bps_limit_drop_total"
    assert EADM_NAMES["accept_total_cnt"] == "kvscope_erdma_accept_total"
    assert EADM_NAMES["cmdq_comp_cnt"] == "kvscope_erdma_cmdq_completed_total"


def test_eadm_stat_counters_and_version(tmp_path: Path) -> None:
    found = collect("--collector.rdma.eadm-path", str(eadm_printing(tmp_path, "stat_erdma_0.txt")))
    assert collector_up(found, "rdma") == 1
    assert value(found, "kvscope_erdma_verbs_create_qp_failed_total", device="erdma_0") == 8
    assert value(found, "kvscope_erdma_verbs_create_qp_total", device="erdma_0") == 40
    assert value(found, "kvscope_erdma_connect_failed_total", device="erdma_0") == 1
    assert value(found, "kvscope_erdma_hw_tx_bytes_total", device="erdma_0") == 4053240320
    assert value(found, "kvscope_erdma_driver_info", version="0.2.38") == 1
    stable = [n for n in found if n.startswith("kvscope_erdma_") and n.endswith("_total")
              and n != "kvscope_erdma_eadm_counter_total"]
    assert len(stable) == 55


def test_padded_layout_with_header_parses_the_same(tmp_path: Path) -> None:
    plain = parse_stat((FIXTURES / "eadm" / "stat_erdma_0.txt").read_text())
    padded = parse_stat((FIXTURES / "eadm" / "stat_padded.txt").read_text())
    assert padded.counters == plain.counters
    assert padded.error is None and padded.malformed == 0


def test_malformed_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    found = collect("--collector.rdma.eadm-path",
                    str(eadm_printing(tmp_path, "stat_malformed.txt")))
    assert collector_up(found, "rdma") == 1
    assert value(found, "kvscope_erdma_hw_bps_limit_drop_total", device="erdma_0") == 17
    assert value(found, "kvscope_erdma_eadm_counter_total", counter="hw_new_future_cnt") == 5
    assert "kvscope_erdma_connect_failed_total" not in found  # "N/A": absent, not 0
    assert "kvscope_erdma_hw_tx_bytes_total" not in found  # "-3": absent, not 0
    assert value(found, "kvscope_rdma_parse_errors_total", source="eadm") == 2


def test_empty_output_reports_the_collector_down(tmp_path: Path) -> None:
    found = collect("--collector.rdma.eadm-path", str(eadm_printing(tmp_path, "stat_empty.txt")))
    assert collector_up(found, "rdma") == 0
    assert value(found, "kvscope_collector_errors_total", collector="rdma",
                 reason="eadm_parse") == 1
    assert value(found, "kvscope_rdma_port_state", device="erdma_0") == 4  # fast tier unharmed


def test_usage_text_is_not_counters() -> None:
    parsed = parse_stat((FIXTURES / "eadm" / "stat_garbage.txt").read_text())
    assert parsed.counters == {} and parsed.error is not None
    assert parse_version("Query kernel driver version: 0.2.38\n") == "0.2.38"
    assert parse_version("nothing here") is None


def test_failing_eadm_gives_one_line_reason(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "eadm", "print('open /dev/erdma: Permission denied', "
                                       "file=sys.stderr); sys.exit(1)")
    found = collect("--collector.rdma.eadm-path", str(tool))
    assert collector_up(found, "rdma") == 0
    assert value(found, "kvscope_collector_errors_total", collector="rdma",
                 reason="eadm_failed") == 1


def test_absent_eadm_is_source_off() -> None:
    found = collect("--collector.rdma.eadm-path", "/nonexistent/eadm")
    assert collector_up(found, "rdma") == 1
    assert not any(n.startswith("kvscope_erdma_") for n in found)


def test_hung_eadm_costs_one_timeout_and_nothing_else(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    tool = fake_tool(tmp_path, "eadm", (
        f"with open({str(pids)!r}, 'a') as f: f.write(str(os.getpid()) + '\\n')\n"
        "time.sleep(3600)"))
    config = tmp_path / "kvscope.yaml"
    config.write_text("collectors:\n  rdma:\n    eadm_timeout: 0.5\n")
    started = time.monotonic()
    found = collect("--config", str(config), "--collector.rdma.eadm-path", str(tool))
    elapsed = time.monotonic() - started
    assert elapsed < 3.0  # one 0.5 s timeout (ver and stat run concurrently), not a stall
    assert collector_up(found, "rdma") == 0
    assert value(found, "kvscope_collector_errors_total", collector="rdma",
                 reason="eadm_timeout") == 1
    # Everything else still came out: port counters (fast tier) and identity (static tier).
    assert value(found, "kvscope_rdma_port_transmit_bytes_total", device="erdma_0") == 4053240320
    assert found["kvscope_rdma_device_info"]
    started_pids = [int(p) for p in pids.read_text().split()]
    assert len(started_pids) == 2  # `eadm ver` and `eadm stat -d erdma_0`
    for pid in started_pids:  # both were killed, none left behind
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"hung eadm {pid} still running")
