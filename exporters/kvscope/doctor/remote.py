"""Read a running agent's /metrics into a doctor snapshot (`kvscope doctor --url`).

The fetch is the engine collector's (bounded in time and size, never raising) and the parse is
the engine parser (lenient, one pass), so the doctor needs no privilege on the node: any
machine that can reach the agent's port can run it.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

from kvscope.config import Config
from kvscope.doctor import Snapshot, with_previous
from kvscope.parsers.exposition import ParseError, parse
from kvscope.sources.http_scrape import ScrapeFailure, new_session, scrape

MAX_BYTES = 64 << 20  # a node with per-link NVLink series is a few MB; refuse a runaway body


class AgentUnreadable(Exception):
    """The URL gave no exposition; the message is the one line to show."""


def metrics_url(url: str) -> str:
    """The URL to fetch: http(s) only; a bare host:port gets the agent's /metrics path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AgentUnreadable(f"--url {url!r}: expected http://<host>:<port>[/metrics]")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urlunsplit(parts)


async def read_agent(url: str, config: Config, time_limit: float,
                     window: float = 0.0) -> Snapshot:
    """The agent's snapshot; with `window`, read twice that many seconds apart for rates."""
    snap = await _read_once(url, config, time_limit)
    if window <= 0:
        return snap
    await asyncio.sleep(window)
    return with_previous(await _read_once(url, config, time_limit), snap, window)


async def _read_once(url: str, config: Config, time_limit: float) -> Snapshot:
    async with new_session() as session:
        got = await scrape(session, url, time_limit=time_limit, max_bytes=MAX_BYTES)
    if isinstance(got, ScrapeFailure):
        raise AgentUnreadable(f"cannot read the agent ({got.reason}): {got.message}")
    expo = parse(got.body.decode("utf-8", "replace"))
    if isinstance(expo, ParseError):
        raise AgentUnreadable(f"{url} did not answer with Prometheus metrics: {expo.message}")
    if not any(name.startswith(("kvscope_", "DCGM_")) for name in expo.names):
        raise AgentUnreadable(f"{url} answered with metrics, but none of a kvscope agent "
                              f"({len(expo.names)} other names)")
    rows = ((s.name, s.labels, s.value) for batch in expo.samples.values() for s in batch)
    return Snapshot.from_samples(config, url, rows)
