"""Poll timeouts for tests that count what a simulated node exports (goldens, README figures).

The defaults (4 s a poll, 2.5 s an engine scrape) are right for an agent, but on the 2-core test
machine shared by several test processes a poll of the simulated node can pass them, and a
timed-out tier exports nothing: the count is then of the machine's load, not of the exporter.
These tests are not about timeouts (tests of timeouts keep the defaults), so they allow minutes.
"""

from __future__ import annotations

from typing import Any

POLL = 120.0
READ = 60.0  # one source inside a poll; must stay below POLL (config.py checks)
COLLECTORS = ("gpu", "nvlink", "topology", "rdma", "engines")

GENEROUS: dict[str, float] = {
    **{f"collectors.{c}.timeout": POLL for c in COLLECTORS},
    "collectors.engines.target_timeout": READ,
    "collectors.engines.discovery_timeout": READ / 2,
    "collectors.rdma.sysfs_timeout": READ,
    "collectors.rdma.eadm_timeout": READ,
    "collectors.rdma.rdma_tool_timeout": READ,
    "kubernetes.timeout": READ,
}


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1} -> {"a": {"b": 1}}, for a YAML config file."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
