"""Staleness is worked out once per change, not on every scrape, and still ends on time."""

from __future__ import annotations

import platform

import pytest

from conftest import FrozenClock, parse
from kvscope.collectors.base import Collector, PollResult, Pool, Schedule, Tier
from kvscope.render.families import gauge
from kvscope.runtime import Runtime, limit_malloc_arenas


class Every(Collector):
    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(self.interval, 1)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        return PollResult([gauge(f"{self.name}_value", "A value.").add({}, 1).metric])


async def test_scrapes_between_polls_do_not_recheck_every_tier(
        monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Runtime([Every("a", 5), Every("b", 5)], clock=FrozenClock(start=10_000))
    await runtime.poll_all_once()
    checks = []
    original = runtime._staleness_bound
    monkeypatch.setattr(runtime, "_staleness_bound",
                        lambda sched: checks.append(sched) or original(sched))
    for _ in range(50):
        runtime.exposition()
    assert len(checks) == 2  # one look at each tier, then the answer is kept
    await runtime.stop()


async def test_kept_answer_ends_at_the_earliest_deadline_and_on_a_new_poll() -> None:
    clock = FrozenClock(start=10_000)
    quick, slow = Every("quick", 5), Every("slow", 30)
    runtime = Runtime([quick, slow], clock=clock, staleness_factor=3, min_staleness=15)
    await runtime.poll_all_once()
    names = set(parse(runtime.exposition()))
    assert {"quick_value", "slow_value"} <= names
    clock.advance(15.1)  # quick is past 15 s; slow has until 90 s
    names = set(parse(runtime.exposition()))
    assert "quick_value" not in names and "slow_value" in names
    await runtime.poll_once(quick, Tier.FAST)  # a fresh snapshot is served at once
    assert "quick_value" in parse(runtime.exposition())
    clock.advance(-100)  # the wall clock stepped back: the answer is worked out again
    assert {"quick_value", "slow_value"} <= set(parse(runtime.exposition()))
    clock.advance(100 + 90.1)
    names = set(parse(runtime.exposition()))
    assert "quick_value" not in names and "slow_value" not in names
    await runtime.stop()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt arenas are glibc's")
def test_malloc_arenas_are_limited_on_glibc() -> None:
    assert limit_malloc_arenas() is True
