"""The GPM check's verdicts (scripts/check_gpm.py): the criteria the hardware run is judged by."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "check_gpm.py"
spec = importlib.util.spec_from_file_location("check_gpm", SCRIPT)
assert spec and spec.loader
check_gpm = importlib.util.module_from_spec(spec)
sys.modules["check_gpm"] = check_gpm
spec.loader.exec_module(check_gpm)


def test_saturated_needs_sm_active_of_at_least_0_9() -> None:
    saturated = check_gpm.phases([1.0])[0]
    assert saturated.passes(0.95)
    assert saturated.passes(0.9)
    assert not saturated.passes(0.54)  # what the old in-process load gave


def test_half_duty_needs_sm_active_within_0_1_of_half() -> None:
    half = check_gpm.phases([1.0, 5.0])
    assert [p.period for p in half[1:]] == [1.0, 5.0]
    assert half[1].passes(0.45)
    assert half[1].passes(0.41)
    assert not half[1].passes(0.39)
    assert not half[1].passes(0.95)  # a load that never idled


def test_a_period_that_does_not_divide_the_gpm_window_is_refused() -> None:
    # 4 s of load in 5 s windows: each window holds 37.5-62.5 % busy time, not 50 %.
    with pytest.raises(SystemExit, match="does not divide"):
        check_gpm.phases([4.0])
    assert [p.period for p in check_gpm.phases([2.5, 5.0])[1:]] == [2.5, 5.0]


def test_verdict_uses_the_time_average_of_the_windows() -> None:
    half = check_gpm.phases([5.0])[1]
    # Two windows at 0.35 and 0.65 average 0.5: a pass, though neither window alone is close.
    samples = check_gpm.Samples({"DCGM_FI_PROF_SM_ACTIVE": [0.35, 0.65]})
    assert samples.mean("DCGM_FI_PROF_SM_ACTIVE") == pytest.approx(0.5)
    assert check_gpm.report([(half, samples)])[1]


def test_report_fails_a_phase_with_no_gpm_samples() -> None:
    saturated, half = check_gpm.phases([1.0])
    good = check_gpm.Samples({"DCGM_FI_PROF_SM_ACTIVE": [0.95, 0.96], "DCGM_FI_DEV_GPU_UTIL": [99]})
    table, ok = check_gpm.report([(saturated, good), (half, check_gpm.Samples())])
    assert not ok
    assert "| saturated | 2 | 99-99 |" in table
    assert "absent" in table and "FAIL" in table
    table, ok = check_gpm.report([(saturated, good)])
    assert ok and "pass" in table
