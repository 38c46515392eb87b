"""What the agent reads the outside world through: the `Backends` value.

cli.py builds it once per agent: from the host (`host_backends`: pynvml loaded on first use,
pyverbs imported by the RDMA collector, /sys and /proc as configured), or from the simulated
node (`kvscope.sim.build_backends`, which also starts the node's fake services and returns the
configuration that points kvscope's clients at them). app.py wires collectors to whatever it is
given and never imports the simulator.

Locations that are configuration as well (sysfs and procfs roots, the eadm binary, the kubelet
socket, the Kubernetes API URL, engine targets) stay in `Config`: the simulator hands back the
final Config with its fakes' locations in it, so every collector reads one place and nothing
rewrites the configuration after the collectors are built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from kvscope.config import Config, ConfigError
from kvscope.sources.nvml import NvmlSession


@dataclass(frozen=True)
class SimulatedNode:
    """What the index page says about a simulated node (the simulator fills it in)."""

    scenario: str
    description: str = ""


@dataclass(frozen=True)
class Backends:
    """The seams to the outside: one NVML session per agent, the pyverbs module (None: the RDMA
    collector imports the real one), and, for a simulated node, what it simulates."""

    nvml: NvmlSession = field(default_factory=NvmlSession)
    verbs: Any = None
    simulated: SimulatedNode | None = None


def host_backends(config: Config) -> Backends:
    """This node's hardware: pynvml (from collectors.gpu.nvml_library when set), loaded on first
    use so a node without it still serves everything else."""
    from kvscope.sources.nvml import load_library

    path = config.collectors.gpu.nvml_library
    return Backends(nvml=NvmlSession(functools.partial(load_library, path)))


def check_host_roots(config: Config) -> None:
    """Refuse a sysfs or procfs root that is not a directory: every sysfs reader would find
    nothing and report "no such hardware", so a typo in a DaemonSet would look like a node
    without RDMA NICs instead of failing at start."""
    for name, root in (("sysfs", config.paths.sysfs), ("procfs", config.paths.procfs)):
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a directory"
            host = "/sys" if name == "sysfs" else "/proc"
            raise ConfigError(f"{name} root {root} {what} (--path.{name} or paths.{name}; in a "
                              f"container, mount the host's {host} read-only and point it there)")
