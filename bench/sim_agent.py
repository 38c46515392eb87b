"""`kvscope demo` with the simulator's services in another process (bench/sim_services.py).

The agent keeps what must live in its process, the fake NVML and the fake pyverbs (they are
libraries, not services), and receives the services' addresses as config overrides, so the
production serve path runs unchanged and its CPU and memory are the agent's alone.

Run: python3 bench/sim_agent.py SHAPE_JSON OVERRIDES_JSON LISTEN [--no-collector.NAME ...]
     [--faults=SECONDS]  (bench/soak.py: toggle the agent-side faults of soak_faults.py)
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "exporters"))

from simnode import NodeShape, build_node


def main() -> None:
    import logging

    from kvscope import app
    from kvscope.config import load
    from kvscope.context import NodeContext
    from kvscope.sim import build_backends, services

    shape = NodeShape.from_json(sys.argv[1])
    external: dict[str, Any] = json.loads(sys.argv[2])
    overrides: dict[str, Any] = {"web.listen_address": sys.argv[3], "log_level": "error",
                                 "scenario": shape.scenario, "node_name": shape.hostname}
    fault_period = 0.0
    for flag in sys.argv[4:]:
        if flag.startswith("--faults="):  # bench/soak.py: toggle faults every N seconds
            fault_period = float(flag.removeprefix("--faults="))
            continue
        name = flag.removeprefix("--no-collector.")
        overrides[f"collectors.{name}.enabled"] = False

    async def already_running(node: Any, stack: AsyncExitStack,
                              enabled: frozenset[str] | None = None) -> dict[str, Any]:
        return external

    services.start_all = already_running  # type: ignore[assignment]
    logging.basicConfig(level=logging.ERROR)
    config = load(None, overrides)
    node = build_node(shape)
    if fault_period > 0:
        from soak_faults import AGENT_FAULTS, toggle_forever

        toggle_forever(node, AGENT_FAULTS, fault_period)

    async def serve() -> None:
        async with AsyncExitStack() as stack:
            backends, final = await build_backends(config, stack, fault_delay=30.0, node=node)
            await app.serve(NodeContext(final, backends))

    asyncio.run(serve())


if __name__ == "__main__":
    main()
