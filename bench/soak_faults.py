"""Faults the soak toggles on the simulated node, one at a time, each for one period.

Agent side (the fake NVML lives in the agent's process): a driver call failing, a call hanging
past the GPU collector's timeout, an XID 79 with the GPU falling off the bus. Services side:
an engine's load turning bad (KV cache full, queue backing up) and an RDMA port going down.
Each fault is cleared when its period ends, so the agent goes through failure and recovery
again and again: what a soak must show is that nothing piles up across those turns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kvscope.sim.node import XidFault

NVML_ERROR_UNKNOWN = 999
HANG_SECONDS = 6.0  # past the fast tier's 4 s timeout: it reports timeout, then busy, then heals


def _failing_power(node: Any) -> Callable[[], None]:
    node.failing_calls["nvmlDeviceGetPowerUsage"] = NVML_ERROR_UNKNOWN
    return lambda: node.failing_calls.pop("nvmlDeviceGetPowerUsage", None)


def _hanging_utilization(node: Any) -> Callable[[], None]:
    node.slow_calls["nvmlDeviceGetUtilizationRates"] = HANG_SECONDS
    return lambda: node.slow_calls.pop("nvmlDeviceGetUtilizationRates", None)


def _gpu_lost(node: Any) -> Callable[[], None]:
    gpu = node.gpus[min(3, len(node.gpus) - 1)]
    node.xid_faults.append(XidFault(after=node.elapsed(), gpu=gpu.index, xid=79))
    gpu.lost_after = node.elapsed() + 1.0

    def clear() -> None:
        gpu.lost_after = None

    return clear


AGENT_FAULTS: list[Callable[[Any], Callable[[], None]]] = [_failing_power, _hanging_utilization,
                                                          _gpu_lost]


def _engine_trouble(node: Any) -> Callable[[], None]:
    engines = [e for e in node.engines if hasattr(e, "fault")]
    for e in engines:
        e.fault = {"kv_usage": 0.995, "waiting": 85, "preempt_rate": 2.5}
        e.fault_at = node.elapsed()

    def clear() -> None:
        for e in engines:
            e.fault, e.fault_at = {}, None

    return clear


def _port_down(node: Any) -> Callable[[], None]:
    devices = node.rdma.devices if node.rdma is not None else []
    if not devices:
        return lambda: None
    dev = devices[min(2, len(devices) - 1)]
    dev.down_after = node.elapsed()

    def clear() -> None:
        dev.down_after = None

    return clear


SERVICE_FAULTS: list[Callable[[Any], Callable[[], None]]] = [_engine_trouble, _port_down]


def toggle_forever(node: Any, faults: list[Callable[[Any], Callable[[], None]]],
                   period: float) -> threading.Thread:
    """A daemon thread: a quiet period, then each fault for one period, round and round."""

    def run() -> None:
        turn = 0
        while True:
            time.sleep(period)  # quiet between faults: recovery is part of the soak
            clear = faults[turn % len(faults)](node)
            time.sleep(period)
            clear()
            turn += 1

    thread = threading.Thread(target=run, name="soak-faults", daemon=True)
    thread.start()
    return thread
