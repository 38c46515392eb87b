"""Runtime: collector isolation, timeouts, staleness and render-once caching."""

from __future__ import annotations

import asyncio
import threading

from conftest import FrozenClock, collector_up, parse, sim_context
from kvscope.app import build_runtime
from kvscope.collectors.base import Collector, CollectorError, PollResult, Pool, Schedule, Tier
from kvscope.render.families import gauge
from kvscope.runtime import Runtime


class Steady(Collector):
    name = "steady"

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(5, 1)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        value = gauge("steady_value", "A healthy collector's value.").add({}, 42)
        return PollResult([value.metric])


class Raising(Collector):
    name = "raising"

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(5, 1)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        raise RuntimeError("driver exploded")


class Hanging(Collector):
    """A blocking read that never returns until released, like a wedged sysfs file."""

    name = "hanging"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(5, 0.2)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        self.calls += 1
        await pool.run(self.release.wait)
        return PollResult()


class Refusing(Collector):
    name = "refusing"

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(5, 1)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        raise CollectorError("connect", "endpoint refused the connection")


def health(body: bytes) -> dict[str, float]:
    return collector_up(parse(body)["kvscope_collector_up"])


def errors(body: bytes) -> dict[tuple[str, str], float]:
    return {(lb["collector"], lb["reason"]): v
            for lb, v in parse(body).get("kvscope_collector_errors_total", [])}


async def test_raising_collector_leaves_others_intact() -> None:
    runtime = Runtime([Steady(), Raising(), Refusing()])
    await runtime.poll_all_once()
    body = runtime.exposition()
    assert parse(body)["steady_value"] == [({}, 42.0)]
    assert health(body) == {"steady": 1, "raising": 0, "refusing": 0}
    assert errors(body) == {("raising", "RuntimeError"): 1, ("refusing", "connect"): 1}
    await runtime.stop()


async def test_hung_collector_times_out_and_is_not_stacked() -> None:
    hanging = Hanging()
    runtime = Runtime([Steady(), hanging])
    loop = asyncio.get_running_loop()
    started = loop.time()
    await runtime.poll_all_once()
    assert loop.time() - started < 1.0  # one timeout (0.2 s), the steady collector unaffected
    await runtime.poll_once(hanging, Tier.FAST)  # the wedged read still holds its thread
    body = runtime.exposition()
    assert hanging.calls == 1  # the second poll did not queue behind the first
    assert errors(body) == {("hanging", "timeout"): 1, ("hanging", "busy"): 1}
    assert health(body) == {"steady": 1, "hanging": 0}
    assert parse(body)["steady_value"] == [({}, 42.0)]
    hanging.release.set()
    await asyncio.sleep(0.05)
    await runtime.poll_once(hanging, Tier.FAST)
    assert health(runtime.exposition())["hanging"] == 1  # recovers once the read returns
    await runtime.stop()


async def test_gpu_collector_hang_does_not_break_scrape() -> None:
    ctx = sim_context("healthy", slow_calls={"nvmlDeviceGetUtilizationRates": 1.0},
                      overrides={"collectors.gpu.timeout": 0.3})
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    metrics = parse(runtime.exposition())
    up = collector_up(metrics["kvscope_collector_up"])
    assert up == {"gpu": 0, "self": 1}
    # The hung call holds the driver (every NVML caller waits), yet the fast tier answers at
    # its deadline: 0 for every GPU it knows, so an alert on kvscope_gpu_up fires.
    assert [v for _, v in metrics["kvscope_gpu_up"]] == [0.0] * 8
    assert "process_resident_memory_bytes" in metrics
    await runtime.stop()


async def test_stale_snapshot_is_dropped_not_served() -> None:
    clock = FrozenClock(start=10_000)
    runtime = Runtime([Steady()], clock=clock, staleness_factor=3, min_staleness=15)
    await runtime.poll_all_once()
    assert "steady_value" in parse(runtime.exposition())
    clock.advance(14.9)
    assert "steady_value" in parse(runtime.exposition())
    clock.advance(0.2)  # past max(3 x 5 s, 15 s) with no new poll
    body = runtime.exposition()
    assert "steady_value" not in parse(body)
    assert health(body) == {"steady": 0}
    assert runtime.collector_health()["steady"]["errors"] == ["fast: stale"]
    await runtime.stop()


async def test_exposition_rendered_once_per_change() -> None:
    runtime = Runtime([Steady()])
    await runtime.poll_all_once()
    bodies = [runtime.exposition() for _ in range(50)]
    assert runtime.renders == 1 and len(set(bodies)) == 1
    runtime.exposition(openmetrics=True)
    assert runtime.renders == 2  # each format once
    await runtime.poll_all_once()
    runtime.exposition()
    assert runtime.renders == 3
    await runtime.stop()


async def test_openmetrics_types_dcgm_counters_counter() -> None:
    ctx = sim_context("healthy")
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    om = runtime.exposition(openmetrics=True).decode()
    text = runtime.exposition().decode()
    await runtime.stop()
    assert om.rstrip().endswith("# EOF")
    for body in (om, text):
        assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in body
        assert "\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in body
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total" not in om
    assert "# TYPE kvscope_collector_errors counter" in om or "kvscope_collector_errors" not in om


class Counting(Collector):
    name = "counting"

    def __init__(self) -> None:
        self.polls = 0

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(0.1, 1)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        self.polls += 1
        return PollResult([gauge("polls", "How many polls so far.").add({}, self.polls).metric])


async def test_running_agent_renders_after_polls_not_during_scrapes() -> None:
    collector = Counting()
    runtime = Runtime([collector])
    runtime.render_delay = 0.01
    await runtime.start()
    try:
        await asyncio.sleep(0.5)
        renders = runtime.renders
        bodies = [runtime.exposition() for _ in range(100)]  # one loop tick: no poll between
        assert runtime.renders == renders  # served the finished background render
        value = parse(bodies[-1])["polls"][0][1]
        assert 1 < value <= collector.polls  # fresh within a poll
        await asyncio.sleep(0.3)
        assert parse(runtime.exposition())["polls"][0][1] > value  # and it keeps moving
    finally:
        await runtime.stop()


class Spinning(Collector):
    """Polls back to back, so a cancellation often lands while a finished poll's result is
    being handed back: the window in which Python 3.11's asyncio.wait_for swallows it."""

    name = "spinning"

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.EVENT: Schedule(0.0, 5)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        await asyncio.sleep(0)
        return PollResult()


async def test_stop_ends_loops_even_when_a_cancellation_is_swallowed() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(30):
        runtime = Runtime([Spinning()])
        await runtime.start()
        for _ in range(7):
            await asyncio.sleep(0)
        started = loop.time()
        await asyncio.wait_for(runtime.stop(), 10)
        assert loop.time() - started < 5


class FailingEvents(Collector):
    """An event tier whose poll fails at once, as it does while its previous NVML wait still
    hangs ("busy") or the library is gone: nothing in the poll blocks any more."""

    name = "failing-events"

    def __init__(self) -> None:
        self.polls = 0

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.EVENT: Schedule(0.0, 5)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        self.polls += 1
        return PollResult((), (CollectorError("busy", "previous read still running"),))


async def test_a_failing_event_tier_backs_off_instead_of_spinning() -> None:
    failing, healthy = FailingEvents(), Spinning()
    runtime = Runtime([failing, healthy])
    await runtime.start()
    await asyncio.sleep(1.2)
    await runtime.stop()
    # Pauses of 0.5 s, then 1 s: at most three polls in 1.2 s (thousands without the pause).
    assert 1 <= failing.polls <= 3, failing.polls
    body = runtime.exposition()
    assert health(body)["failing-events"] == 0
    assert errors(body)[("failing-events", "busy")] == failing.polls
