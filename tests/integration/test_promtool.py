"""`promtool check metrics` over every kvscope_* family the agent exports, in every scenario.

Two RDMA pass-through families keep "counter" in their names (see COUNTER_IN_NAME).
The DCGM_* families keep dcgm-exporter's names (no `_total` on counters) on purpose and are left
out. The kvscope_gpu_* and kvscope_nvlink_* series carry dcgm-exporter's identity label keys
(`UUID`, `modelName`, `Hostname`, `DCGM_FI_DRIVER_VERSION`) so that they join with DCGM_* series:
promtool's camelCase warning about exactly those keys is the one finding allowed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import pytest

from conftest import two_poll_families
from kvscope.render.exposition import render_text
from kvscope.sim.scenarios import all_scenarios

DCGM_LABEL_KEYS = {"UUID", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"}
# Pass-through families whose names are part of the RDMA contract (issue #4 fixed
# kvscope_rdma_hw_counter_total{device,port,counter}; the PMA one mirrors it): the raw kernel
# counter name is the `counter` label, so "counter" in the family name is the point.
COUNTER_IN_NAME = {"kvscope_rdma_hw_counter_total", "kvscope_rdma_port_counter_total"}
CAMEL = re.compile(r"^(\S+) label names should be written in 'snake_case' not 'camelCase'$")


async def kvscope_families(scenario: str) -> str:
    families = [f for f in await two_poll_families(scenario) if f.name.startswith("kvscope_")]
    return render_text(families).decode()


def camel_keys_of(text: str, family: str) -> set[str]:
    keys: set[str] = set()
    for line in text.splitlines():
        if line.startswith(family + "{"):
            keys |= {k for k in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', line)
                     if k != k.lower()}
    return keys


@pytest.mark.parametrize("scenario", sorted(all_scenarios()))
async def test_promtool_accepts_kvscope_families(scenario: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool comes with Debian's prometheus (tests/run.sh)"
    text = await kvscope_families(scenario)
    assert "kvscope_collector_up" in text
    lint = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"], input=text,
                                   text=True, capture_output=True, check=False, timeout=60)
    problems = []
    for line in (lint.stdout + lint.stderr).splitlines():
        match = CAMEL.match(line.strip())
        if match and camel_keys_of(text, match.group(1)) <= DCGM_LABEL_KEYS:
            continue  # the dcgm-exporter identity labels, kept for joins
        if any(line.strip() == f"{name} metric name should not include type 'counter'"
               for name in COUNTER_IN_NAME):
            continue
        if line.strip():
            problems.append(line.strip())
    assert not problems, "\n".join(sorted(set(problems)))
