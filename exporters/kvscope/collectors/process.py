"""The agent's own cost: RSS, CPU seconds, open fds (collector name `self`).

Read on the fast tier like any other source, so a scrape never reads /proc.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import ProcessCollector as ClientProcessCollector
from prometheus_client.core import Metric

from kvscope.collectors.base import Collector, PollResult, Pool, Schedule, Tier


class ProcessCollector(Collector):
    name = "self"

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._reader = ClientProcessCollector(registry=None)

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(self._interval, 2.0)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        return PollResult(await self._families_of(tier, pool))

    async def _families_of(self, tier: Tier, pool: Pool) -> Sequence[Metric]:
        return await pool.run(lambda: list(self._reader.collect()))
