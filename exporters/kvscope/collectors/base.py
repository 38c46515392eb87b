"""The collector contract: what a collector is, when it is polled, and what a poll returns.

A poll returns a `PollResult`: the families it could read and the errors of the sources that
failed. One failing source inside a tier (a hung `eadm`, a dead Kubernetes API) so no longer
hides what the tier's other sources read: the runtime serves the families, sets
`kvscope_collector_up{collector,tier}` to 0 and counts every error's reason in
`kvscope_collector_errors_total{reason}`. A poll that can read nothing at all raises
`CollectorError` (or lets a timeout expire, or returns errors and no families); the runtime
then keeps serving the tier's previous families until they go stale.

`NoData` is for hardware that is simply not there: the runtime serves nothing for the tier,
logs it at debug level and counts no error, so absent hardware is not an outage.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, ParamSpec, Protocol, TypeVar

from prometheus_client.core import Metric

P = ParamSpec("P")
T = TypeVar("T")


class Tier(enum.StrEnum):
    """Cadence tiers. Static and event tiers run first so fast polls can rely on identity."""

    STATIC = "static"  # identity: names, UUIDs, PCI ids; refreshed rarely
    FAST = "fast"  # cheap reads: utilisation, memory, temperature, counters
    SLOW = "slow"  # reads that are slow on real hardware (energy 3-15 ms, per-link errors)
    EVENT = "event"  # blocking waits for events (NVML XID); the poll itself waits


@dataclass(frozen=True)
class Schedule:
    interval: float  # seconds between poll starts; 0 for event tiers that block in the poll
    timeout: float  # a poll running longer than this is abandoned and counted as an error


class CollectorError(Exception):
    """A source failed for a known reason. `reason` becomes the errors_total label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoData(Exception):  # named after node_exporter's ErrNoData
    """The hardware this tier reads is not present: nothing to export, and not a failure."""


@dataclass(frozen=True)
class PollResult:
    """What one poll read (`families`) and what failed while reading it (`errors`)."""

    families: Sequence[Metric] = ()
    errors: Sequence[CollectorError] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


class Pool(Protocol):
    """Where a poll runs its blocking reads: the (collector, tier)'s own worker thread."""

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...


class Collector(ABC):
    """A source of metric families, polled by the runtime on its tiers."""

    name: ClassVar[str]

    @abstractmethod
    def schedules(self) -> dict[Tier, Schedule]:
        """The tiers this collector polls on, with their cadence."""

    @abstractmethod
    async def poll(self, tier: Tier, pool: Pool) -> PollResult:
        """Read one tier: its families and the errors of the sources that failed.

        Blocking reads go through `pool`. Raise `CollectorError` only when nothing could be
        read, `NoData` when the hardware is absent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release hardware handles; called once at shutdown."""
