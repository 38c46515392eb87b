"""HTTP scrapes of engine /metrics endpoints: bounded in time and size, never raising.

One aiohttp session with keep-alive serves every target, so a 5 s cadence does not open 16 new
connections each cycle. Each scrape has its own deadline; callers run them concurrently, so one
slow or dead engine costs its own timeout and nothing else. Bodies are read in chunks and
refused past `max_bytes` after gunzip (aiohttp decompresses as it streams), so a runaway or
hostile endpoint cannot balloon the agent's memory.

Redirects are never followed: a target is a pod IP and port that discovery vetted (or a URL an
operator wrote), and a redirect would let whoever answers there point the agent at any other
URL (a cloud metadata endpoint, say) and have the answer re-exported. A 3xx is the failure
`redirect`. Credentials in a URL (userinfo, `token=` in the query) are used for the request but
never written out: every message here carries the URL through `redact`.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

# Prometheus text first: every engine serves it; OpenMetrics is parsed too if that is what comes.
ACCEPT = ("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5,"
          "*/*;q=0.1")
CHUNK = 64 * 1024
REDACTED = "<redacted>"
# Query keys whose values are secrets (token=, api_key=, X-Amz-Signature=, password=, ...).
_SECRET_KEY = re.compile(r"token|key|secret|pass|auth|sig|credential|session", re.IGNORECASE)


@dataclass(frozen=True)
class Scraped:
    body: bytes
    content_type: str
    duration: float


@dataclass(frozen=True)
class ScrapeFailure:
    reason: str  # timeout, connect, reset, redirect, http_<status>, too_large, decode
    message: str  # names the URL redacted
    duration: float


def redact(url: str) -> str:
    """`url` fit for a log line or a label: userinfo and secret-looking query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _SECRET_KEY.search(k) else v) for k, v in pairs],
                          safe="<>")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def scrub(text: str, url: str) -> str:
    """`text` (an exception's message, say) with `url` and its secrets replaced by `redact`'s."""
    safe = redact(url)
    text = text.replace(url, safe)
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    secrets = [parts.netloc.rpartition("@")[0]] if "@" in parts.netloc else []
    secrets += [v for k, v in parse_qsl(parts.query) if _SECRET_KEY.search(k) and v]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def new_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, headers={
        "Accept": ACCEPT, "Accept-Encoding": "gzip", "User-Agent": "kvscope"})


async def scrape(session: aiohttp.ClientSession, url: str, *, time_limit: float,
                 max_bytes: int) -> Scraped | ScrapeFailure:
    """GET `url`; the body, or why not. Never raises (except cancellation)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(time_limit):
            return await _get(session, url, max_bytes, started)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        reason, message = _classify(exc, time_limit)
        return ScrapeFailure(reason, f"{redact(url)}: {scrub(message, url)}",
                             time.monotonic() - started)


async def _get(session: aiohttp.ClientSession, url: str, max_bytes: int,
               started: float) -> Scraped | ScrapeFailure:
    def failed(reason: str, message: str) -> ScrapeFailure:
        return ScrapeFailure(reason, f"{redact(url)}: {scrub(message, url)}",
                             time.monotonic() - started)

    async with session.get(url, allow_redirects=False) as resp:
        if 300 <= resp.status < 400:
            where = resp.headers.get("Location", "")
            return failed("redirect", f"HTTP {resp.status} to {redact(where) or '?'} "
                                      "(redirects are not followed)")
        if resp.status != 200:
            return failed(f"http_{resp.status}", f"HTTP {resp.status} {resp.reason}")
        declared = resp.content_length
        if declared is not None and declared > max_bytes:
            return failed("too_large", f"Content-Length {declared} > {max_bytes} bytes")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(CHUNK):
            body += chunk
            if len(body) > max_bytes:
                return failed("too_large", f"body over {max_bytes} bytes")
        return Scraped(bytes(body), resp.headers.get("Content-Type", ""),
                       time.monotonic() - started)


def _classify(exc: BaseException, time_limit: float) -> tuple[str, str]:
    """A short reason label and one line for the log, per kind of failure."""
    if isinstance(exc, TimeoutError):
        return "timeout", f"no complete response within {time_limit:g}s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect", f"cannot connect: {exc.os_error or exc}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        # Truncated bodies and bad gzip both land here; tell them apart for the operator.
        reason = "decode" if "encoding" in str(exc).lower() else "reset"
        return reason, f"bad response body: {exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError
                  | aiohttp.ClientOSError):
        return "reset", f"connection lost: {exc}"
    if isinstance(exc, ValueError):  # aiohttp.InvalidURL and friends: the URL, not the peer
        return "http", f"unusable URL: {type(exc).__name__}"
    return "http", f"{type(exc).__name__}: {exc}"
