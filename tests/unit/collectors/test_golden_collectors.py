"""Golden exposition per collector: gpu, nvlink, topology, rdma, engines and self, each in the
simulated scenarios that exercise it, every collector on (tests/support/golden.py says how the
node is polled and what is normalised). The files are tests/golden/<collector>/<scenario>.prom.

Regenerate after an intended change of the exported output with
`KVSCOPE_UPDATE_GOLDEN=1 pytest tests/unit/collectors/test_golden_collectors.py`
(or `pytest --update-golden ...`) and review the diff like code.
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

import pytest

from golden import collector_families, normalised

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
# The scenarios that show each collector's healthy output and its incidents.
SCENARIOS: dict[str, tuple[str, ...]] = {
    "gpu": ("healthy", "mig", "xid-79"),
    "nvlink": ("healthy", "nvlink-degraded", "nvswitch-a100", "pcie-only"),
    "topology": ("healthy", "nvlink-bypass", "tp-over-pcie", "pcie-only-tp"),
    "rdma": ("healthy", "erdma", "qp-failure", "erdma-throttle", "port-down"),
    "engines": ("healthy", "kv-cache-full", "engine-down", "kv-transfer-slow"),
    "self": ("healthy",),  # only names, labels and types: every value is the test process's
}
CASES = [
    (collector, scenario) for collector, scenarios in SCENARIOS.items() for scenario in scenarios
]


@functools.cache
def _bodies(scenario: str) -> dict[str, str]:
    """Every collector's golden text for one scenario (one simulated node per scenario)."""
    families = asyncio.run(collector_families(scenario))
    return {name: normalised(fams) for name, fams in families.items()}


def _updating(config: pytest.Config) -> bool:
    return bool(os.environ.get("KVSCOPE_UPDATE_GOLDEN") or config.getoption("--update-golden"))


@pytest.mark.parametrize(("collector", "scenario"), CASES, ids=[f"{c}-{s}" for c, s in CASES])
def test_collector_golden_exposition(
    collector: str, scenario: str, pytestconfig: pytest.Config
) -> None:
    body = _bodies(scenario)[collector]
    assert "# TYPE" in body, f"{collector} exported nothing in scenario {scenario}"
    path = GOLDEN / collector / f"{scenario}.prom"
    if _updating(pytestconfig):
        path.parent.mkdir(exist_ok=True)
        path.write_text(body)
    assert path.exists(), f"missing golden file {path}; run with KVSCOPE_UPDATE_GOLDEN=1"
    assert body == path.read_text(), (
        f"{collector} in {scenario} differs from {path}; if intended, regenerate "
        "with KVSCOPE_UPDATE_GOLDEN=1 and review the diff"
    )


def test_normalising_is_stable_across_two_nodes() -> None:
    """Two separate simulated nodes (other ports, other timings) give the same golden text: what
    the normaliser leaves is the node's output, not the test machine's."""
    again = {
        name: normalised(fams) for name, fams in asyncio.run(collector_families("healthy")).items()
    }
    assert again == _bodies("healthy")


def test_every_registered_collector_has_a_golden() -> None:
    from kvscope.collectors.registry import REGISTRY

    assert {r.name for r in REGISTRY} == set(SCENARIOS)


def test_normaliser_hides_only_the_machine_dependent_parts() -> None:
    from kvscope.render.families import gauge

    up = gauge("kvscope_engine_up", "Up.").add({"instance": "127.0.0.1:40123"}, 1)
    took = gauge("kvscope_engine_scrape_duration_seconds", "Took.").add(
        {"instance": "127.0.0.1:40123"}, 0.0123
    )
    text = normalised([up.metric, took.metric])
    assert 'kvscope_engine_up{instance="127.0.0.1:<port>"} 1.0' in text
    assert 'kvscope_engine_scrape_duration_seconds{instance="127.0.0.1:<port>"} <volatile>' in text
    changed = normalised(
        [
            gauge("kvscope_engine_up", "Up.").add({"instance": "127.0.0.1:40999"}, 0).metric,
            took.metric,
        ]
    )
    assert changed != text  # a value that is the node's own still shows in the golden
