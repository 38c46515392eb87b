"""Alibaba's `eadm` tool: `eadm stat -d <dev>` (the OOT erdma driver's 55 counters, read through
the /dev/erdma ioctl) and `eadm ver` (driver version).

Each call is a subprocess without a shell, under a timeout and an output cap, killed when it
passes either. Calls for several devices run concurrently, so a hung eadm costs one timeout per
poll, not one per device. Only the raw output comes back; kvscope.parsers.eadm reads it. An eadm
that is not installed means the source is off (eRDMA nodes without the OOT driver's tool still
export the sysfs hw_counters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from kvscope.sources.command import CommandResult, resolve, run_command


@dataclass(frozen=True)
class EadmOutput:
    stats: Mapping[str, CommandResult]  # device -> `eadm stat -d <device>`
    version: CommandResult | None  # `eadm ver`, when asked for


class Eadm:
    def __init__(self, program: str | None, timeout: float) -> None:
        self.path = resolve(program)
        self.timeout = timeout

    @property
    def available(self) -> bool:
        return self.path is not None

    async def read(self, devices: list[str], *, want_version: bool) -> EadmOutput:
        assert self.path is not None
        calls = [self._call("stat", "-d", dev) for dev in devices]
        if want_version:
            calls.append(self._call("ver"))
        results = await asyncio.gather(*calls)
        stats = dict(zip(devices, results, strict=False))
        return EadmOutput(stats, results[-1] if want_version else None)

    async def _call(self, *args: str) -> CommandResult:
        assert self.path is not None
        return await run_command([self.path, *args], self.timeout)
