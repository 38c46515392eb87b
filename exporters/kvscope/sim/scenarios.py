"""Named scenarios of the simulated node.

Each scenario reproduces a field incident kvscope exists to show. Faults are timed from
`fault_delay` so that `kvscope demo` shows the healthy node first and the fault arriving;
`kvscope collect` uses a delay of 0 and so prints the node as it is after the fault.
The subsystem simulators (NVLink, RDMA, engines, ...) define theirs; `catalogue` lists them
all, with the equipment every scenario's node starts from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kvscope.sim.node import SimNode, XidFault, make_gpus


@dataclass(frozen=True)
class SimOptions:
    hostname: str = "sim-node-0"
    fault_delay: float = 30.0
    latency_scale: float = 1.0
    clock: Callable[[], float] = time.monotonic
    start_elapsed: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Callable[[SimOptions], SimNode]


# Equips a bare node with one subsystem (PD pods, NVLink mesh, RDMA NICs, engines).
Equipment = Callable[[SimNode, SimOptions], None]


def _node(opts: SimOptions, **fields: object) -> SimNode:
    """The default node, fully equipped: every scenario starts from it."""
    # Imported here: the catalogue imports the subsystem modules, which import this one.
    from kvscope.sim.catalogue import EQUIPMENT

    node = SimNode(hostname=opts.hostname, gpus=make_gpus(opts.hostname), clock=opts.clock,
                   latency_scale=opts.latency_scale, start_elapsed=opts.start_elapsed,
                   **fields)  # type: ignore[arg-type]
    for equip in EQUIPMENT:
        equip(node, opts)
    return node


def healthy(opts: SimOptions) -> SimNode:
    return _node(opts)


# The "GPU 0 syndrome" measured on 8-GPU tensor-parallel serving: rank 0 does the scheduling,
# sampling and detokenising work on top of its shard, so it saturates while the last ranks idle.
HOTSPOT_UTIL = (98, 82, 78, 72, 68, 65, 52, 48)


def all_scenarios() -> dict[str, Scenario]:
    """Every scenario of every subsystem, by name, in the catalogue's order."""
    from kvscope.sim.catalogue import SCENARIOS

    return SCENARIOS


def gpu0_hotspot(opts: SimOptions) -> SimNode:
    node = _node(opts)
    for gpu, util in zip(node.gpus, HOTSPOT_UTIL, strict=True):
        gpu.util_base = float(util)
        gpu.util_swing = 1.0
    return node


def oom_risk(opts: SimOptions) -> SimNode:
    """Uneven KV cache: GPU 2's framebuffer is full while its peers sit at 87%."""
    node = _node(opts)
    for gpu in node.gpus:
        gpu.fb_used_ratio = 0.87
    node.gpus[2].fb_used_ratio = 0.995
    return node


def xid_79(opts: SimOptions) -> SimNode:
    """GPU 3 falls off the bus: XID 79, then every NVML call on it is GPU_IS_LOST."""
    node = _node(opts)
    node.xid_faults.append(XidFault(after=opts.fault_delay, gpu=3, xid=79))
    node.gpus[3].lost_after = opts.fault_delay + 1.0 if opts.fault_delay > 0 else 0.0
    return node


# How long the nvml-hang scenario's driver stays wedged: longer than any demo or test runs.
NVML_HANG_SECONDS = 3600.0


def nvml_hang(opts: SimOptions) -> SimNode:
    """The driver wedges after the fault delay (seen with wedged GPUs): NVML calls hang, not
    fail. With a delay of 0 it is wedged from boot, so NVML never enumerates the GPUs."""
    start = opts.fault_delay
    return _node(opts, wedged=(start, start + NVML_HANG_SECONDS))


def driver_reload(opts: SimOptions) -> SimNode:
    """The NVIDIA driver is reloaded (an upgrade, a GPU reset): NVML fails as a whole for 20 s,
    then answers again once re-initialised."""
    start = opts.fault_delay
    return _node(opts, driver_reload=(start, start + 20.0))


def no_gpu_library(opts: SimOptions) -> SimNode:
    """A node where libnvidia-ml.so cannot be loaded: the agent serves everything else."""
    return _node(opts, library_missing=True)


# The node's own scenarios (GPUs and NVML); the subsystems' follow them in the catalogue.
SCENARIOS: tuple[Scenario, ...] = (
        Scenario("healthy", "8 x H100 80GB HBM3, NV18 links, moderate moving load", healthy),
        Scenario("gpu0-hotspot", "GPU 0 syndrome: utilisation 98 82 78 72 68 65 52 48 %",
                 gpu0_hotspot),
        Scenario("oom-risk", "GPU 2 framebuffer 99.5% full, peers at 87%", oom_risk),
        Scenario("xid-79", "GPU 3 falls off the bus (XID 79) after the fault delay", xid_79),
        Scenario("nvml-hang", "the driver wedges after the fault delay (from boot at 0): NVML "
                 "calls hang, the GPU collector reports itself down, the rest is served",
                 nvml_hang),
        Scenario("no-nvml", "NVML library missing: no GPU series, everything else served",
                 no_gpu_library),
        Scenario("driver-reload", "the NVIDIA driver goes away for 20 s after the fault delay "
                 "and comes back: GPU series return without a restart", driver_reload),
)


def build_scenario(name: str, opts: SimOptions | None = None) -> SimNode:
    known_scenarios = all_scenarios()
    try:
        scenario = known_scenarios[name]
    except KeyError:
        known = ", ".join(sorted(known_scenarios))
        raise ValueError(f"unknown scenario {name!r} (known: {known})") from None
    return scenario.build(opts or SimOptions())
