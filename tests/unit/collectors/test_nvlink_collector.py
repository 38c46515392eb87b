"""NVLink collector against the simulated NVML: scope, units, rates, errors, absent hardware."""

from __future__ import annotations

import pytest

from kvscope.collectors.base import Tier
from kvscope.collectors.nvlink import NvlinkCollector
from kvscope.runtime import BlockingPool
from kvscope.sources.nvml.links import FI_DATA_TX, SCOPE_ALL_LINKS, NvlinkSource
from nvlink_support import Clock, context, samples, sim_node

GIB = 1024**3


async def _poll(collector: NvlinkCollector, tier: Tier, pool: BlockingPool) -> list:
    return list((await collector.poll(tier, pool)).families)


def _by_gpu(families: list, name: str) -> dict[str, float]:
    return {labels["gpu"]: value for labels, value in samples(families, name)}


async def test_bytes_use_the_aggregate_scope_and_move_with_kv_flows() -> None:
    clock = Clock()
    node = sim_node("healthy", clock)
    ctx = context(node)
    collector = NvlinkCollector(ctx, monotonic=clock)
    pool = BlockingPool("t")
    await _poll(collector, Tier.STATIC, pool)
    before = await _poll(collector, Tier.FAST, pool)
    clock.advance(10.0)
    after = await _poll(collector, Tier.FAST, pool)
    tx0, tx1 = (_by_gpu(f, "kvscope_nvlink_transmit_bytes_total") for f in (before, after))
    rx0, rx1 = (_by_gpu(f, "kvscope_nvlink_receive_bytes_total") for f in (before, after))
    # Default node: prefill GPUs 0-3 stream 6 GB/s each to decode GPUs 4-7 (KiB granularity).
    for gpu in "0123":
        assert tx1[gpu] - tx0[gpu] == pytest.approx(6.0e10, abs=2048)
        assert rx1[gpu] - rx0[gpu] == pytest.approx(0, abs=2048)
    for gpu in "4567":
        assert rx1[gpu] - rx0[gpu] == pytest.approx(6.0e10, abs=2048)
    # The value is the sum over all 18 links, not link 0 alone (the scope trap).
    source = NvlinkSource(ctx.backends.nvml)
    source.open()
    h = source.devices[0].handle
    link0 = ctx.nvml.nvmlDeviceGetFieldValues(h, [FI_DATA_TX])[0].value.ullVal
    total = ctx.nvml.nvmlDeviceGetFieldValues(h, [(FI_DATA_TX, SCOPE_ALL_LINKS)])[0].value.ullVal
    assert total * 1024 == tx1["0"]
    assert total == pytest.approx(link0 * 18, rel=1e-3)
    pool.shutdown()


async def test_dcgm_bandwidth_total_is_kib_per_second_over_1000_and_zero_first() -> None:
    clock = Clock()
    node = sim_node("healthy", clock)
    collector = NvlinkCollector(context(node), monotonic=clock)
    pool = BlockingPool("t")
    await _poll(collector, Tier.STATIC, pool)
    first = _by_gpu(await _poll(collector, Tier.FAST, pool), "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL")
    assert set(first.values()) == {0.0}
    clock.advance(5.0)
    second = _by_gpu(await _poll(collector, Tier.FAST, pool),
                     "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL")
    # GPU 0 sends 6e9 B/s: (6e9 / 1024) KiB/s / 1000 = 5859 (integer, as DCGM computes it).
    assert second["0"] == 5859
    assert second["4"] == 5859
    pool.shutdown()


async def test_bandwidth_series_carry_dcgm_labels_and_pods() -> None:
    from nvlink_support import collect

    _, _, families = await collect(sim_node("healthy"))
    labels, _ = next(iter(samples(families, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL")))
    assert {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
            "DCGM_FI_DRIVER_VERSION", "pod", "namespace", "container"} <= set(labels)


async def test_link_state_speed_and_error_counters() -> None:
    node = sim_node("nvlink-degraded")
    collector = NvlinkCollector(context(node, collectors={"nvlink": {"per_link": True}}))
    pool = BlockingPool("t")
    static = await _poll(collector, Tier.STATIC, pool)
    fast = await _poll(collector, Tier.FAST, pool)
    slow = await _poll(collector, Tier.SLOW, pool)
    up = {(lb["gpu"], lb["link"]): v for lb, v in samples(fast, "kvscope_nvlink_link_up")}
    assert len(up) == 8 * 18
    assert [k for k, v in up.items() if v == 0] == [("5", "3"), ("5", "4")]
    speeds = {v for _, v in samples(static, "kvscope_nvlink_link_speed_bytes_per_second")}
    assert speeds == {26_562_000_000.0}  # field 164: 26562 MB/s per link and direction
    info = samples(static, "kvscope_nvlink_link_info")[0][0]
    assert (info["version"], info["remote_type"]) == ("4.0", "nvswitch")
    errors = {(lb["gpu"], lb["link"], lb["error"]): v
              for lb, v in samples(slow, "kvscope_nvlink_errors_total")}
    # One hour in at 1800 replays, 12 recoveries and 240 CRC errors per hour on GPU 5 link 7.
    assert errors[("5", "7", "replay")] == 1800
    assert errors[("5", "7", "recovery")] == 12
    assert errors[("5", "7", "crc")] == 240
    assert errors[("0", "0", "replay")] == 0  # a clean link is a real zero, it is read
    assert not any(kind in ("crc_data", "ecc_data") for _, _, kind in errors)
    assert node_calls(collector, "nvmlDeviceGetNvLinkErrorCounter") == 0
    pool.shutdown()


async def test_default_exports_per_gpu_totals_not_per_link_series() -> None:
    node = sim_node("nvlink-degraded")
    collector = NvlinkCollector(context(node))
    pool = BlockingPool("t")
    static = await _poll(collector, Tier.STATIC, pool)
    fast = await _poll(collector, Tier.FAST, pool)
    slow = await _poll(collector, Tier.SLOW, pool)
    pool.shutdown()
    families = [*static, *fast, *slow]
    assert not any("link" in lb for f in families for s in f.samples
                   for lb in [s.labels])  # no per-link series by default
    assert _by_gpu(static, "kvscope_nvlink_links") == {str(g): 18 for g in range(8)}
    active = _by_gpu(fast, "kvscope_nvlink_links_active")
    assert active["5"] == 16 and active["0"] == 18  # the degraded GPU's two links are down
    errors = {(lb["gpu"], lb["error"]): v for lb, v in samples(slow, "kvscope_nvlink_errors_total")}
    assert errors[("5", "replay")] == 1800 and errors[("5", "crc")] == 240
    assert errors[("0", "replay")] == 0
    assert samples(static, "kvscope_nvlink_link_speed_bytes_per_second")[0][1] == 26_562_000_000
    info = samples(static, "kvscope_nvlink_link_info")
    assert len(info) == 8 and info[0][0]["remote_type"] == "nvswitch"
    assert sum(len(f.samples) for f in families) < 8 * 12  # was ~860 with per-link series


def node_calls(collector: NvlinkCollector, name: str) -> int:
    return collector._ctx.nvml.calls[name]  # the fake counts every NVML call


async def test_data_error_counters_come_from_the_error_counter_call_when_enabled() -> None:
    node = sim_node("healthy")
    node.topology.data_errors[(0, 0)] = (5, 8)  # what H200 link 0 showed: CRC_DATA 5, ECC 8
    collector = NvlinkCollector(context(node, collectors={"nvlink": {
        "data_error_counters": True, "per_link": True}}))
    pool = BlockingPool("t")
    await _poll(collector, Tier.STATIC, pool)
    slow = await _poll(collector, Tier.SLOW, pool)
    errors = {(lb["gpu"], lb["link"], lb["error"]): v
              for lb, v in samples(slow, "kvscope_nvlink_errors_total")}
    assert errors[("0", "0", "crc_data")] == 5
    assert errors[("0", "0", "ecc_data")] == 8
    assert errors[("0", "0", "crc")] == 0  # field 163 stays the flit CRC count, not mixed in
    assert node_calls(collector, "nvmlDeviceGetNvLinkErrorCounter") == 8 * 18 * 2
    pool.shutdown()


async def test_per_link_bytes_are_opt_in_and_sum_to_the_gpu_total() -> None:
    node = sim_node("healthy", Clock())  # frozen: every field read sees the same instant
    pool = BlockingPool("t")
    plain = NvlinkCollector(context(node))
    await _poll(plain, Tier.STATIC, pool)
    assert not samples(await _poll(plain, Tier.FAST, pool),
                       "kvscope_nvlink_link_transmit_bytes_total")
    per_link = NvlinkCollector(context(node, collectors={"nvlink": {"per_link_bytes": True}}))
    await _poll(per_link, Tier.STATIC, pool)
    fast = await _poll(per_link, Tier.FAST, pool)
    links = [v for lb, v in samples(fast, "kvscope_nvlink_link_transmit_bytes_total")
             if lb["gpu"] == "2"]
    assert len(links) == 18
    assert sum(links) == _by_gpu(fast, "kvscope_nvlink_transmit_bytes_total")["2"]
    pool.shutdown()


async def test_one_field_call_per_gpu_on_the_fast_tier() -> None:
    node = sim_node("healthy")
    collector = NvlinkCollector(context(node))
    pool = BlockingPool("t")
    await _poll(collector, Tier.STATIC, pool)
    nvml = collector._ctx.nvml
    nvml.calls.clear()
    await _poll(collector, Tier.FAST, pool)
    assert nvml.calls["nvmlDeviceGetFieldValues"] == 8
    assert nvml.calls["nvmlDeviceGetNvLinkState"] == 8 * 18
    pool.shutdown()


async def test_pcie_only_gpus_export_no_nvlink_series() -> None:
    collector = NvlinkCollector(context(sim_node("pcie-only")))
    pool = BlockingPool("t")
    families = [*await _poll(collector, Tier.STATIC, pool),
                *await _poll(collector, Tier.FAST, pool), *await _poll(collector, Tier.SLOW, pool)]
    assert families == []  # absent, never zeros
    pool.shutdown()


async def test_missing_nvml_is_no_data_not_an_error() -> None:
    node = sim_node("no-nvml")
    collector = NvlinkCollector(context(node))
    pool = BlockingPool("t")
    for tier in (Tier.STATIC, Tier.FAST, Tier.SLOW):
        assert await _poll(collector, tier, pool) == []
    pool.shutdown()


async def test_a_lost_gpu_is_skipped_and_the_others_still_report() -> None:
    clock = Clock()
    node = sim_node("healthy", clock)
    node.gpus[3].lost_after = node.elapsed() + 1.0
    collector = NvlinkCollector(context(node), monotonic=clock)
    pool = BlockingPool("t")
    await _poll(collector, Tier.STATIC, pool)
    clock.advance(2.0)
    fast = await _poll(collector, Tier.FAST, pool)
    assert sorted(_by_gpu(fast, "kvscope_nvlink_transmit_bytes_total")) == list("0124567")
    assert not samples(fast, "kvscope_nvlink_nvml_errors_total")  # lost is not an NVML error
    pool.shutdown()


async def test_modelled_cost_matches_the_h200_figures() -> None:
    """With H200 latencies: the fast tier ~1 ms per GPU, per-link bytes ~17 ms per GPU.

    Measured as the NVML latency the model spends, not wall time, so a loaded machine cannot
    fail it and a poll that makes the wrong calls still does."""
    node = sim_node("healthy")
    node.latency_scale = 1.0
    pool = BlockingPool("t")
    timings = {}
    for per_link in (False, True):
        ctx = context(node, collectors={"nvlink": {"per_link_bytes": per_link}})
        collector = NvlinkCollector(ctx)
        await _poll(collector, Tier.STATIC, pool)
        library = ctx.backends.nvml.library()
        before = library.modelled_seconds
        await _poll(collector, Tier.FAST, pool)
        timings[per_link] = (library.modelled_seconds - before) / 8
    assert timings[False] < 4e-3
    assert 12e-3 < timings[True] < 40e-3
    pool.shutdown()


async def test_an_nvml_error_on_one_gpu_is_counted_and_the_rest_still_read() -> None:
    from pynvml import NVMLError

    node = sim_node("healthy")
    ctx = context(node)
    real_state = ctx.nvml.nvmlDeviceGetNvLinkState

    def flaky_state(h: object, link: int) -> int:
        if getattr(h, "gpu", None) is node.gpus[2]:
            raise NVMLError(999)  # NVML_ERROR_UNKNOWN
        return int(real_state(h, link))

    ctx.nvml.nvmlDeviceGetNvLinkState = flaky_state
    collector = NvlinkCollector(ctx)  # default: per-GPU totals
    pool = BlockingPool("t")
    await _poll(collector, Tier.STATIC, pool)
    fast = await _poll(collector, Tier.FAST, pool)
    errors = {(lb["gpu"], lb["read"], lb["error"]): v
              for lb, v in samples(fast, "kvscope_nvlink_nvml_errors_total")}
    assert errors == {("2", "state", "nvml_error_999"): 1}
    up_gpus = {lb["gpu"] for lb, _ in samples(fast, "kvscope_nvlink_links_active")}
    assert up_gpus == set("0134567")
    assert len(_by_gpu(fast, "kvscope_nvlink_transmit_bytes_total")) == 8
    pool.shutdown()
