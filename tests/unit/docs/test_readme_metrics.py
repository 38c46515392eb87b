"""The README's metric reference stays in step with the code, both ways."""

from __future__ import annotations

import re
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from conftest import FrozenClock, sim_context, start_sim_services
from kvscope.app import build_runtime
from kvscope.sim.scenarios import all_scenarios

REPO = Path(__file__).resolve().parents[3]
ROW = re.compile(r"^\| ((?:`[A-Za-z_:][A-Za-z0-9_:]*`(?:, )?)+) \|", re.MULTILINE)


def readme_metrics() -> set[str]:
    text = (REPO / "README.md").read_text()
    names: set[str] = set()
    for match in ROW.finditer(text):
        names.update(re.findall(r"`([^`]+)`", match.group(1)))
    return names


def source_text() -> str:
    return "\n".join(p.read_text() for p in (REPO / "exporters" / "kvscope").rglob("*.py"))


_EXPORTED: dict[str, set[str]] = {}


async def exported_families(scenario: str) -> set[str]:
    if scenario not in _EXPORTED:
        _EXPORTED[scenario] = await _export(scenario)
    return _EXPORTED[scenario]


async def _export(scenario: str) -> set[str]:
    clock = FrozenClock()
    ctx = sim_context(scenario, clock=clock, overrides={
        f"collectors.{c}.enabled": True for c in ("nvlink", "topology", "rdma", "engines")})
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)  # fake sysfs, eadm, kubelet, API, engines
        runtime = build_runtime(ctx)
        await runtime.poll_all_once()
        clock.advance(5)
        await runtime.poll_all_once()  # a second poll: rates and GPM windows appear
        names = set()
        for family in runtime.families():
            names.update(sample.name.removesuffix("_created") for sample in family.samples)
        await runtime.stop()
    return names


@pytest.mark.parametrize("scenario", sorted(all_scenarios()))
async def test_every_exported_family_is_documented(scenario: str) -> None:
    documented = readme_metrics()
    exported = await exported_families(scenario)
    # Histogram and summary series share their family's row.
    bases = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported}
    missing = sorted(n for n in bases if n not in documented and
                     not any(n == d or n.startswith(d + "_") for d in documented
                             if d.endswith(("_seconds", "_bytes", "_tokens", "_ratio"))))
    assert not missing, f"exported by scenario {scenario} but not in README: {missing}"


async def test_every_documented_family_exists() -> None:
    """Each README name is either spelled in the code or exported by some scenario (names built
    from a source's keys, like eadm's counters, are only seen in output)."""
    code = source_text()
    exported: set[str] = set()
    for scenario in sorted(all_scenarios()):
        exported |= await exported_families(scenario)
    absent = sorted(n for n in readme_metrics() if n not in code and n not in exported and
                    not n.startswith("process_"))  # prometheus_client's process collector
    assert not absent, f"documented in README but neither in exporters/ nor exported: {absent}"
