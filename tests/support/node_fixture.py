"""One simulated node for the whole session: `kvscope demo --scenario healthy` started once.

Tests that only need *a* running agent (an address to scrape, a port that is taken, a body to
read) share this one instead of each starting its own process, which costs a few seconds of
start-up per test on a small machine. Tests that change the agent's flags, scenario or lifetime
(SIGTERM, TLS, faults) still start their own `Agent`.

Registered in tests/conftest.py through `pytest_plugins`, which also brings the
`--update-golden` option of the golden tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent import Agent

SCENARIO = "healthy"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/ from the current output (same as "
        "KVSCOPE_UPDATE_GOLDEN=1); review the diff like code",
    )


@dataclass(frozen=True)
class SimulatedNode:
    agent: Agent
    scenario: str
    exposition: bytes  # /metrics once every collector had its first snapshot

    @property
    def url(self) -> str:
        return self.agent.base

    @property
    def port(self) -> int:
        return self.agent.port

    def metrics(self) -> bytes:
        """A fresh scrape (the shared node keeps polling; values move between scrapes)."""
        status, body, _ = self.agent.get("/metrics")
        assert status == 200, body[:200]
        return body


@pytest.fixture(scope="session")
def simulated_node() -> Iterator[SimulatedNode]:
    """The session's healthy simulated node and agent, ready (every collector polled once)."""
    with Agent("demo", "--scenario", SCENARIO) as agent:
        agent.wait_ready(timeout=60)
        status, body, _ = agent.get("/metrics")
        assert status == 200, body[:200]
        yield SimulatedNode(agent, SCENARIO, body)
