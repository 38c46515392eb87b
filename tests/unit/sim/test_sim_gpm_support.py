"""The simulator tells the truth about GPM: Hopper and newer only (issue 11, item 5).

NVML's nvmlGpmQueryDeviceSupport says 0 on an L40S (Ada) or A100 (Ampere), so without DCGM's
profiling module such a node gets no DCGM_FI_PROF_* series at all; the utilisation counter
(DCGM_FI_DEV_GPU_UTIL) is all it has.
"""

from __future__ import annotations

import pytest

from conftest import parse, sim_context
from kvscope.app import build_runtime
from kvscope.sim.nvml import gpm_supported


async def _families(scenario: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    ctx = sim_context(scenario, overrides={"collectors.gpu.min_gpm_window": 1e-6})
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    await runtime.poll_all_once()  # the second poll closes the first GPM window
    body = runtime.exposition()
    await runtime.stop()
    return parse(body)


@pytest.mark.parametrize("scenario", ["pcie-only", "nvswitch-a100"])
async def test_pre_hopper_gpus_get_no_profiling_ratios(scenario: str) -> None:
    metrics = await _families(scenario)
    assert not [name for name in metrics if name.startswith("DCGM_FI_PROF_")]
    assert len(metrics["DCGM_FI_DEV_GPU_UTIL"]) == 8  # what a pre-Hopper user does get


@pytest.mark.parametrize("scenario", ["healthy", "h200x2"])
async def test_hopper_gpus_get_them(scenario: str) -> None:
    metrics = await _families(scenario)
    assert metrics["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]
    assert metrics["DCGM_FI_PROF_SM_ACTIVE"]


def test_gpm_generations_by_name() -> None:
    assert gpm_supported("NVIDIA H200") and gpm_supported("NVIDIA H100 80GB HBM3")
    assert gpm_supported("NVIDIA H20") and gpm_supported("NVIDIA B200")
    assert not gpm_supported("NVIDIA L40S") and not gpm_supported("NVIDIA A100-SXM4-80GB")


async def test_pre_hopper_node_says_so_once_per_gpu(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="kvscope.collectors.gpu")
    ctx = sim_context("pcie-only")
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    await runtime.poll_all_once()
    await runtime.stop()
    lines = [r.getMessage() for r in caplog.records if "no NVML GPM" in r.getMessage()]
    assert len(lines) == 8 and "NVIDIA L40S" in lines[0]
