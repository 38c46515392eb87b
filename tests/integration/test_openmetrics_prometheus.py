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
from kvscope.dcgm_compat import FIELDS

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
# DCGM counters the healthy simulated node serves (NVLink included: the demo runs every
# collector). ECC counters too: the simulated H100s answer them.
SERVED_COUNTERS = {f.naming("4.8").name for f in FIELDS
                   if f.naming("4.8").kind == "counter" and f.key != "nvlink_bandwidth"}


def _get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _scrape_with_prometheus(agent: Agent) -> tuple[dict[str, str], set[str]]:
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
                if set(types) >= SERVED_COUNTERS and names >= SERVED_COUNTERS:
                    break
                time.sleep(0.5)
            return types, names
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed")
@pytest.mark.parametrize("flags", [(), ("--web.enable-openmetrics",)],
                         ids=["text-default", "openmetrics-flag"])
def test_prometheus_types_every_dcgm_counter_counter(flags: tuple[str, ...]) -> None:
    with Agent("demo", *flags) as agent:
        agent.wait_ready()
        types, names = _scrape_with_prometheus(agent)
    missing = SERVED_COUNTERS - set(types)
    assert not missing, f"Prometheus never saw {sorted(missing)}"
    assert {name: types[name] for name in SERVED_COUNTERS} == dict.fromkeys(
        SERVED_COUNTERS, "counter")
    assert names >= SERVED_COUNTERS  # stored under dcgm-exporter's names, no `_total` added
    assert not {n for n in names if n.endswith("_total") and n.removesuffix("_total")
                in SERVED_COUNTERS}
    # 4.8 (<= 4.8.2) typed the NVLink bandwidth counter; the healthy node has NVLink.
    assert types["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"] == "counter"
