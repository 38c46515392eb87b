"""Seconds given on the command line are bounded like those of the config file: `inf` or `nan`
would make a wait endless (or every comparison with it false), so each is refused in one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kvscope.cli import main


@pytest.mark.parametrize(("args", "flag"), [
    (["demo", "--sim.fault-delay", "inf"], "--sim.fault-delay"),
    (["demo", "--sim.fault-delay", "-1"], "--sim.fault-delay"),
    (["doctor", "--window", "nan"], "--window"),
    (["doctor", "--window", "1e9"], "--window"),
    (["doctor", "--url", "http://127.0.0.1:9/metrics", "--url.timeout", "0"], "--url.timeout"),
    (["doctor", "--url", "http://127.0.0.1:9/metrics", "--url.timeout", "abc"], "--url.timeout"),
])
def test_unbounded_seconds_are_refused_in_one_line(args: list[str], flag: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and flag in errors[0], result.output
    assert "Traceback" not in result.output


def test_zero_is_a_valid_fault_delay_and_window() -> None:
    from kvscope.cli import SecondsFlag

    assert SecondsFlag(allow_zero=True).convert("0", None, None) == 0.0
    assert SecondsFlag().convert("2.5", None, None) == 2.5
