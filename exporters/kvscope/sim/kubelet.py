"""The simulated node's kubelet pod-resources endpoint, started when the topology collector runs.

The gRPC server itself lives in `kubelet_server` and is imported only when started, so a demo or
benchmark without the topology collector does not carry grpcio.
"""

from __future__ import annotations

import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from kvscope.sim.node import SimNode


async def start_kubelet(node: SimNode, stack: AsyncExitStack) -> dict[str, Any]:
    """A fake kubelet in a temporary directory (a starter of `catalogue.STARTERS`)."""
    if not node.pods:
        return {}
    from kvscope.sim.kubelet_server import start_kubelet_sync

    tmp = tempfile.TemporaryDirectory(prefix="kvscope-sim-kubelet-")
    stack.callback(tmp.cleanup)
    kubelet = start_kubelet_sync(node, Path(tmp.name))
    stack.callback(kubelet.stop)
    return {"collectors.topology.pod_resources_socket": str(kubelet.socket_path)}


def __getattr__(name: str) -> Any:
    # FakeKubelet, start_kubelet_sync, list_reply: loaded on first use.
    from kvscope.sim import kubelet_server

    return getattr(kubelet_server, name)

