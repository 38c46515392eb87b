"""Golden exposition per scenario: the GPU collector's output on the frozen simulated node.

Regenerate after an intended change with
`KVSCOPE_UPDATE_GOLDEN=1 pytest tests/unit/collectors/test_golden.py`
and review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import FrozenClock, sim_context
from kvscope.app import build_runtime
from kvscope.render.exposition import render_text

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
# Values that depend on the test machine, not on the node: left out of the golden files.
VOLATILE = ("process_", "kvscope_collector_duration_seconds",
            "kvscope_collector_last_success_timestamp_seconds", "kvscope_build_info")
SCENARIOS = ("healthy", "gpu0-hotspot", "oom-risk", "xid-79", "no-nvml")


async def _render(scenario: str) -> bytes:
    ctx = sim_context(scenario, clock=FrozenClock())
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    families = [f for f in runtime.families() if not f.name.startswith(VOLATILE)]
    await runtime.stop()
    return render_text(families)


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_golden_exposition(scenario: str) -> None:
    body = await _render(scenario)
    path = GOLDEN / f"gpu-{scenario}.prom"
    if os.environ.get("KVSCOPE_UPDATE_GOLDEN"):
        path.write_bytes(body)
    assert path.exists(), f"missing golden file {path}; run with KVSCOPE_UPDATE_GOLDEN=1"
    assert body.decode() == path.read_text()
