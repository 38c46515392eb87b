"""The simulated node's services in a process of their own: fake engines, kubelet, Kubernetes
API and the RDMA sysfs tree rewritten every second, so a benchmark charges the agent's process
with the agent's work only.

Run: python3 bench/sim_services.py SHAPE_JSON [--faults=SECONDS]
Prints one JSON line, the config overrides that point an agent at the services, then serves
until terminated.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "exporters"))

from simnode import NodeShape, build_node


async def serve(shape: NodeShape, fault_period: float) -> None:
    from kvscope.sim.services import start_all

    node = build_node(shape)
    if fault_period > 0:
        from soak_faults import SERVICE_FAULTS, toggle_forever

        toggle_forever(node, SERVICE_FAULTS, fault_period)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        overrides = await start_all(node, stack)
        print(json.dumps(overrides), flush=True)
        await stop.wait()


if __name__ == "__main__":
    period = float(sys.argv[2].removeprefix("--faults=")) if len(sys.argv) > 2 else 0.0
    asyncio.run(serve(NodeShape.from_json(sys.argv[1]), period))
