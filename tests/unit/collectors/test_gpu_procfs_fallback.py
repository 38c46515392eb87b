"""NVML hanging before it ever enumerated the GPUs (issue 15, item 8): the GPU collector names
the GPUs from the driver's procfs files, so kvscope_gpu_up 0 (and an alert on it) is there from
boot; with no procfs list either, the collector says it is down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from conftest import FrozenClock, collector_up, parse, sim_context, start_sim_services
from kvscope.app import build_runtime
from kvscope.runtime import Runtime
from kvscope.sim.scenarios import NVML_HANG_SECONDS

FAST = {
    "collectors.gpu.timeout": 0.3,
    "collectors.gpu.cadence.fast": 0.2,
    "collectors.gpu.cadence.static": 0.5,
}


def tier_up(
    metrics: dict[str, list[tuple[dict[str, str], float]]], collector: str, tier: str
) -> float:
    return next(
        v
        for lb, v in metrics["kvscope_collector_up"]
        if lb["collector"] == collector and lb["tier"] == tier
    )


Metrics = dict[str, list[tuple[dict[str, str], float]]]


def gpu_up_is(want: list[float]) -> Callable[[Metrics], bool]:
    return lambda metrics: [v for _, v in metrics.get("kvscope_gpu_up", [])] == want


def others_polled(metrics: Metrics) -> bool:
    polled = {lb["collector"] for lb, _ in metrics.get("kvscope_collector_up", [])}
    return {"rdma", "engines", "self"} <= polled and "kvscope_engine_up" in metrics


async def wait_until(
    runtime: Runtime, *conditions: Callable[[Metrics], bool], seconds: float = 10.0
) -> Metrics:
    """The exposition once every condition holds (or after `seconds`)."""
    metrics = parse(runtime.exposition())
    for _ in range(int(seconds / 0.1)):
        if all(condition(metrics) for condition in conditions):
            break
        await asyncio.sleep(0.1)
        metrics = parse(runtime.exposition())
    return metrics


async def test_a_hang_from_boot_names_every_gpu_from_procfs_until_nvml_answers() -> None:
    clock = FrozenClock()
    ctx = sim_context(
        "nvml-hang",
        clock=clock,
        fault_delay=0.0,
        oneshot=False,
        overrides={**FAST, **{f"collectors.{c}.enabled": True for c in ("rdma", "engines")}},
    )
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        runtime = build_runtime(ctx)
        await runtime.start()
        try:
            metrics = await wait_until(runtime, gpu_up_is([0.0] * 8), others_polled)
            up = metrics["kvscope_gpu_up"]
            assert [v for _, v in up] == [0.0] * 8
            assert ctx.nvml.calls["nvmlDeviceGetCount"] == 0  # NVML never enumerated them
            assert [
                (lb["gpu"], lb["UUID"], lb["pci_bus_id"], lb["device"], lb["modelName"])
                for lb, _ in up
            ] == [
                (str(g.index), g.uuid, g.pci_bus_id, f"nvidia{g.index}", g.name)
                for g in ctx.sim.gpus
            ]
            assert all(lb["Hostname"] == ctx.config.node_name for lb, _ in up)
            assert tier_up(metrics, "gpu", "fast") == 0
            assert {
                lb["reason"]
                for lb, _ in metrics["kvscope_collector_errors_total"]
                if lb["collector"] == "gpu"
            } >= {"not_initialised"}
            # The collectors that need no NVML serve as on a healthy node.
            others = collector_up(metrics["kvscope_collector_up"])
            assert others["rdma"] == others["engines"] == others["self"] == 1
            assert any(v == 1 for _, v in metrics["kvscope_engine_up"])
            assert "kvscope_rdma_port_state" in metrics or "kvscope_rdma_info" in metrics

            clock.advance(NVML_HANG_SECONDS)  # the driver answers again
            metrics = await wait_until(runtime, gpu_up_is([1.0] * 8))
            assert [v for _, v in metrics["kvscope_gpu_up"]] == [1.0] * 8
            assert [lb["UUID"] for lb, _ in metrics["kvscope_gpu_up"]] == [
                g.uuid for g in ctx.sim.gpus
            ]
            assert len(metrics["DCGM_FI_DEV_GPU_UTIL"]) == 8
        finally:
            await runtime.stop()


async def test_with_no_procfs_list_either_the_collector_says_it_is_down(tmp_path: Path) -> None:
    ctx = sim_context(
        "nvml-hang", fault_delay=0.0, overrides={**FAST, "paths.procfs": str(tmp_path)}
    )
    runtime = build_runtime(ctx)
    try:
        await runtime.poll_all_once()
        metrics = parse(runtime.exposition())
    finally:
        await runtime.stop()
    assert "kvscope_gpu_up" not in metrics  # no GPU is known: absent, never a made-up 0 or 1
    assert tier_up(metrics, "gpu", "fast") == 0
    assert ("gpu", "not_initialised") in {
        (lb["collector"], lb["reason"]) for lb, _ in metrics["kvscope_collector_errors_total"]
    }


async def test_a_file_that_names_no_gpu_is_an_error_and_the_others_are_exported(
    tmp_path: Path,
) -> None:
    from kvscope.sim.procfs import write_procfs

    ctx = sim_context(
        "nvml-hang", fault_delay=0.0, overrides={**FAST, "paths.procfs": str(tmp_path)}
    )
    write_procfs(ctx.sim, tmp_path)
    broken = sorted((tmp_path / "driver/nvidia/gpus").iterdir())[3] / "information"
    broken.write_text("Model: \t\t NVIDIA H100 80GB HBM3\n")
    runtime = build_runtime(ctx)
    try:
        await runtime.poll_all_once()
        metrics = parse(runtime.exposition())
    finally:
        await runtime.stop()
    assert [lb["gpu"] for lb, _ in metrics["kvscope_gpu_up"]] == ["0", "1", "2", "4", "5", "6", "7"]
    assert ("gpu", "procfs_parse") in {
        (lb["collector"], lb["reason"]) for lb, _ in metrics["kvscope_collector_errors_total"]
    }
