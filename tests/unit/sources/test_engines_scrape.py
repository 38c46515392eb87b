"""The HTTP source and the collector against real misbehaving servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from engines_helpers import find, fixture, fixture_app
from kvscope.collectors.base import Tier
from kvscope.collectors.engines import EnginesCollector
from kvscope.config import load
from kvscope.context import NodeContext
from kvscope.render.exposition import render_text
from kvscope.runtime import BlockingPool
from kvscope.sources.http_scrape import Scraped, ScrapeFailure, new_session, scrape


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = fixture_app()

    async def gz(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(fixture("lmdeploy").encode()),
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def bad_gzip(request: web.Request) -> web.Response:
        return web.Response(body=b"this is not gzip at all",
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def http500(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    app.router.add_get("/x/gzip", gz)
    app.router.add_get("/x/badgzip", bad_gzip)
    app.router.add_get("/x/500", http500)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _get(url: str, limit: float = 2.0, max_bytes: int = 1 << 20) \
        -> Scraped | ScrapeFailure:
    async with new_session() as session:
        return await scrape(session, url, time_limit=limit, max_bytes=max_bytes)


async def test_plain_and_gzip_bodies(server: str) -> None:
    plain = await _get(f"{server}/vllm_v1_scrape")
    assert isinstance(plain, Scraped) and plain.body.decode() == fixture("vllm_v1_scrape")
    zipped = await _get(f"{server}/x/gzip")
    assert isinstance(zipped, Scraped) and zipped.body.decode() == fixture("lmdeploy")


@pytest.mark.parametrize(("path", "reason"), [
    ("/slow?s=5", "timeout"), ("/reset", "reset"), ("/huge", "too_large"),
    ("/x/500", "http_500"), ("/missing", "http_404"), ("/x/badgzip", "decode")])
async def test_failures_have_reasons(server: str, path: str, reason: str) -> None:
    started = time.monotonic()
    got = await _get(server + path, limit=0.5)
    assert isinstance(got, ScrapeFailure), got
    assert got.reason == reason, got.message
    assert time.monotonic() - started < 2.0


async def test_refused_connection() -> None:
    got = await _get("http://127.0.0.1:9/metrics")
    assert isinstance(got, ScrapeFailure) and got.reason == "connect"


async def test_huge_body_is_cut_at_the_limit(server: str) -> None:
    got = await _get(f"{server}/huge", max_bytes=100_000)
    assert isinstance(got, ScrapeFailure) and got.reason == "too_large"
    assert "100000" in got.message


def _collector(urls: list[str], **engines: object) -> EnginesCollector:
    overrides: dict[str, object] = {
        "collectors.engines.targets": [{"url": u} for u in urls],
        "collectors.engines.discovery": False, "collectors.engines.timeout": 2.0,
        "collectors.engines.target_timeout": 0.5}
    overrides.update({f"collectors.engines.{k}": v for k, v in engines.items()})
    return EnginesCollector(NodeContext(config=load(None, overrides)))


async def test_one_slow_engine_does_not_delay_the_others(server: str) -> None:
    good = [f"{server}/{n}" for n in ("vllm_v1_scrape", "sglang_docs_old", "lmdeploy")]
    collector = _collector([*good, f"{server}/slow?s=30", f"{server}/reset",
                            f"{server}/garbage", "http://127.0.0.1:9/metrics"])
    started = time.monotonic()
    families = (await collector.poll(Tier.FAST, BlockingPool("t"))).families
    elapsed = time.monotonic() - started
    await collector.close()
    assert elapsed < 1.5  # the slow target cost its own 0.5 s timeout, concurrently
    from engines_helpers import samples_of

    samples = samples_of(render_text(families).decode())
    reasons = {lab["reason"] for n, lab, v in samples if n == "kvscope_engine_up" and v == 0}
    assert reasons == {"timeout", "reset", "parse", "connect"}
    assert sorted(lab["engine"] for n, lab, v in samples
                  if n == "kvscope_engine_up" and v == 1) == ["lmdeploy", "sglang", "vllm"]
    assert find(samples, "kvscope_engine_requests_running", engine="sglang") == [162.0]


async def test_counters_survive_an_engine_restart() -> None:
    value = {"n": 5000}

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text='vllm:generation_tokens_total{engine="0",model_name="m"} '
                                 f'{value["n"]}\n')

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    collector = _collector([f"http://127.0.0.1:{port}/metrics"])
    seen = []
    for n in (5000, 5600, 40, 100):  # the engine restarts between the 2nd and 3rd scrape
        value["n"] = n
        families = (await collector.poll(Tier.FAST, BlockingPool("t"))).families
        fam = next(f for f in families if f.name == "kvscope_engine_generation_tokens")
        seen.append(fam.samples[0].value)
    await collector.close()
    await runner.cleanup()
    assert seen == [5000, 5600, 5640, 5700]


async def test_unknown_exporter_is_down_with_reason(server: str) -> None:
    async def node_exporter(request: web.Request) -> web.Response:
        return web.Response(text="# TYPE node_load1 gauge\nnode_load1 0.5\n")

    app = web.Application()
    app.router.add_get("/metrics", node_exporter)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    collector = _collector([f"http://127.0.0.1:{port}/metrics"])
    families = (await collector.poll(Tier.FAST, BlockingPool("t"))).families
    await collector.close()
    await runner.cleanup()
    up = next(f for f in families if f.name == "kvscope_engine_up").samples[0]
    assert up.value == 0 and up.labels["reason"] == "unknown_engine"


async def test_session_reuses_connections(server: str) -> None:
    async with new_session() as session:
        for _ in range(3):
            got = await scrape(session, f"{server}/nixl", time_limit=1, max_bytes=1 << 20)
            assert isinstance(got, Scraped)
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert sum(len(v) for v in connector._conns.values()) == 1  # one kept-alive socket
    await asyncio.sleep(0)
