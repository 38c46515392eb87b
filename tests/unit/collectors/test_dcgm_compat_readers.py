"""kvscope's own readers of DCGM series (doctor, index page) work under every dcgm.compat."""

from __future__ import annotations

import pytest

from conftest import FrozenClock, doctor_run, sim_context
from kvscope.app import build_runtime
from kvscope.collectors.dcgm_compat import names_in_48_units
from kvscope.web import status_page


def _gpu_lines(report: str) -> str:
    start = report.index("GPUs")
    return report[start:start + 2000]


async def _doctor(compat: str) -> str:
    ctx = sim_context("oom-risk", clock=FrozenClock(), overrides={"dcgm.compat": compat})
    report, _ = await doctor_run(ctx)
    return _gpu_lines(report)


async def _index(compat: str) -> str:
    ctx = sim_context("oom-risk", clock=FrozenClock(), overrides={"dcgm.compat": compat})
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    page = status_page.gpu_section(runtime.families())
    await runtime.stop()
    return page


@pytest.mark.parametrize("compat", ["4.8.3", "4.9", "4.10"])
async def test_doctor_reads_the_same_under_each_generation(compat: str) -> None:
    baseline = await _doctor("4.8")
    assert "framebuffer 99" in baseline or "99." in baseline
    assert await _doctor(compat) == baseline


@pytest.mark.parametrize("compat", ["4.9", "4.10"])
async def test_index_page_reads_the_same_under_each_generation(compat: str) -> None:
    baseline = await _index("4.8")
    assert "GiB" in baseline
    assert await _index(compat) == baseline


def test_names_in_48_units() -> None:
    assert names_in_48_units("gpu_util") == [("DCGM_FI_DEV_GPU_UTIL", 1.0),
                                             ("DCGM_FI_DEV_GPU_UTIL_RATIO", 100.0)]
    assert names_in_48_units("gpm_pcie_tx_mibps")[-1] == (
        "DCGM_FI_PROF_PCIE_TX_BYTES_PER_SECOND", 1.0)
