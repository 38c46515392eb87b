"""Real Prometheus/Alertmanager processes and a webhook receiver for the alert tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from alerts_helpers import ALERTS, REPO


def listen_port() -> int:
    """A free port below the ephemeral range (32768+ on Linux): the simulated engines bind
    port 0 and would otherwise take a port handed to an agent before it binds it."""
    while True:
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(f"{names[0]} is missing: tests/run.sh installs Debian's package")


@contextmanager
def process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def agent_env(node: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "exporters") + os.pathsep + env.get("PYTHONPATH", "")
    env["NODE_NAME"] = node
    return env


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def alertmanager_config(webhook_port: int) -> dict[str, Any]:
    """The shipped example with its receivers pointed here and its group timers shortened."""
    config = yaml.safe_load((ALERTS / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"http://127.0.0.1:{webhook_port}/{receiver['name']}"
    # group_wait stays longer than the agent's 5 s GPU poll: a lost GPU's XID (an event) is seen
    # up to one poll before kvscope_gpu_up drops, and the inhibition needs both in one flush
    # (the shipped 30s has the same reason, with room to spare).
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        route.update({"group_wait": "8s", "group_interval": "2s", "repeat_interval": "1h"})
    return config


# ---- the webhook receiver ---------------------------------------------------------------------

@dataclass
class Received:
    receiver: str
    alert: dict[str, Any]


class Webhook:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        for alert in body["alerts"]:
            if alert["status"] == "firing":
                self.received.append(Received(request.match_info["receiver"], alert))
        self.arrived.set()
        return web.Response(text="ok")

    async def wait(self, seconds: float) -> None:
        """Until the next notification arrives, or `seconds` pass."""
        self.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.arrived.wait(), seconds)


@contextlib.asynccontextmanager
async def serve_webhook() -> AsyncIterator[tuple[Webhook, int]]:
    """A webhook receiver on loopback: (recorder, port)."""
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/{receiver}", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = listen_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield hook, port
    finally:
        await runner.cleanup()
