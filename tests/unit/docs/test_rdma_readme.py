"""The README's RDMA metric table lists exactly the families the RDMA collector exports."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from kvscope.collectors.rdma import _command_error
from kvscope.collectors.rdma_schema import EADM_NAMES, ERROR_REASONS, READ_ERROR_REASONS
from kvscope.parsers.rdma_sysfs import HW_TRAFFIC
from kvscope.sources.command import CommandResult, Outcome
from rdma_helpers import FIXTURES, Clock, cli, eadm_printing, node_for, samples, scrape

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"


def documented() -> set[str]:
    text = README.read_text()
    table = text[text.index("<!-- metrics:rdma -->"):text.index("<!-- /metrics:rdma -->")]
    return set(re.findall(r"^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \|", table, re.M))


@pytest.mark.parametrize("scenario", ["qp-failure", "port-down"])
def test_every_exported_rdma_family_is_documented(scenario: str, tmp_path: Path) -> None:
    found = asyncio.run(scrape(node_for(scenario, Clock())))
    code, out = cli("collect", "--path.sysfs", str(FIXTURES / "erdma-alibaba"),
                    "--no-collector.gpu", "--collector.rdma.eadm-path",
                    str(eadm_printing(tmp_path, "stat_malformed.txt")))
    assert code == 0
    names = set(found) | set(samples(out))
    code, out = cli("collect", "--path.sysfs", str(FIXTURES / "bnxt-re"), "--no-collector.gpu",
                    "--collector.rdma.eadm-path", "/nonexistent/eadm")  # hw_counters levels
    assert code == 0
    names |= set(samples(out))
    ours = {n for n in names if n.startswith(("kvscope_rdma_", "kvscope_erdma_"))}
    assert ours - documented() == set()


def test_every_documented_family_is_produced_by_the_code() -> None:
    source = "".join(p.read_text() for p in
                     (REPO / "exporters/kvscope/collectors").glob("*.py"))
    for name in documented():
        assert name in source or name in EADM_NAMES.values() or \
            name.startswith("kvscope_rdma_device_max_"), name


def test_hw_traffic_table_matches_the_code() -> None:
    """The README's per-driver hw_counters traffic table is HW_TRAFFIC, row for row."""
    text = README.read_text()
    table = text[text.index("<!-- hw-traffic -->"):text.index("<!-- /hw-traffic -->")]
    rows = [line.strip() for line in table.splitlines()
            if line.strip().startswith("| ")][1:]  # minus the header row
    documented_rows = [tuple(tuple(re.findall(r"`([^`]+)`", cell))
                             for cell in row.strip("|").split("|")[1:]) for row in rows]
    code_rows = [(r.tx_bytes, r.rx_bytes, r.tx_packets, r.rx_packets) for r in HW_TRAFFIC]
    assert documented_rows == code_rows


def test_every_rdma_reason_is_in_the_readme() -> None:
    text = README.read_text()
    section = text[text.index("## RDMA: InfiniBand"):text.index("## Inference engines")]
    for reason in (*ERROR_REASONS, *READ_ERROR_REASONS):
        assert f'"{reason}"' in section or f"`{reason}`" in section, reason


def test_every_helper_program_outcome_has_a_listed_reason() -> None:
    made = {_command_error(source, CommandResult(("x",), outcome, 1), 1.0).reason
            for source in ("eadm", "rdma_tool") for outcome in Outcome}
    assert made - set(ERROR_REASONS) == {"rdma_tool_failed"}  # a failing rdma tool is no data
