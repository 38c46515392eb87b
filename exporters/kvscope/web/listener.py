"""The agent's listening sockets, hardened: header and idle timeouts, a connection cap fitted to
the file-descriptor limit, polite shedding, and logs that stay one line per state change.

aiohttp alone waits up to 3,630 s for a request (keep-alive), has no deadline for a request's
headers and no connection limit: a few hundred idle or slow clients used to exhaust a 256-fd
limit, fail the real scrapes and make asyncio log a traceback for each refused accept. Here:

- a connection must deliver a complete request head within `header_timeout` of opening (or of
  its first byte after an idle keep-alive gap), else it is closed; a TLS handshake gets the same
  time;
- an idle keep-alive connection is closed after `keepalive_timeout`;
- at most `max_connections` connections are served at once; a connection over the cap gets
  `503` with `Retry-After: 1` and is closed at once, so a scraper already connected keeps being
  answered and the process stays clear of its fd limit;
- entering and leaving the shedding state, failed accepts (EMFILE) and the first malformed
  request are logged once each; the rest at debug level, without tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from kvscope.config import ConfigError

log = logging.getLogger(__name__)

SHED_RESPONSE_BODY = b"too many connections; retry shortly\n"
SHED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
                 b"Content-Type: text/plain; charset=utf-8\r\n"
                 b"Content-Length: " + str(len(SHED_RESPONSE_BODY)).encode() + b"\r\n\r\n"
                 + SHED_RESPONSE_BODY)


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(fds: int) -> int:
    """Connections served at once: a quarter of the fd limit, at most 128 (a node agent has one
    or two scrapers). A quarter, not a half: asyncio accepts up to `backlog` sockets in one go
    before any is shed, and NVML, sysfs and the engines' connections need descriptors too."""
    return max(8, min(128, fds // 4))


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    keepalive_timeout: float = 90.0
    max_connections: int = 128

    @classmethod
    def for_process(cls, **overrides: Any) -> Limits:
        return cls(**{"max_connections": connection_cap(fd_limit()), **overrides})


class _LogOnce:
    """One line when a condition starts and one when it ends; debug in between."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.active = False
        self.count = 0

    def start(self, message: str, *args: object) -> None:
        self.count += 1
        if self.active:
            return
        self.active = True
        log.warning(message, *args)

    def end(self, message: str) -> None:
        if not self.active:
            return
        self.active = False
        log.info(message, self.name, self.count)
        self.count = 0


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol with a deadline for each request head and bad
    requests answered without a traceback in the log."""

    def __init__(self, manager: GuardedServer, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._shed = False

    def _arm_head_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_in_progress or self.transport is None:
            return
        log.debug("%s: closed a connection that sent no complete request head within %.0fs",
                  self._guard.name, self._header_timeout)
        self._guard.head_timeouts += 1
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.shed_if_full(cast(asyncio.Transport, transport)):
            self._shed = True  # never started: no request task, nothing to clean up
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        # The first byte after an idle keep-alive gap starts the clock for the next head.
        if self._head_timer is None and not self._request_in_progress and data:
            self._arm_head_timer()
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._shed:
            return
        self._disarm_head_timer()
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> StreamResponse:
        if status >= 500:  # a bug in a handler: keep aiohttp's traceback
            return super().handle_error(request, status, exc, message)
        # A malformed request is the client's problem: one line once, then debug, no traceback.
        self._guard.note_bad_request(request.remote, message or str(exc))
        resp = web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}\n")
        resp.force_close()
        return resp


class GuardedServer(Server):
    """aiohttp's connection manager with a connection cap and once-per-state logging."""

    def __init__(self, *args: Any, name: str, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = name
        self.limits = limits
        self._handler_kwargs = kwargs
        self._counted: set[RequestHandler] = set()
        self.shed = 0  # connections refused over the cap, ever
        self.head_timeouts = 0
        self.bad_requests = 0
        self._shedding = _LogOnce(name)

    def __call__(self) -> GuardedHandler:
        kwargs = {k: v for k, v in self._handler_kwargs.items()
                  if k not in ("loop", "request_factory", "handler_cancellation")}
        return GuardedHandler(self, loop=asyncio.get_running_loop(),
                              header_timeout=self.limits.header_timeout, **kwargs)

    @property
    def open_connections(self) -> int:
        return len(self._counted)

    def shed_if_full(self, transport: asyncio.Transport) -> bool:
        """At the cap: answer 503 and close, before aiohttp starts reading the connection."""
        ACCEPT_ERRORS.end("%s: accepting connections again (%d accepts had failed)")
        if len(self._counted) < self.limits.max_connections:
            return False
        self.shed += 1
        self._shedding.start(
            "%s: %d connections open, the cap (fd limit %d): answering new connections with "
            "503 until some close", self.name, len(self._counted), fd_limit())
        transport.write(SHED_RESPONSE)
        transport.close()
        return True

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._counted.add(handler)
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if handler in self._counted:
            self._counted.discard(handler)
            self._shedding.end("%s: below the connection cap again (%d connections refused)")
        super().connection_lost(handler, exc)

    def note_bad_request(self, remote: str | None, reason: str) -> None:
        self.bad_requests += 1
        level = logging.INFO if self.bad_requests == 1 else logging.DEBUG
        log.log(level, "%s: bad HTTP request from %s: %s%s", self.name, remote or "?", reason,
                " (further bad requests are logged at debug level)" if level == logging.INFO
                else "")


ACCEPT_ERRORS = _LogOnce("web")


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio logs a traceback for every accept() refused for lack of descriptors (it retries
    every second, per socket): one line when it starts, one when accepts work again."""
    if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
        ACCEPT_ERRORS.start("web: cannot accept connections: %s (fd limit %d); retrying",
                            context.get("exception"), fd_limit())
        return
    loop.default_exception_handler(context)


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, *, name: str, limits: Limits,
                 **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self._name = name
        self._limits = limits

    async def _make_server(self) -> Server:
        plain = await super()._make_server()
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation,
                             name=self._name, limits=self._limits, **self._kwargs)


class GuardedSite(web.BaseSite):
    """TCPSite with a TLS handshake deadline and a backlog that fits the connection cap."""

    def __init__(self, runner: GuardedRunner, host: str, port: int, *,
                 ssl_context: ssl.SSLContext | None, limits: Limits) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=limits.max_connections)
        self._host = host
        self._port = port
        self._handshake_timeout = limits.header_timeout

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None)  # asyncio.Server; AbstractServer has none
        if sockets:
            return int(sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        handshake = self._handshake_timeout if self._ssl_context is not None else None
        self._server = await loop.create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=handshake, reuse_address=True)


@dataclass
class Listener:
    runner: GuardedRunner
    site: GuardedSite

    @property
    def port(self) -> int:
        return self.site.port

    @property
    def server(self) -> GuardedServer:
        server = self.runner.server
        assert isinstance(server, GuardedServer)
        return server

    async def close(self) -> None:
        await self.runner.cleanup()


def split_address(address: str) -> tuple[str, int]:
    """[host]:port -> (host, port); an empty host listens on every IPv4 address."""
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


async def listen(app: web.Application, address: str, *, ssl_context: ssl.SSLContext | None = None,
                 limits: Limits | None = None, name: str = "web") -> Listener:
    """Serve `app` on `address` ([host]:port); a port that cannot be bound is one line."""
    limits = limits or Limits.for_process()
    loop = asyncio.get_running_loop()
    if loop.get_exception_handler() is None:
        loop.set_exception_handler(_quiet_accept_errors)
    runner = GuardedRunner(app, name=name, limits=limits, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    host, port = split_address(address)
    site = GuardedSite(runner, host, port, ssl_context=ssl_context, limits=limits)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {address}: {exc.strerror}") from None
    return Listener(runner, site)
