"""The listener against misbehaving clients, over real sockets: slow headers, idle keep-alive,
more connections than the cap (and a real 256-fd limit), malformed requests; an existing scraper
keeps being answered and the log stays a few lines (issue 15, items 7 and 9)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from agent import REPO, _env, free_port
from conftest import sim_context
from kvscope.app import build_runtime
from kvscope.runtime import Runtime
from kvscope.web.listener import Limits, Listener, connection_cap, listen
from kvscope.web.server import build_app

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    rt = build_runtime(sim_context("healthy"))
    await rt.poll_all_once()
    yield rt
    await rt.stop()


Serve = Callable[..., Awaitable[Listener]]


@pytest.fixture
async def serve(runtime: Runtime) -> AsyncIterator[Serve]:
    listeners: list[Listener] = []

    async def start(limits: Limits, ssl_context: ssl.SSLContext | None = None) -> Listener:
        listener = await listen(build_app(runtime), "127.0.0.1:0", ssl_context=ssl_context,
                                limits=limits)
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        await listener.close()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before closing; fails when it keeps the connection open."""
    return await asyncio.wait_for(reader.read(), seconds)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               request: bytes = REQUEST) -> bytes:
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return head


async def test_a_client_that_never_finishes_its_headers_is_closed(serve: Serve) -> None:
    listener = await serve(Limits(header_timeout=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line, ever
    started = time.monotonic()
    assert await _closed_within(reader, 5) == b""
    assert time.monotonic() - started < 3
    assert listener.server.head_timeouts == 1
    writer.close()


async def test_a_silent_client_is_closed_and_a_slow_but_steady_one_too(serve: Serve) -> None:
    listener = await serve(Limits(header_timeout=0.5))
    silent_r, silent_w = await asyncio.open_connection("127.0.0.1", listener.port)
    drip_r, drip_w = await asyncio.open_connection("127.0.0.1", listener.port)

    async def drip() -> None:  # one byte every 0.1 s: each byte resets no clock
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            if drip_w.is_closing():
                return
            drip_w.write(bytes([byte]))
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    assert await _closed_within(silent_r, 5) == b""
    assert await _closed_within(drip_r, 5) == b""
    dripping.cancel()
    silent_w.close()
    drip_w.close()


async def test_a_tls_handshake_that_never_starts_is_closed(serve: Serve, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(server_ctx)
    listener = await serve(Limits(header_timeout=0.5), ssl_context=server_ctx)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)  # plain TCP
    assert await _closed_within(reader, 5) == b""
    writer.close()


async def test_keep_alive_works_and_idle_connections_are_closed(serve: Serve) -> None:
    listener = await serve(Limits(header_timeout=0.5, keepalive_timeout=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    assert b" 200 " in await _get(reader, writer)
    await asyncio.sleep(0.7)  # idle past the header timeout: only keep-alive applies here
    assert b" 200 " in await _get(reader, writer)
    started = time.monotonic()
    assert await _closed_within(reader, 5) == b""
    assert 0.5 < time.monotonic() - started < 3
    writer.close()


async def test_over_the_cap_new_connections_get_503_and_the_scraper_is_served(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kvscope.web.listener")
    listener = await serve(Limits(max_connections=4))
    scraper = await asyncio.open_connection("127.0.0.1", listener.port)
    assert b" 200 " in await _get(*scraper)
    idle = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(3)]
    refused = []
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        refused.append(await _closed_within(reader, 5))
        writer.close()
    assert all(r.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in r for r in refused)
    assert b" 200 " in await _get(*scraper)  # the connected scraper is still answered
    for _, writer in idle:
        writer.close()
    await asyncio.sleep(0.2)
    fresh = await asyncio.open_connection("127.0.0.1", listener.port)
    assert b" 200 " in await _get(*fresh)
    fresh[1].close()
    scraper[1].close()
    assert listener.server.shed == 20
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 2, lines  # one when shedding starts, one when it ends
    assert "answering new connections with 503" in lines[0]
    assert "below the connection cap again (20 connections refused)" in lines[1]


@pytest.mark.parametrize(("fds", "cap"), [(256, 64), (1024, 128), (1_048_576, 128), (20, 8)])
def test_the_cap_fits_the_fd_limit(fds: int, cap: int) -> None:
    assert connection_cap(fds) == cap


MALFORMED = [
    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
    b"GET /metrics HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
]


async def test_malformed_requests_get_400_and_one_log_line(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    listener = await serve(Limits())
    answers = []
    for i in range(200):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(MALFORMED[i % len(MALFORMED)])
        answers.append(await _closed_within(reader, 5))
        writer.close()
    assert all(a.split(b"\r\n")[0].endswith(b" 400 Bad Request") for a in answers), answers[:4]
    loud = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert "bad HTTP request from 127.0.0.1" in loud[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)  # no traceback, not even at debug
    assert listener.server.bad_requests == 200


def _limited_agent(port: int, log: Path) -> subprocess.Popen[bytes]:
    """`kvscope demo` under a 256-descriptor limit, its stderr in `log`."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    return subprocess.Popen(
        [sys.executable, "-m", "kvscope.cli", "demo", "--web.listen-address",
         f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=log.open("wb"),
        env=_env(), cwd=REPO, preexec_fn=limit)  # noqa: PLW1509 (the test has no threads)


def _recv_more(sock: socket.socket, data: bytes) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:  # closed by the agent: fail here rather than spin on empty reads
        raise AssertionError(f"connection closed after {len(data)} bytes: {data[:200]!r}")
    return data + chunk


def _http_get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data = _recv_more(sock, data)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body = _recv_more(sock, body)
    return head


def test_under_a_256_fd_limit_a_connection_storm_leaves_the_scraper_and_the_log_alone(
        tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "agent.log"
    agent = _limited_agent(port, log)
    storm: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                scraper = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert b" 200 " in _http_get(scraper)
        for _ in range(400):  # far past the fd limit; the kernel's backlog takes the rest
            with contextlib.suppress(OSError):
                storm.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(3)
        for _ in range(5):
            assert b" 200 " in _http_get(scraper)
            time.sleep(0.5)
    finally:
        for s in storm:
            s.close()
        agent.terminate()
        agent.wait(timeout=20)
    text = log.read_text()
    assert "Traceback" not in text
    assert len(text) < 4000, text[:4000]
    assert "answering new connections with 503" in text
