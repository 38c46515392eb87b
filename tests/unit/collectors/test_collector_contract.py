"""The collector contract (collectors/base.py) as the runtime applies it, and the registry."""

from __future__ import annotations

import logging

import pytest

from conftest import FrozenClock, parse
from kvscope.collectors.base import (
    Collector,
    CollectorError,
    NoData,
    PollResult,
    Pool,
    Schedule,
    Tier,
)
from kvscope.collectors.registry import CONFIGURABLE, REGISTRY, build
from kvscope.config import CollectorsConfig, ConfigError, load
from kvscope.context import NodeContext
from kvscope.render.families import gauge
from kvscope.runtime import Runtime


class Scripted(Collector):
    """Returns, or raises, the next item of a script on each poll of its one tier."""

    name = "scripted"

    def __init__(self, *script: PollResult | Exception) -> None:
        self.script = list(script)

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.SLOW: Schedule(30, 1)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def reading(value: float) -> PollResult:
    return PollResult([gauge("source_a_value", "What source a read.").add({}, value).metric])


def partial(value: float, *reasons: str) -> PollResult:
    return PollResult(reading(value).families,
                      [CollectorError(r, f"source {r} failed") for r in reasons])


def up(body: bytes) -> dict[tuple[str, str], float]:
    return {(lb["collector"], lb["tier"]): v for lb, v in parse(body)["kvscope_collector_up"]}


def errors(body: bytes) -> dict[str, float]:
    return {lb["reason"]: v for lb, v in parse(body).get("kvscope_collector_errors_total", [])}


async def test_partial_result_is_served_and_marks_the_tier_down() -> None:
    runtime = Runtime([Scripted(partial(7, "b_timeout", "c_failed"), reading(8))])
    await runtime.poll_all_once()
    body = runtime.exposition()
    assert parse(body)["source_a_value"] == [({}, 7.0)]
    assert up(body) == {("scripted", "slow"): 0}
    assert errors(body) == {"b_timeout": 1, "c_failed": 1}  # every failed source counted
    assert "kvscope_collector_last_success_timestamp_seconds" not in parse(body)
    health = runtime.collector_health()["scripted"]
    assert health["errors"] == ["slow: b_timeout", "slow: c_failed"]

    await runtime.poll_all_once()
    body = runtime.exposition()
    assert parse(body)["source_a_value"] == [({}, 8.0)]
    assert up(body) == {("scripted", "slow"): 1}
    assert errors(body) == {"b_timeout": 1, "c_failed": 1}


async def test_a_poll_that_reads_nothing_keeps_the_last_families_until_stale() -> None:
    clock = FrozenClock()
    runtime = Runtime([Scripted(partial(7, "b_timeout"), CollectorError("down", "all gone"))],
                      clock=clock)
    await runtime.poll_all_once()
    clock.advance(30)
    await runtime.poll_all_once()
    body = runtime.exposition()
    assert parse(body)["source_a_value"] == [({}, 7.0)]  # the partial poll's reading
    assert errors(body) == {"b_timeout": 1, "down": 1}
    clock.advance(91)  # past 3 x 30 s since the partial poll
    assert "source_a_value" not in parse(runtime.exposition())


async def test_errors_without_families_count_as_reading_nothing() -> None:
    runtime = Runtime([Scripted(reading(7), PollResult((), [CollectorError("down", "gone")]))])
    await runtime.poll_all_once()
    await runtime.poll_all_once()
    body = runtime.exposition()
    assert parse(body)["source_a_value"] == [({}, 7.0)]
    assert up(body) == {("scripted", "slow"): 0}
    assert errors(body) == {"down": 1}


async def test_no_data_is_absent_hardware_not_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    runtime = Runtime([Scripted(NoData("no /sys/class/infiniband"))])
    with caplog.at_level(logging.DEBUG, logger="kvscope.runtime"):
        await runtime.poll_all_once()
    body = runtime.exposition()
    assert up(body) == {("scripted", "slow"): 1}
    assert errors(body) == {}
    assert [r.levelno for r in caplog.records if "no data" in r.message] == [logging.DEBUG]


def test_registry_is_the_one_list_of_collectors() -> None:
    names = [r.name for r in REGISTRY]
    assert names == ["gpu", "nvlink", "topology", "rdma", "engines", "self"]
    assert CONFIGURABLE == ("gpu", "nvlink", "topology", "rdma", "engines")
    assert set(CollectorsConfig.model_fields) == set(CONFIGURABLE)
    ctx = NodeContext(load(None, {f"collectors.{n}.enabled": False for n in CONFIGURABLE}))
    assert [c.name for c in build(ctx)] == ["self"]  # built like the others, always on
    ctx = NodeContext(load(None, {"collectors.gpu.enabled": False,
                                  "collectors.topology.enabled": False}))
    assert [c.name for c in build(ctx)] == ["nvlink", "rdma", "engines", "self"]


def test_unknown_collector_section_names_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load(None, {"collectors.self.enabled": False})
    assert str(err.value) == ("config: unknown key 'collectors.self' "
                              "(allowed here: engines, gpu, nvlink, rdma, topology)")
