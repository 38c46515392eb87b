"""What every collector is given: the configuration, the backends, the shared services.

One frozen value per agent (app.py builds it from Backends and Config). Nothing in it is
rewritten after start: the simulator hands its final Config to cli.py before any collector is
built, and facts collectors share live in typed services with one writer each
(collectors/shared.py), not in fields on this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvscope.backends import Backends
from kvscope.collectors.shared import SharedServices
from kvscope.config import Config


@dataclass(frozen=True)
class NodeContext:
    config: Config
    backends: Backends = field(default_factory=Backends)
    shared: SharedServices = field(default_factory=SharedServices)
    oneshot: bool = False  # `kvscope collect` and the doctor: event tiers drain without waiting
