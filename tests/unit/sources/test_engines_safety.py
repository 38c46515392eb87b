"""What an engine target may make the agent do: no redirects followed, no credentials written
out, bodies bounded while they are read."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from engines_helpers import find, fixture, samples_of
from kvscope.collectors.base import Tier
from kvscope.collectors.engines import EnginesCollector
from kvscope.config import load
from kvscope.context import NodeContext
from kvscope.render.exposition import render_text
from kvscope.runtime import BlockingPool
from kvscope.sources.http_scrape import ScrapeFailure, new_session, redact, scrape, scrub


class Upstream:
    """A target that redirects, with a 'metadata' endpoint behind it that counts its visitors."""

    def __init__(self) -> None:
        self.metadata_hits = 0
        self.fail_next = 0
        self.base = ""

    def app(self) -> web.Application:
        async def metadata(request: web.Request) -> web.Response:
            self.metadata_hits += 1
            return web.Response(text=fixture("vllm_v1_scrape"))

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"{self.base}/latest/meta-data?token=leaked-token")

        async def flaky(request: web.Request) -> web.Response:
            if self.fail_next:
                self.fail_next -= 1
                return web.Response(status=503)
            return web.Response(text=fixture("vllm_v1_scrape"))

        app = web.Application()
        app.router.add_get("/latest/meta-data", metadata)
        app.router.add_get("/metrics", redirect)
        app.router.add_get("/flaky", flaky)
        return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    runner = web.AppRunner(up.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield up
    await runner.cleanup()


def _collector(*urls: str) -> EnginesCollector:
    return EnginesCollector(NodeContext(config=load(None, {
        "collectors.engines.targets": [{"url": u} for u in urls],
        "collectors.engines.discovery": False})))


async def _poll(collector: EnginesCollector) -> list[tuple[str, dict[str, str], float]]:
    families = (await collector.poll(Tier.FAST, BlockingPool("s"))).families
    return samples_of(render_text(families).decode())


async def test_a_redirect_is_an_error_and_is_never_followed(upstream: Upstream) -> None:
    async with new_session() as session:
        got = await scrape(session, f"{upstream.base}/metrics", time_limit=2, max_bytes=1 << 20)
    assert isinstance(got, ScrapeFailure) and got.reason == "redirect", got
    assert "leaked-token" not in got.message  # the Location is logged redacted
    collector = _collector(f"{upstream.base}/metrics")
    for _ in range(3):
        samples = await _poll(collector)
    await collector.close()
    assert upstream.metadata_hits == 0
    assert find(samples, "kvscope_engine_up", reason="redirect") == [0.0]
    assert find(samples, "kvscope_engine_scrape_errors_total", reason="redirect") == [3.0]
    assert not find(samples, "kvscope_engine_requests_running")  # nothing re-exported


def test_redact_hides_userinfo_and_secret_query_values() -> None:
    userinfo = "admin:hunter2"
    url = f"http://{userinfo}@127.0.0.1:8000/metrics?token=abc123&format=text&api_key=k9"
    safe = redact(url)
    assert safe == ("http://<redacted>@127.0.0.1:8000/metrics?token=<redacted>&format=text"
                    "&api_key=<redacted>")
    assert redact("http://127.0.0.1:8000/metrics") == "http://127.0.0.1:8000/metrics"
    message = scrub(f"Cannot connect to {url} (user admin:hunter2, key k9)", url)
    assert "hunter2" not in message and "abc123" not in message and "k9" not in message


async def test_credentials_in_a_target_url_never_reach_logs_or_labels(
        upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = upstream.base.rsplit(":", 1)[1]
    userinfo = "scraper:pa55word"
    secret_url = f"http://{userinfo}@127.0.0.1:{port}/flaky?token=t0ken-value"
    dead_url = f"http://{userinfo}@127.0.0.1:9/metrics?access_token=t0ken-value"
    collector = _collector(secret_url, dead_url)
    upstream.fail_next = 1
    texts = []
    for _ in range(2):  # down (WARNING), then up again (INFO)
        families = (await collector.poll(Tier.FAST, BlockingPool("c"))).families
        texts.append(render_text(families).decode())
    await collector.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "up again" in logged and "http_503" in logged and "connect" in logged
    for text in (logged, *texts):
        assert "pa55word" not in text and "t0ken-value" not in text
        assert "scraper" not in text
    assert find(samples_of(texts[1]), "kvscope_engine_up", reason="") == [1.0]


async def test_an_internal_failure_logs_its_traceback_without_the_credentials(
        upstream: Upstream, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kvscope.collectors.engines import collector as engines_collector

    userinfo = "scraper:pa55word"
    url = f"http://{userinfo}@127.0.0.1:{upstream.base.rsplit(':', 1)[1]}/flaky"

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"surprise while reading {url}")

    monkeypatch.setattr(engines_collector, "normalize_payload", broken)
    collector = _collector(url)
    samples = await _poll(collector)
    await collector.close()
    assert find(samples, "kvscope_engine_up", reason="internal") == [0.0]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "surprise while reading" in logged and "Traceback" in logged
    assert "pa55word" not in logged
