"""Fake services of the simulated node (Kubernetes API, kubelet, engines), started on loopback.

Each starter runs its server inside the given exit stack and returns config overrides (dotted
keys) that point kvscope's real clients at it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from aiohttp import web

from kvscope.sim.node import SimNode

Starter = Callable[[SimNode, AsyncExitStack], Awaitable[dict[str, Any]]]


async def serve_app(app: web.Application, stack: AsyncExitStack, host: str = "127.0.0.1",
                    port: int = 0) -> str:
    """Run an aiohttp app on loopback for the life of `stack`; returns its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, host, port)
    await site.start()
    server: Any = site._server
    bound = server.sockets[0].getsockname()[1]
    return f"http://{host}:{bound}"


def shared_root(node: SimNode, stack: AsyncExitStack) -> Path:
    """One temporary directory per simulated node, shared by the simulators that write files
    (the sysfs tree under `sys/` is written by both the topology and the RDMA simulators, and
    `--path.sysfs` can point at only one root)."""
    root: Path | None = getattr(node, "_sim_root", None)
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="kvscope-sim-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        node._sim_root = root  # type: ignore[attr-defined]
    return root


async def start_kube_api(node: SimNode, stack: AsyncExitStack) -> dict[str, Any]:
    from kvscope.sim.kubeapi import build_app

    url = await serve_app(build_app(node), stack)
    return {"kubernetes.api_url": url}


# Which collectors each fake serves: a fake nobody reads is not started, so a demo or benchmark
# with a collector switched off carries no cost for its simulator (the RDMA tree is rewritten
# every second, the engines serve 100 KB expositions).
SERVES: dict[str, frozenset[str]] = {
    "start_kube_api": frozenset({"topology", "engines"}),
    "start_sysfs": frozenset({"topology"}),
    "start_kubelet": frozenset({"topology"}),
    "start_rdma": frozenset({"rdma"}),
    "start_engines": frozenset({"engines"}),
    "start_procfs": frozenset({"gpu"}),
}


async def start_all(node: SimNode, stack: AsyncExitStack,
                    enabled: frozenset[str] | None = None) -> dict[str, Any]:
    """Start the fakes that serve the `enabled` collectors (all when None), in the catalogue's
    order."""
    from kvscope.sim.catalogue import STARTERS

    overrides: dict[str, Any] = {}
    for start in STARTERS:
        serves = SERVES.get(start.__name__)
        if enabled is not None and serves is not None and not serves & enabled:
            continue
        overrides.update(await start(node, stack))
    return overrides
