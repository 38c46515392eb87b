"""The soak's short form (issue #15): the agent on the simulated node, scraped 50 times a second
for 24 s while bench/soak_faults.py toggles a fault every 3 s. No scrape may fail, the faults
must have struck (the agent counted them), and memory, fds and threads must not pile up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_short_soak_no_failed_scrape_and_bounded_growth(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--seconds", "24",
                          "--window", "6", "--fault-period", "3", "--json", str(out)],
                         capture_output=True, text=True, timeout=240, check=False, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["agent_alive"] and result["failed"] == 0, result["failures"]
    assert len(result["windows"]) >= 4
    assert sum(w["scrapes"] for w in result["windows"]) > 100
    struck = {key.split("/")[0] for key in result["collector_errors"]}
    assert "gpu" in struck, result["collector_errors"]  # the NVML faults reached the agent
    grown = result["growth"]
    assert grown["rss_mib"] < 8.0, result["windows"]
    assert grown["fds"] <= 4, result["windows"]
    assert grown["threads"] <= 2, result["windows"]
