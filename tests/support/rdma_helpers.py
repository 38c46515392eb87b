"""Shared helpers of the RDMA tests: run the CLI, read exposition samples, write fake tools."""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from conftest import collect_sim_once, context_of
from kvscope.cli import main
from kvscope.config import load
from kvscope.sim.node import SimNode
from kvscope.sim.scenarios import SimOptions, build_scenario

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rdma"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str,
          **labels: str) -> float:
    matches = [v for lb, v in found.get(name, []) if all(lb.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples"
    return matches[0]


def fake_tool(tmp_path: Path, name: str, body: str) -> Path:
    """An executable Python script standing in for eadm: the real subprocess path, fake output."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport os, sys, time, pathlib\n{body}\n")
    path.chmod(0o755)
    return path


def eadm_printing(tmp_path: Path, stat_fixture: str) -> Path:
    stat = FIXTURES / "eadm" / stat_fixture
    ver = FIXTURES / "eadm" / "ver.txt"
    return fake_tool(tmp_path, "eadm", (
        "args = sys.argv[1:]\n"
        f"text = pathlib.Path({str(ver)!r} if args[:1] == ['ver'] else {str(stat)!r}).read_text()\n"
        "sys.stdout.write(text)\n"))


def collector_up(found: dict[str, list[tuple[dict[str, str], float]]], collector: str) -> float:
    """kvscope_collector_up of one collector over its tiers: 1 only when every tier is up."""
    values = [v for lb, v in found.get("kvscope_collector_up", []) if lb["collector"] == collector]
    assert values, f"no kvscope_collector_up for {collector}"
    return min(values)


# The simulated node's RDMA, read through the production collector (GPU collector off).
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def node_for(scenario: str, clock: Clock, fault_delay: float = 0.0) -> SimNode:
    return build_scenario(scenario, SimOptions(clock=clock, fault_delay=fault_delay,
                                               latency_scale=0.0))


async def scrape(node: SimNode, **overrides: object) -> dict[str, list[tuple[dict[str, str],
                                                                              float]]]:
    config = load(None, {"collectors.gpu.enabled": False, **overrides})
    ctx = context_of(config, oneshot=True, sim_node=node)
    return samples((await collect_sim_once(ctx)).decode())
