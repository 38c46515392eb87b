"""RDMA defects found against other projects' real formats (issue 12, items 1-6), each on a fixture
built from the upstream format: node_exporter's mlx4 tree (counters/ beside counters_ext/), the
kernel's bnxt_re, irdma and efa hw_counters names, an empty SFP+ cage's `0 GB/sec`, a
Fabric-Manager-style device to leave unread, and erdma-exporter's eadm keys."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import context_of
from kvscope.app import build_runtime
from kvscope.collectors.rdma_schema import EADM_NAMES
from kvscope.config import ConfigError, load
from kvscope.parsers.eadm import parse_stat
from kvscope.parsers.rdma_sysfs import Rate, RawPort, parse_module_bool, parse_port, parse_rate
from kvscope.render.exposition import render_text
from rdma_helpers import (
    FIXTURES,
    Clock,
    cli,
    collector_up,
    eadm_printing,
    node_for,
    samples,
    scrape,
    value,
)

Samples = dict[str, list[tuple[dict[str, str], float]]]


def collect(tree: Path | str, *extra: str) -> tuple[Samples, str]:
    code, out = cli("collect", "--path.sysfs", str(tree), "--no-collector.gpu",
                    "--collector.rdma.eadm-path", "/nonexistent/eadm", *extra)
    assert code == 0
    found = samples(out)
    assert collector_up(found, "rdma") == 1
    return found, out


def traffic(found: Samples, device: str, port: str = "1") -> tuple[float, ...]:
    lb = {"device": device, "port": port}
    return tuple(value(found, f"kvscope_rdma_port_{name}_total", **lb) for name in
                 ("transmit_bytes", "receive_bytes", "transmit_packets", "receive_packets"))


# ---- 1. counters_ext/ beside counters/: each value from wherever it is valid ------------------

def test_mlx4_packets_come_from_counters_when_counters_ext_reads_zero() -> None:
    # node_exporter's mlx4_0: counters_ext/port_*_packets_64 are 0, counters/ holds 6.8e9.
    found, _ = collect(FIXTURES / "mlx4-legacy")
    assert traffic(found, "mlx4_0", "1") == (3733440 * 4, 4631917 * 4, 6235865, 6825908347)
    # port 2 is the other way round: counters/ data reads 0, counters_ext/ has the words.
    assert traffic(found, "mlx4_0", "2") == (3733440 * 4, 4631917 * 4, 0, 0)
    assert value(found, "kvscope_rdma_port_rate_bytes_per_second", device="mlx4_0",
                 port="1") == 40 * 125_000_000


@pytest.mark.parametrize(("counters", "ext", "expected"), [
    # legacy table pinned at 2^32-1, extended table still counting: the extended value
    ({"port_xmit_data": "4294967295", "port_xmit_packets": "4294967295"},
     {"port_xmit_data_64": "9000000000", "port_xmit_packets_64": "7000000000"},
     (36_000_000_000, 7_000_000_000)),
    # extended table not implemented (zeros): the legacy value
    ({"port_xmit_data": "1000", "port_xmit_packets": "10"},
     {"port_xmit_data_64": "0", "port_xmit_packets_64": "0"}, (4000, 10)),
    # only one of the two directories
    ({"port_xmit_data": "1000", "port_xmit_packets": "10"}, {}, (4000, 10)),
    ({}, {"port_xmit_data_64": "1000", "port_xmit_packets_64": "10"}, (4000, 10)),
], ids=["legacy-saturated", "ext-zero", "counters-only", "counters_ext-only"])
def test_each_traffic_value_from_the_valid_layout(counters: dict[str, str], ext: dict[str, str],
                                                  expected: tuple[int, int]) -> None:
    port = parse_port(RawPort("mlx4_0", "1", counters=counters, counters_ext=ext))
    assert (port.traffic.tx_bytes, port.traffic.tx_packets) == expected


# ---- 2. hw_counters levels are gauges ---------------------------------------------------------

def test_bnxt_re_levels_are_gauges_not_counters() -> None:
    found, out = collect(FIXTURES / "bnxt-re")
    assert "# TYPE kvscope_rdma_hw_level gauge" in out
    lb = {"device": "bnxt_re0", "port": "1"}
    assert value(found, "kvscope_rdma_hw_level", counter="active_qps", **lb) == 129
    assert value(found, "kvscope_rdma_hw_level", counter="active_mrs", **lb) == 64
    assert value(found, "kvscope_rdma_hw_level", counter="watermark_qps", **lb) == 513
    counts = {s["counter"] for s, _ in found["kvscope_rdma_hw_counter_total"]
              if s["device"] == "bnxt_re0"}
    assert not {c for c in counts if c.startswith(("active_", "watermark_"))}
    assert {"resize_cq_cnt", "to_retransmits", "rx_roce_good_bytes"} <= counts  # counts stay


# ---- 3. an empty SFP+ cage: "0 GB/sec" --------------------------------------------------------

def test_zero_rate_of_an_empty_cage_parses() -> None:
    assert parse_rate("0 GB/sec\n") == Rate(0.0, "", "")
    found, _ = collect(FIXTURES / "bnxt-re")
    assert value(found, "kvscope_rdma_port_rate_bytes_per_second", device="bnxt_re1") == 0
    assert value(found, "kvscope_rdma_port_state", device="bnxt_re1") == 1
    assert "kvscope_rdma_parse_errors_total" not in found


def _rendered(runtime: Any) -> Samples:
    return samples(render_text(runtime.families()).decode())


async def test_a_value_that_stays_bad_counts_once_not_every_poll(tmp_path: Path) -> None:
    tree = tmp_path / "sys"
    port = tree / "class" / "infiniband" / "bnxt_re1" / "ports" / "1"
    port.mkdir(parents=True)
    (port / "state").write_text("1: DOWN\n")
    (port / "rate").write_text("0 GB/sec\n")
    ctx = context_of(load(None, {"paths.sysfs": str(tree), "collectors.gpu.enabled": False,
                                    "collectors.rdma.eadm_path": None}), oneshot=True)
    runtime = build_runtime(ctx)
    try:
        for _ in range(3):
            await runtime.poll_all_once()
        assert "kvscope_rdma_parse_errors_total" not in _rendered(runtime)
        (port / "rate").write_text("unknown speed\n")  # a format kvscope does not know
        for _ in range(3):
            await runtime.poll_all_once()
        found = _rendered(runtime)
        assert value(found, "kvscope_rdma_parse_errors_total", source="sysfs") == 1
        (port / "rate").write_text("still unknown\n")  # a new bad text is a new problem
        for _ in range(2):
            await runtime.poll_all_once()
        found = _rendered(runtime)
        assert value(found, "kvscope_rdma_parse_errors_total", source="sysfs") == 2
    finally:
        await runtime.stop()


# ---- 4. traffic that exists only in hw_counters, per driver -----------------------------------

@pytest.mark.parametrize(("tree", "device", "expected"), [
    # irdma: IPv4 + IPv6 octets and packets
    ("irdma-roce", "irdma0", (923456789012 + 2000, 812345678901 + 1000, 223456789 + 20,
                              201234567 + 10)),
    ("bnxt-re", "bnxt_re0", (13604938268000, 13204938268000, 3401234567, 3301234567)),
    ("efa", "rdmap16s27", (71234567890123, 70234567890123, 8123456789, 8023456789)),
])
def test_hw_counter_traffic_reaches_the_port_families(tree: str, device: str,
                                                      expected: tuple[int, ...]) -> None:
    found, _ = collect(FIXTURES / tree)
    assert traffic(found, device) == expected
    # the raw driver counters are still there, under their own names
    assert any(s["device"] == device for s, _ in found["kvscope_rdma_hw_counter_total"])


# ---- 5. collectors.rdma.devices include/exclude, before any read ------------------------------

_TOUCHED: list[str] = []
_WATCH: list[str] = []  # path fragment being watched; empty = hook idle


def _record(event: str, args: tuple[Any, ...]) -> None:
    if _WATCH and event in ("open", "os.scandir", "os.listdir") and args:
        path = str(args[0])
        if _WATCH[0] in path:
            _TOUCHED.append(f"{event} {path}")


sys.addaudithook(_record)  # audit hooks cannot be removed: it records only while _WATCH is set


def _config_file(tmp_path: Path, devices: str) -> str:
    path = tmp_path / "kvscope.yaml"
    path.write_text(f"collectors:\n  rdma:\n    devices:\n{devices}")
    return str(path)


def test_excluded_device_files_are_never_opened(tmp_path: Path) -> None:
    config = _config_file(tmp_path, '      exclude: "mlx5_1"\n')
    _TOUCHED.clear()
    _WATCH.append("/infiniband/mlx5_1")
    try:
        found, _ = collect(FIXTURES / "mlx5-ib", "--config", config)
    finally:
        _WATCH.clear()
    assert _TOUCHED == []
    devices = {s["device"] for s, _ in found["kvscope_rdma_port_state"]}
    assert devices == {"mlx5_0"}
    # the hook does see reads: the same collection without the filter opens mlx5_1's files
    _WATCH.append("/infiniband/mlx5_1")
    try:
        collect(FIXTURES / "mlx5-ib")
    finally:
        _WATCH.clear()
    assert any("/counters" in t for t in _TOUCHED)


def test_include_is_anchored_and_exclude_wins(tmp_path: Path) -> None:
    found, _ = collect(FIXTURES / "mlx5-ib", "--config",
                       _config_file(tmp_path, '      include: "mlx5_.*"\n'
                                              '      exclude: "mlx5_0"\n'))
    assert {s["device"] for s, _ in found["kvscope_rdma_device_info"]} == {"mlx5_1"}
    found, _ = collect(FIXTURES / "mlx5-ib", "--config",
                       _config_file(tmp_path, '      include: "mlx5"\n'))  # no partial match
    assert "kvscope_rdma_device_info" not in found or not found["kvscope_rdma_device_info"]


def test_invalid_device_regex_is_one_line_refusal() -> None:
    with pytest.raises(ConfigError) as err:
        load(None, {"collectors.rdma.devices.exclude": "mlx5_("})
    message = str(err.value)
    assert "collectors.rdma.devices.exclude" in message and "\n" not in message


async def test_excluded_devices_are_not_opened_through_pyverbs_either() -> None:
    node = node_for("healthy", Clock())
    found = await scrape(node, **{"collectors.rdma.devices.exclude": "mlx5_[23]"})
    assert {s["device"] for s, _ in found["kvscope_rdma_device_max_qp"]} == {"mlx5_0", "mlx5_1"}
    assert {s["device"] for s, _ in found["kvscope_rdma_port_state"]} == {"mlx5_0", "mlx5_1"}


# ---- 6. eadm: erdma-exporter's names, headers are not parse errors ---------------------------

def test_eadm_names_have_no_doubled_prefix() -> None:
    assert EADM_NAMES["erdma_aeq_event_cnt"] == "kvscope_erdma_aeq_event_total"
    assert EADM_NAMES["erdma_aeq_notify_cnt"] == "kvscope_erdma_aeq_notify_total"
    assert not [n for n in EADM_NAMES.values() if n.startswith("kvscope_erdma_erdma_")]


def test_device_header_line_is_not_a_parse_error(tmp_path: Path) -> None:
    text = (FIXTURES / "eadm" / "stat_device_header.txt").read_text()
    assert text.startswith("Device: erdma_0\n")
    stats = parse_stat(text)
    assert stats.malformed == 0 and len(stats.counters) == 55
    code, out = cli("collect", "--path.sysfs", str(FIXTURES / "erdma-alibaba"),
                    "--no-collector.gpu", "--collector.rdma.eadm-path",
                    str(eadm_printing(tmp_path, "stat_device_header.txt")))
    assert code == 0
    found = samples(out)
    assert "kvscope_rdma_parse_errors_total" not in found
    assert value(found, "kvscope_erdma_aeq_event_total", device="erdma_0") == 3
    assert not [n for n in found if re.match(r"kvscope_erdma_erdma_", n)]
    # a counter line with a bad value is still an error
    assert parse_stat(text + "connect_failed_cnt : N/A\n").malformed == 1


async def test_simulated_eadm_header_is_skipped() -> None:
    found = await scrape(node_for("erdma", Clock()))
    assert value(found, "kvscope_erdma_aeq_event_total", device="erdma_0") >= 0
    assert "kvscope_rdma_parse_errors_total" not in found


@pytest.mark.parametrize(("text", "expected"), [
    ("Y\n", 1.0), ("N\n", 0.0), ("1\n", 1.0), ("0", 0.0), (None, None), ("", None),
    ("maybe\n", None),
])
def test_module_bool_parameters_parse_as_the_kernel_prints_them(
        text: str | None, expected: float | None) -> None:
    # A kernel bool module_param reads "Y"/"N" in sysfs; unreadable stays absent, never 0.
    assert parse_module_bool(text) == expected
