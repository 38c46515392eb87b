"""GPU counters count every occurrence: NVML call errors per poll, XID events per event."""

from __future__ import annotations

from conftest import FrozenClock, parse, sim_context
from kvscope.app import build_runtime
from kvscope.collectors.base import Tier
from kvscope.sim.node import XidFault

NVML_ERROR_TIMEOUT = 10  # nvml.h NVML_ERROR_TIMEOUT


async def test_nvml_errors_are_counted_on_every_poll() -> None:
    ctx = sim_context("healthy",
                      failing_calls={"nvmlDeviceGetEncoderUtilization": NVML_ERROR_TIMEOUT})
    runtime = build_runtime(ctx)
    gpu = next(c for c in runtime.collectors if c.name == "gpu")
    await runtime.poll_once(gpu, Tier.STATIC)
    for _ in range(3):
        await runtime.poll_once(gpu, Tier.FAST)
    metrics = parse(runtime.exposition())
    await runtime.stop()
    errors = {(lb["gpu"], lb["error"]): v for lb, v in metrics["kvscope_gpu_nvml_errors_total"]}
    assert errors == {(str(i), "timeout"): 3.0 for i in range(8)}
    assert {lb["call"] for lb, _ in metrics["kvscope_gpu_nvml_errors_total"]} == {"encoder"}
    assert "DCGM_FI_DEV_ENC_UTIL" not in metrics  # the failed read is absent, not 0
    assert len(metrics["DCGM_FI_DEV_DEC_UTIL"]) == 8


async def test_every_xid_event_is_counted() -> None:
    clock = FrozenClock()
    faults = [XidFault(after=0, gpu=2, xid=13) for _ in range(3)]
    ctx = sim_context("healthy", clock=clock,
                      xid_faults=[*faults, XidFault(after=0, gpu=5, xid=31)])
    runtime = build_runtime(ctx)
    gpu = next(c for c in runtime.collectors if c.name == "gpu")
    await runtime.poll_once(gpu, Tier.STATIC)
    for _ in range(5):  # one event per wait; the last polls find none
        await runtime.poll_once(gpu, Tier.EVENT)
    metrics = parse(runtime.exposition())
    await runtime.stop()
    totals = {(lb["gpu"], lb["xid"]): v for lb, v in metrics["kvscope_gpu_xid_errors_total"]}
    assert totals == {("2", "13"): 3.0, ("5", "31"): 1.0}
    last = {lb["gpu"]: v for lb, v in metrics["DCGM_FI_DEV_XID_ERRORS"]}
    assert last["2"] == 13 and last["5"] == 31 and last["0"] == 0
