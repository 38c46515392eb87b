"""NVML failing as a whole (issue 15, items 1, 8 and the NVML part of 16), injected through the
simulator: a driver reload under the event wait, reads that fail without GPU_IS_LOST, and a
hang that holds the driver for every caller, from the agent's first poll."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import AsyncExitStack

import pytest

from conftest import FrozenClock, collector_up, parse, sim_context, start_sim_services
from kvscope.app import build_runtime
from kvscope.runtime import Runtime
from kvscope.sources.nvml.library import NVML_ERROR_UNKNOWN

# Every call of the GPU collector's fast tier (sources/nvml/device.py FAST_READERS and GPM).
FAST_CALLS = (
    "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetEncoderUtilization",
    "nvmlDeviceGetDecoderUtilization", "nvmlDeviceGetClockInfo", "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetFieldValues", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetCurrPcieLinkGeneration",
    "nvmlDeviceGetCurrPcieLinkWidth", "nvmlDeviceGetMaxPcieLinkGeneration",
    "nvmlDeviceGetMaxPcieLinkWidth", "nvmlGpmSampleGet", "nvmlGpmMetricsGet")


def gpu_up(runtime: Runtime) -> list[float]:
    return [v for _, v in parse(runtime.exposition()).get("kvscope_gpu_up", [])]


def kvscope_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("kvscope")]


async def test_driver_reload_backs_off_logs_once_and_series_come_back(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kvscope")
    clock = FrozenClock()
    ctx = sim_context("driver-reload", clock=clock, fault_delay=10.0, oneshot=False, overrides={
        "collectors.gpu.xid_wait": 0.2, "collectors.gpu.cadence.fast": 0.1})
    session = ctx.backends.nvml
    session.retry_first, session.retry_max = 0.1, 0.4
    runtime = build_runtime(ctx)
    await runtime.start()
    try:
        await asyncio.sleep(0.5)
        assert gpu_up(runtime) == [1.0] * 8
        clock.advance(15.0)  # the driver goes away (node seconds 10 to 30)
        waits = ctx.nvml.calls["nvmlEventSetWait"]
        await asyncio.sleep(1.5)
        # The failing wait would answer at once, in a loop (~800 polls/s before the fix).
        assert ctx.nvml.calls["nvmlEventSetWait"] - waits <= 10
        assert gpu_up(runtime) == [0.0] * 8  # reads fail: not observed, not "up"
        assert "DCGM_FI_DEV_GPU_UTIL" not in parse(runtime.exposition())
        # One line per tier when NVML broke (the event wait, the fast reads), not one per poll.
        said = kvscope_warnings(caplog)
        assert len(said) == len(set(said)) <= 2, said
        clock.advance(20.0)  # the driver is back; the old session is dead until re-initialised
        await asyncio.sleep(2.0)
        metrics = parse(runtime.exposition())
        assert gpu_up(runtime) == [1.0] * 8
        assert len(metrics["DCGM_FI_DEV_GPU_UTIL"]) == 8
        assert session.generation == 2 and session.broken is None
        assert kvscope_warnings(caplog) == said
    finally:
        await runtime.stop()


async def test_gpu_up_is_0_while_every_read_of_the_gpu_fails() -> None:
    ctx = sim_context("healthy", failing_calls=dict.fromkeys(FAST_CALLS, NVML_ERROR_UNKNOWN))
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    assert gpu_up(runtime) == [0.0] * 8
    await runtime.stop()


async def test_one_failing_call_leaves_the_gpu_up() -> None:
    ctx = sim_context("healthy", failing_calls={"nvmlDeviceGetPowerUsage": NVML_ERROR_UNKNOWN})
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    assert gpu_up(runtime) == [1.0] * 8
    await runtime.stop()


async def test_a_hang_after_enumeration_exports_gpu_up_0_and_keeps_exporting_it() -> None:
    clock = FrozenClock()
    ctx = sim_context("nvml-hang", clock=clock, fault_delay=1.0, oneshot=False, overrides={
        "collectors.gpu.timeout": 0.3, "collectors.gpu.cadence.fast": 0.2})
    runtime = build_runtime(ctx)
    await runtime.start()
    try:
        clock.advance(2.0)  # the driver wedges after the GPUs were enumerated
        await asyncio.sleep(2.0)  # many fast polls, all behind the first, hung read
        assert gpu_up(runtime) == [0.0] * 8  # so an alert on kvscope_gpu_up == 0 fires
        errors = {lb["reason"] for lb, _ in
                  parse(runtime.exposition())["kvscope_collector_errors_total"]
                  if lb["collector"] == "gpu"}
        assert {"timeout", "busy"} <= errors
    finally:
        await runtime.stop()


def test_a_hung_call_blocks_every_nvml_caller_as_a_wedged_driver_does() -> None:
    ctx = sim_context("healthy", slow_calls={"nvmlDeviceGetUtilizationRates": 1.5})
    fake = ctx.nvml
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    hung = threading.Thread(target=fake.nvmlDeviceGetUtilizationRates, args=(handle,),
                            daemon=True)
    hung.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert fake.nvmlDeviceGetCount() == 8  # an unrelated call waits for the hung one
    assert time.monotonic() - started >= 1.0
    hung.join()


async def test_other_collectors_serve_while_nvml_is_wedged() -> None:
    ctx = sim_context("nvml-hang", overrides={
        "collectors.gpu.timeout": 0.5, "collectors.nvlink.timeout": 0.5,
        "collectors.nvlink.cadence.slow": 1.0,
        **{f"collectors.{c}.enabled": True for c in ("nvlink", "topology", "rdma", "engines")}})
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        runtime = build_runtime(ctx)
        try:
            await runtime.poll_all_once()
            metrics = parse(runtime.exposition())
        finally:
            await runtime.stop()
    up = collector_up(metrics["kvscope_collector_up"])
    assert up["gpu"] == 0 and up["nvlink"] == 0
    assert up["rdma"] == up["engines"] == up["self"] == 1
    assert "kvscope_rdma_port_state" in metrics or "kvscope_rdma_info" in metrics
    assert any(v == 1 for _, v in metrics["kvscope_engine_up"])
    assert [v for _, v in metrics["kvscope_gpu_up"]] == [0.0] * 8
