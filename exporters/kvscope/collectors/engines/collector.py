"""The engines collector: scrape every target concurrently, normalize, export.

Every target is scraped on the fast tier with its own timeout, smaller than the tier's, so a
slow or dead engine shows up as `kvscope_engine_up 0` with a reason and never delays the
others. Parsing and normalizing run in one hop on the tier's worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback

import aiohttp

from kvscope.collectors.base import Collector, PollResult, Pool, Schedule, Tier
from kvscope.collectors.engines.accumulate import Accumulator, TargetState
from kvscope.collectors.engines.discovery import PodDiscovery, Target, static_targets
from kvscope.collectors.engines.families import TargetResult, target_families
from kvscope.config import EnginesConfig
from kvscope.context import NodeContext
from kvscope.parsers.engines import KEEP
from kvscope.parsers.engines import normalize as normalize_payload
from kvscope.parsers.exposition import ParseError, parse
from kvscope.sources.http_scrape import Scraped, ScrapeFailure, new_session, scrape, scrub

log = logging.getLogger("kvscope.collectors.engines")

Fetched = tuple[Target, float, Scraped | ScrapeFailure | Exception]


class EnginesCollector(Collector):
    name = "engines"

    def __init__(self, ctx: NodeContext) -> None:
        # The context is frozen and its Config final (the simulator's fakes are started, and
        # their URLs written in, before any collector is built): read once, here.
        self._config = ctx.config
        self._cfg: EnginesConfig = ctx.config.collectors.engines
        self._states: dict[str, TargetState] = {}
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._discovery = PodDiscovery()

    def schedules(self) -> dict[Tier, Schedule]:
        return {Tier.FAST: Schedule(self._cfg.cadence.fast, self._cfg.timeout)}

    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        targets = await self._targets()
        session = self._client_session()
        fetched = await asyncio.gather(*(self._fetch(session, t) for t in targets))
        # Parsing and normalizing 16 x 100 KB is tens of ms of CPU: done in one hop to the
        # tier's worker thread, so the event loop keeps answering scrapes meanwhile.
        results = await pool.run(lambda: [self._process(*item) for item in fetched])
        return PollResult(target_families(targets, results, self._states, self._discovery,
                                          self._cfg.max_series_per_target))

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        await self._discovery.close()

    def _client_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = new_session()
            self._session_loop = loop
        return self._session

    async def _targets(self) -> list[Target]:
        static = static_targets(self._cfg)
        if self._cfg.discovery:
            await self._discovery.refresh(self._config)
        urls = {t.url for t in static}
        targets = static + [t for t in self._discovery.targets if t.url not in urls]
        live = {t.url for t in targets}
        for url in [u for u in self._states if u not in live]:
            del self._states[url]  # the pod went away: forget its counters and caches
        return targets

    async def _fetch(self, session: aiohttp.ClientSession, target: Target) -> Fetched:
        started = time.monotonic()
        try:
            got = await scrape(session, target.url, time_limit=self._cfg.target_timeout,
                               max_bytes=self._cfg.max_response_bytes)
        except Exception as exc:  # one target's surprise must not cost the others their data
            return target, started, exc
        return target, started, got

    def _state(self, target: Target) -> TargetState:
        state = self._states.get(target.url)
        if state is None:
            limit = self._cfg.max_series_per_target
            state = self._states[target.url] = TargetState(Accumulator(limit))
        return state

    def _process(self, target: Target, started: float,
                 got: Scraped | ScrapeFailure | Exception) -> TargetResult:
        """Parse and normalize one fetched body (on the worker thread)."""
        state = self._state(target)
        try:
            if isinstance(got, Exception):
                raise got
            if isinstance(got, ScrapeFailure):
                return self._down(target, state, got.reason, got.message, got.duration)
            return self._read(target, state, got)
        except Exception as exc:  # one target's surprise must not cost the others their data
            # The traceback is scrubbed too: an exception's text may carry the URL.
            trace = scrub("".join(traceback.format_exception(exc)), target.url)
            log.error("engines: scraping %s failed\n%s", target.safe_url, trace.rstrip())
            return self._down(target, state, "internal",
                              f"{target.safe_url}: {scrub(str(exc), target.url)}",
                              time.monotonic() - started)

    def _read(self, target: Target, state: TargetState, got: Scraped) -> TargetResult:
        text = got.body.decode("utf-8", "replace")
        expo = parse(text, KEEP, state.cache)
        if isinstance(expo, ParseError):
            return self._down(target, state, expo.reason, f"{target.safe_url}: {expo.message}",
                              got.duration)
        state.invalid_lines += expo.invalid_lines
        result = normalize_payload(expo, target.engine, state.shards)
        state.parsed(text.count("\n") + 1)
        if not result.engines:
            return self._down(target, state, "unknown_engine",
                              f"{target.safe_url}: no metric of a known engine "
                              f"({len(expo.names)} names)", got.duration)
        if state.up is False:
            log.info("engines: %s is up again", target.safe_url)
        state.up = True
        state.engine = target.engine or result.engines[0]
        state.role = target.role or result.role or state.role
        return TargetResult(target, got.duration, None, result)

    def _down(self, target: Target, state: TargetState, reason: str, message: str,
              duration: float) -> TargetResult:
        if state.up is not False:
            log.warning("engines: target down (%s): %s", reason, message)
        state.up = False
        state.errors[reason] += 1
        return TargetResult(target, duration, reason)
