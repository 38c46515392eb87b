"""A real Prometheus scrapes kvscope and records every DCGM counter as `counter`.

Prometheus 2.x asks for OpenMetrics first. kvscope answers with the text format unless
--web.enable-openmetrics is given (as dcgm-exporter always does); with the flag it answers
OpenMetrics, and dcgm-exporter's counters (no `_total` suffix) must still be stored under their
own names and typed `counter` (issue 11: they used to come out `unknown`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from agent import Agent, free_port
from kvscope.collectors.dcgm_compat import FIELDS, Compat

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")


# DCGM counters the healthy simulated node serves (NVLink included: the demo runs every
# collector). ECC counters too: the simulated H100s answer them.
def served_counters(compat: Compat) -> set[str]:
    return {f.naming(compat).name for f in FIELDS
            if f.naming(compat).kind == "counter" and f.key != "nvlink_bandwidth"}


def _get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _scrape_with_prometheus(agent: Agent, counters: set[str]) -> tuple[dict[str, str], set[str]]:
    """Run Prometheus against the agent until it holds metadata for every DCGM counter;
    return {family: type} and the stored metric names."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kvscope\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{agent.port}']\n")
        proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}/api/v1"
            deadline = time.monotonic() + 40
            types: dict[str, str] = {}
            names: set[str] = set()
            query = urllib.parse.quote('count by (__name__) ({__name__=~"DCGM_.+"})')
            while time.monotonic() < deadline:
                try:
                    meta = _get(f"{base}/metadata")["data"]
                    result = _get(f"{base}/query?query={query}")["data"]["result"]
                except OSError:
                    time.sleep(0.5)
                    continue
                types = {name: rows[0]["type"] for name, rows in meta.items()}
                names = {r["metric"]["__name__"] for r in result}
                if set(types) >= counters and names >= counters:
                    break
                time.sleep(0.5)
            return types, names
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed")
@pytest.mark.parametrize(("flags", "compat", "nvlink_type"), [
    ((), "4.8", "counter"),
    (("--web.enable-openmetrics",), "4.8", "counter"),
    (("--web.enable-openmetrics", "--dcgm.compat", "4.10"), "4.10", "gauge"),
], ids=["text-default", "openmetrics-flag", "openmetrics-4.10"])
def test_prometheus_types_every_dcgm_counter_counter(flags: tuple[str, ...], compat: Compat,
                                                      nvlink_type: str) -> None:
    counters = served_counters(compat)
    with Agent("demo", *flags) as agent:
        agent.wait_ready()
        types, names = _scrape_with_prometheus(agent, counters)
    missing = counters - set(types)
    assert not missing, f"Prometheus never saw {sorted(missing)}"
    assert {name: types[name] for name in counters} == dict.fromkeys(counters, "counter")
    assert counters <= names  # stored under dcgm-exporter's names, no `_total` added
    assert not {n for n in names if n.endswith("_total") and n.removesuffix("_total")
                in counters}
    # <= 4.8.2 typed the NVLink bandwidth counter, 4.8.3 and later gauge.
    nvlink = next(f for f in FIELDS if f.key == "nvlink_bandwidth").naming(compat).name
    assert types[nvlink] == nvlink_type
