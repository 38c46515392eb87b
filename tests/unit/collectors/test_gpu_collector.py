"""The GPU collector on the simulated node: names, values, absent series, faults."""

from __future__ import annotations

import pytest

from conftest import FrozenClock, by_gpu, collector_up, parse, sim_context
from kvscope.app import build_runtime
from kvscope.collectors.base import Tier
from kvscope.collectors.gpu import GpuCollector
from kvscope.runtime import Runtime
from kvscope.sim.scenarios import HOTSPOT_UTIL

MIB = 1024 * 1024


async def collect(ctx) -> dict[str, list[tuple[dict[str, str], float]]]:  # type: ignore[no-untyped-def]
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    body = runtime.exposition()
    await runtime.stop()
    return parse(body)


async def test_hotspot_pattern_on_dcgm_names() -> None:
    metrics = await collect(sim_context("gpu0-hotspot"))
    util = by_gpu(metrics["DCGM_FI_DEV_GPU_UTIL"])
    assert [util[str(i)] for i in range(8)] == pytest.approx(list(HOTSPOT_UTIL), abs=1.0)
    labels = metrics["DCGM_FI_DEV_GPU_UTIL"][0][0]
    assert set(labels) == {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
                           "DCGM_FI_DRIVER_VERSION"}
    assert labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert labels["device"] == f"nvidia{labels['gpu']}"
    assert labels["pci_bus_id"].startswith("00000000:")


async def test_units_follow_dcgm_exporter() -> None:
    ctx = sim_context("oom-risk")
    gpu2 = ctx.sim.gpus[2]
    metrics = await collect(ctx)
    _, reserved, used, free = ctx.sim.memory_bytes(gpu2)
    assert by_gpu(metrics["DCGM_FI_DEV_FB_USED"])["2"] == used // MIB
    assert by_gpu(metrics["DCGM_FI_DEV_FB_FREE"])["2"] == free // MIB
    assert by_gpu(metrics["DCGM_FI_DEV_FB_RESERVED"])["2"] == reserved // MIB
    power = by_gpu(metrics["DCGM_FI_DEV_POWER_USAGE"])["2"]
    assert power == pytest.approx(ctx.sim.power_w(gpu2), abs=0.001)  # mW -> W
    energy = by_gpu(metrics["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"])["2"]
    assert energy == ctx.sim.energy_mj(gpu2)  # stays in mJ, like dcgm-exporter
    ratio = used / (used + free)
    assert ratio > 0.99
    peers = [by_gpu(metrics["DCGM_FI_DEV_FB_USED"])[str(i)] for i in (0, 1, 3)]
    assert all(p < used // MIB for p in peers)


async def test_not_supported_means_absent_not_zero() -> None:
    ctx = sim_context("healthy", not_supported={"nvmlDeviceGetEncoderUtilization",
                                                "nvmlDeviceGetTotalEccErrors"})
    metrics = await collect(ctx)
    assert "DCGM_FI_DEV_ENC_UTIL" not in metrics
    assert "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL" not in metrics
    assert len(metrics["DCGM_FI_DEV_DEC_UTIL"]) == 8  # the neighbouring call still works
    up = collector_up(metrics["kvscope_collector_up"])
    assert up["gpu"] == 1


async def test_not_supported_is_remembered_per_gpu() -> None:
    ctx = sim_context("healthy", not_supported={"nvmlDeviceGetEncoderUtilization"})
    runtime = build_runtime(ctx)
    gpu = next(c for c in runtime.collectors if c.name == "gpu")
    await runtime.poll_once(gpu, Tier.STATIC)
    for _ in range(3):
        await runtime.poll_once(gpu, Tier.FAST)
    await runtime.stop()
    assert ctx.nvml.calls["nvmlDeviceGetEncoderUtilization"] == 8  # once per GPU, not per poll


async def test_gpu_lost_keeps_other_gpus() -> None:
    clock = FrozenClock()
    ctx = sim_context("xid-79", clock=clock, fault_delay=60.0, oneshot=False)
    runtime = build_runtime(ctx)
    gpu = next(c for c in runtime.collectors if c.name == "gpu")
    for tier in (Tier.STATIC, Tier.FAST, Tier.SLOW, Tier.EVENT):
        await runtime.poll_once(gpu, tier)
    before = parse(runtime.exposition())
    assert set(by_gpu(before["kvscope_gpu_up"]).values()) == {1.0}

    clock.advance(61)  # past the XID and the loss
    await runtime.poll_once(gpu, Tier.EVENT)
    await runtime.poll_once(gpu, Tier.FAST)
    after = parse(runtime.exposition())
    await runtime.stop()
    up = by_gpu(after["kvscope_gpu_up"])
    assert up["3"] == 0 and all(up[str(i)] == 1 for i in range(8) if i != 3)
    assert "3" not in by_gpu(after["DCGM_FI_DEV_GPU_UTIL"])
    assert len(after["DCGM_FI_DEV_GPU_UTIL"]) == 7
    # XID: the compatible gauge holds the code, the counter counts it.
    xid = {labels["gpu"]: (labels, v) for labels, v in after["DCGM_FI_DEV_XID_ERRORS"]}
    assert xid["3"][1] == 79 and xid["3"][0]["err_msg"] == "GPU has fallen off the bus"
    assert xid["0"][1] == 0
    totals = after["kvscope_gpu_xid_errors_total"]
    assert [(labels["gpu"], labels["xid"], v) for labels, v in totals] == [("3", "79", 1.0)]
    health = collector_up(after["kvscope_collector_up"])
    assert health["gpu"] == 1  # a lost GPU is a fact about the GPU, not a broken collector


async def test_gpu_lost_before_discovery_still_reported() -> None:
    metrics = await collect(sim_context("xid-79"))  # fault delay 0: lost from the start
    lost = [labels for labels, v in metrics["kvscope_gpu_up"] if v == 0]
    assert [labels["gpu"] for labels in lost] == ["3"]
    assert lost[0]["device"] == "nvidia3"


async def test_no_nvml_library_serves_everything_else() -> None:
    metrics = await collect(sim_context("no-nvml"))
    assert metrics["kvscope_gpu_nvml_available"] == [({}, 0.0)]
    assert not any(name.startswith("DCGM_") for name in metrics)
    up = collector_up(metrics["kvscope_collector_up"])
    # A GPU collector that exports nothing is down, with its reason; the rest is served.
    assert up == {"gpu": 0.0, "self": 1.0}
    errors = {(lb["collector"], lb["reason"]): v
              for lb, v in metrics["kvscope_collector_errors_total"]}
    assert errors == {("gpu", "nvml_unavailable"): 1.0}
    assert "process_resident_memory_bytes" in metrics


async def test_nvml_without_gpus_is_a_collector_down_not_an_empty_success() -> None:
    metrics = await collect(sim_context("healthy", gpus=[]))
    assert metrics["kvscope_gpu_nvml_available"] == [({}, 1.0)]
    assert "kvscope_gpu_up" not in metrics
    up = collector_up(metrics["kvscope_collector_up"])
    assert up == {"gpu": 0.0, "self": 1.0}
    errors = metrics["kvscope_collector_errors_total"]
    assert {(lb["collector"], lb["reason"]) for lb, _ in errors} == {("gpu", "no_gpus")}


async def test_gpm_ratios_need_a_real_window() -> None:
    clock = FrozenClock()
    ctx = sim_context("gpu0-hotspot", clock=clock)
    collector = GpuCollector(ctx, monotonic=clock)
    runtime = Runtime([collector], clock=clock)
    await runtime.poll_once(collector, Tier.STATIC)
    await runtime.poll_once(collector, Tier.FAST)
    first = parse(runtime.exposition())
    assert "DCGM_FI_PROF_SM_ACTIVE" not in first  # zero-length window: absent, not 0
    clock.advance(5)
    await runtime.poll_once(collector, Tier.FAST)
    second = parse(runtime.exposition())
    await runtime.stop()
    sm = by_gpu(second["DCGM_FI_PROF_SM_ACTIVE"])
    assert sm["0"] == pytest.approx(0.98 * 0.82, abs=0.02)
    assert sm["0"] > sm["7"]
    assert all(0 <= v <= 1 for v in sm.values())
    # PCIe throughput from GPM MiB/s, exported in bytes/s under DCGM's profiling name.
    rx = by_gpu(second["DCGM_FI_PROF_PCIE_RX_BYTES"])
    assert rx["0"] == pytest.approx((900 + 80 * 98) * 1024 * 1024, rel=0.02)
    assert "kvscope_gpu_pcie_receive_bytes_total" not in second  # 32-bit NVML fields unused


async def test_clock_event_reasons_split_per_reason() -> None:
    ctx = sim_context("gpu0-hotspot")
    ctx.sim.gpus[0].power_limit_w = 600  # GPU 0 at 98 % draws ~677 W: power-capped
    metrics = await collect(ctx)
    active = {(labels["gpu"], labels["reason"]): v
              for labels, v in metrics["kvscope_gpu_clock_event_active"]}
    assert active[("0", "power_cap")] == 1
    assert active[("7", "power_cap")] == 0
    assert by_gpu(metrics["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"])["0"] == 0x4


async def test_hostname_label_key_and_driver_label_configurable() -> None:
    ctx = sim_context("healthy", overrides={"hostname_label": "hostname",
                                            "driver_version_label": False})
    metrics = await collect(ctx)
    labels = metrics["DCGM_FI_DEV_GPU_TEMP"][0][0]
    assert labels["hostname"] == "golden-node"
    assert "Hostname" not in labels and "DCGM_FI_DRIVER_VERSION" not in labels


async def test_pod_labels_from_attribution() -> None:
    ctx = sim_context("healthy")
    uuid = ctx.sim.gpus[1].uuid
    ctx.shared.pods.publish({uuid: {"pod": "sglang-prefill-0", "namespace": "inference",
                                    "container": "sglang"}})
    metrics = await collect(ctx)
    labels = next(lb for lb, _ in metrics["DCGM_FI_DEV_GPU_UTIL"] if lb["gpu"] == "1")
    assert (labels["pod"], labels["namespace"], labels["container"]) == \
        ("sglang-prefill-0", "inference", "sglang")
    other = next(lb for lb, _ in metrics["DCGM_FI_DEV_GPU_UTIL"] if lb["gpu"] == "2")
    assert "pod" not in other  # unallocated GPUs carry no pod labels at all


async def test_energy_counter_only_grows() -> None:
    clock = FrozenClock()
    ctx = sim_context("healthy", clock=clock)
    gpu = ctx.sim.gpus[5]
    readings = []
    for _ in range(40):
        readings.append(ctx.sim.energy_mj(gpu))
        clock.advance(3.7)
    assert readings == sorted(readings) and readings[-1] > readings[0]
