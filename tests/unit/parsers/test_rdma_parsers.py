"""Pure RDMA parsers: kernel formats, traps, and no exception on any input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvscope.analysis.qp_profiles import DeviceLimits, misfits
from kvscope.config import DEFAULT_QP_PROFILES
from kvscope.parsers.eadm import parse_stat
from kvscope.parsers.qp_logs import classify, pod_from_path
from kvscope.parsers.rdma_sysfs import (
    ParseError,
    Rate,
    RawPort,
    State,
    parse_counter,
    parse_port,
    parse_rate,
    parse_state,
)
from kvscope.parsers.rdma_tool import parse_resources

ERDMA = DeviceLimits(device="erdma_0", max_qp=15359, max_qp_wr=8192, max_sge=1)
MLX5 = DeviceLimits(device="mlx5_0", max_qp=131072, max_qp_wr=32768, max_sge=30)
PROFILES = {p.name: p for p in DEFAULT_QP_PROFILES}


def test_state_and_rate_formats() -> None:
    assert parse_state("4: ACTIVE\n") == State(4, "ACTIVE")
    assert parse_state("5: LinkUp") == State(5, "LinkUp")
    assert parse_rate("200 Gb/sec (4X HDR)\n") == Rate(25e9, "4X", "HDR")
    assert parse_rate("25 Gb/sec (1X EDR)") == Rate(3.125e9, "1X", "EDR")
    assert parse_rate("10 Gb/sec (4X)") == Rate(1.25e9, "4X", "")
    assert parse_rate("2.5 Gb/sec (1X)") == Rate(312.5e6, "1X", "")
    assert isinstance(parse_rate("fast"), ParseError)
    assert isinstance(parse_state("ACTIVE"), ParseError)


def test_no_pma_is_absent_not_zero() -> None:
    assert parse_counter("symbol_error", "N/A (no PMA)\n") is None
    port = parse_port(RawPort("i40iw0", "1", {"state": "4: ACTIVE"},
                              counters={"port_xmit_data": "N/A (no PMA)",
                                        "symbol_error": "N/A (no PMA)"}))
    assert port.no_pma and port.counters == {} and port.traffic.tx_bytes is None


def test_data_words_and_legacy_counters_ext() -> None:
    port = parse_port(RawPort("mlx4_0", "1", counters={"port_xmit_data": "100"},
                              counters_ext={"port_xmit_data_64": "1000",
                                            "port_rcv_data_64": "10"}))
    assert port.traffic.source == "pma_ext"
    assert (port.traffic.tx_bytes, port.traffic.rx_bytes) == (4000, 40)


def test_saturation_uses_each_counter_width() -> None:
    port = parse_port(RawPort("mlx4_0", "1", counters={
        "port_xmit_wait": "4294967295", "symbol_error": "65535",
        "local_link_integrity_errors": "15", "link_downed": "254", "port_rcv_data": "7"}))
    assert set(port.saturated) == {"port_xmit_wait", "symbol_error",
                                   "local_link_integrity_errors"}


def test_bad_values_are_counted_errors() -> None:
    port = parse_port(RawPort("mlx5_0", "1", {"state": "garbage", "rate": "???"},
                              hw_counters={"out_of_buffer": "x", "lifespan": "10"}))
    assert port.state is None and port.rate is None
    assert len(port.errors) == 3
    assert port.lifespan_ms == 10 and "lifespan" not in port.hw_counters


def test_both_erdma_drivers_normalize_traffic() -> None:
    upstream = parse_port(RawPort("erdma_0", "1", hw_counters={"tx_bytes_cnt": "5",
                                                               "rx_packets_cnt": "2"}))
    oot = parse_port(RawPort("erdma_0", "1", hw_counters={"hw_tx_bytes_cnt": "7"}))
    assert (upstream.traffic.source, upstream.traffic.tx_bytes) == ("erdma", 5)
    assert upstream.traffic.rx_packets == 2
    assert (oot.traffic.source, oot.traffic.tx_bytes) == ("erdma_oot", 7)


def test_dlslime_request_does_not_fit_erdma() -> None:
    assert misfits(PROFILES["dlslime-0.0.1"], ERDMA, erdma=True) == ("max_recv_sge 4 > 1",)
    assert misfits(PROFILES["dlslime-0.0.1"], MLX5, erdma=False) == ()


def test_mooncake_clamps_and_ucx_fits_erdma_send_sges() -> None:
    assert misfits(PROFILES["mooncake"], ERDMA, erdma=True) == ()
    assert misfits(PROFILES["ucx-rc"], ERDMA, erdma=True) == ()  # 5 send SGEs <= 6
    # Without the eRDMA knowledge, only the min(send, recv) max_sge is known.
    assert misfits(PROFILES["ucx-rc"], ERDMA, erdma=False) == ("max_send_sge 5 > 1",)
    deep = PROFILES["ucx-rc"].model_copy(update={"recv_wr": 65536, "inline_data": 220})
    assert misfits(deep, MLX5, erdma=False) == ("max_recv_wr 65536 > max_qp_wr 32768",)
    assert "max_inline_data 220 > 96" in misfits(deep, ERDMA, erdma=True)


def test_rdma_tool_json() -> None:
    parsed = parse_resources('[{"ifindex":0,"ifname":"mlx5_0","pd":3,"qp":261933,"x":1},'
                             '{"ifname":"mlx5_1","qp":"many"}, 7]')
    assert parsed.by_device == {"mlx5_0": {"pd": 3, "qp": 261933}, "mlx5_1": {}}
    assert parse_resources("Failed to open NETLINK_RDMA socket").error == "not JSON"
    assert parse_resources("{}").error == "JSON is not a list"


def test_pods_from_log_paths() -> None:
    ref = pod_from_path("/var/log/pods/inference_sglang-prefill-0_6f1c-00/sglang/3.log")
    assert ref is not None and (ref.namespace, ref.pod, ref.container) == (
        "inference", "sglang-prefill-0", "sglang")
    ref = pod_from_path("/var/log/containers/vllm-decode-1_serving_engine-" + "a" * 64 + ".log")
    assert ref is not None and (ref.namespace, ref.pod, ref.container) == (
        "serving", "vllm-decode-1", "engine")
    assert pod_from_path("/var/log/engine.log") is None


def test_log_lines_by_framework() -> None:
    dl = "\x1b[1;91m[ERROR]\x1b[m rdma_channel.cpp:88: init: [erdma_0] Failed to create QP 0: x"
    assert classify(dl) is not None and classify(dl).framework == "dlslime"  # type: ignore[union-attr]
    assert classify("everything is fine") is None
    assert classify("E0101 00:00:00.000001 1 x.cpp:1] Failed to modify QP[3] to RTS") == \
        classify("E0523 06:18:19.069025  2716 rdma_endpoint.cpp:408] Failed to modify QP to RTR")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    parse_stat(text)
    parse_resources(text)
    classify(text)
    pod_from_path(text)
    parse_state(text)
    parse_rate(text)
    parse_counter("x", text)
    parse_port(RawPort("d", "1", {"state": text, "phys_state": text, "rate": text,
                                  "link_layer": text}, {"port_xmit_data": text},
                       {"port_rcv_data_64": text}, {"tx_bytes_cnt": text, "lifespan": text}))


def test_numbers_wider_than_64_bits_are_one_bad_value() -> None:
    assert parse_counter("port_rcv_errors", str(2**64 - 1)) == 2**64 - 1
    for text in (str(2**64), "9" * 310, "1" * 5000):
        assert isinstance(parse_counter("port_rcv_errors", text), ParseError)
    assert isinstance(parse_state("9" * 310 + ": ACTIVE"), ParseError)
    assert isinstance(parse_rate("9" * 310 + " Gb/sec (4X HDR)"), ParseError)
    stats = parse_stat(f"hw_tx_bytes_cnt : {'9' * 310}\nhw_rx_bytes_cnt : 5\n")
    assert stats.counters == {"hw_rx_bytes_cnt": 5}
    assert [key for key, _ in stats.malformed_lines] == ["hw_tx_bytes_cnt"]
    resources = parse_resources('[{"ifname":"mlx5_0","qp":' + "9" * 5000 + ',"cq":2}]')
    assert resources.by_device == {"mlx5_0": {"cq": 2}}
    assert [(d, k) for d, k, _ in resources.malformed] == [("mlx5_0", "qp")]
