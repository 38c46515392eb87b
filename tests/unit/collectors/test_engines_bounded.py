"""Per-target state stays bounded when a target's label values change every scrape."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from engines_helpers import find, samples_of
from kvscope.collectors.base import Tier
from kvscope.collectors.engines import EnginesCollector
from kvscope.collectors.engines.accumulate import CACHE_SLACK
from kvscope.config import load
from kvscope.context import NodeContext
from kvscope.render.exposition import render_text
from kvscope.runtime import BlockingPool

LINES = 400  # per scrape, each with label values never seen before


class Churning:
    """An SGLang-like target whose every series carries a fresh label value on each scrape (a
    request id leaking into labels), with new PD queue stages every time too."""

    def __init__(self) -> None:
        self.scrape = 0

    def body(self) -> str:
        self.scrape += 1
        n = self.scrape
        rows = []
        for i in range(LINES):
            req = f"r{n}-{i}"
            rows.append(f'sglang:num_running_reqs{{model_name="m",tp_rank="0",req="{req}"}} 1')
            rows.append(f'sglang:prompt_tokens_total{{model_name="m",tp_rank="0",req="{req}"}} '
                        f"{n * 10}")
            rows.append(f'vllm:num_requests_kv_fetch_by_stage{{stage="s{n}-{i}"}} 1')
        return "\n".join(rows) + "\n"


@pytest.fixture
async def churning() -> AsyncIterator[tuple[Churning, str]]:
    target = Churning()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=target.body())

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield target, f"http://127.0.0.1:{port}/metrics"
    await runner.cleanup()


async def test_a_target_with_churning_labels_keeps_the_agent_bounded(
        churning: tuple[Churning, str]) -> None:
    _, url = churning
    limit = 300
    collector = EnginesCollector(NodeContext(config=load(None, {
        "collectors.engines.targets": [{"url": url}], "collectors.engines.discovery": False,
        "collectors.engines.max_series_per_target": limit})))
    pool = BlockingPool("b")  # one worker thread, as the runtime gives the tier
    tracemalloc.start()
    sizes, memory = [], []
    try:
        for _ in range(40):
            families = (await collector.poll(Tier.FAST, pool)).families

            state = collector._states[url]
            sizes.append((len(state.cache), len(state.shards), len(state.accumulator)))
            memory.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
        await collector.close()
    lines = 3 * LINES + 1
    for cache, shards, accumulated in sizes:
        assert cache <= 2 * lines + CACHE_SLACK + lines
        assert shards <= 2 * lines + CACHE_SLACK + lines
        assert accumulated <= limit
    samples = samples_of(render_text(families).decode())
    exported = [n for n, _, _ in samples if n.startswith("kvscope_engine_")
                and n.removeprefix("kvscope_engine_").startswith(("pd_queue", "requests_",
                                                                   "prompt"))]
    assert 0 < len(exported) <= limit
    assert find(samples, "kvscope_engine_series_dropped_total")[0] > 0
    assert find(samples, "kvscope_engine_up", reason="") == [1.0]
    # The caches fill and start again, so memory saws up and down; it must not trend upwards
    # (unbounded, 20 more scrapes of 1,200 never-seen series each grew it by ~25 MiB).
    early, late = max(memory[10:20]), max(memory[30:40])
    assert late < early + (1 << 20), f"{early / 2**20:.1f} -> {late / 2**20:.1f} MiB"


async def test_a_vanished_target_takes_its_state_with_it(
        churning: tuple[Churning, str]) -> None:
    from kvscope.collectors.engines import Target

    _, url = churning
    collector = EnginesCollector(NodeContext(config=load(None, {
        "collectors.engines.discovery": False})))
    pool = BlockingPool("v")
    collector._discovery.targets = [Target(url, pod="p", namespace="ns", source="discovered")]
    await collector.poll(Tier.FAST, pool)
    assert len(collector._states[url].cache) > 0
    collector._discovery.targets = []  # the pod went away
    await collector.poll(Tier.FAST, pool)
    await collector.close()
    assert collector._states == {}
