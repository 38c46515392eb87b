"""Alibaba's `eadm` tool: `eadm stat -d <dev>` (the OOT erdma driver's 55 counters, read through
the /dev/erdma ioctl) and `eadm ver` (driver version).

Each call is a subprocess without a shell, under a timeout, killed when it expires. Calls for
several devices run concurrently, so a hung eadm costs one timeout per poll, not one per device.
An eadm that is not installed means the source is off (eRDMA nodes without the OOT driver's tool
still export the sysfs hw_counters).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from kvscope.parsers.eadm import EadmStats, parse_stat, parse_version
from kvscope.sources.command import CommandResult, CommandTimeoutError, resolve, run_command


@dataclass(frozen=True)
class EadmFailure:
    reason: str  # eadm_timeout | eadm_failed | eadm_parse
    message: str


@dataclass(frozen=True)
class EadmReport:
    stats: dict[str, EadmStats]  # device -> parsed counters (only devices that succeeded)
    version: str | None
    failures: tuple[EadmFailure, ...]


class Eadm:
    def __init__(self, program: str | None, timeout: float) -> None:
        self.path = resolve(program)
        self.timeout = timeout

    @property
    def available(self) -> bool:
        return self.path is not None

    async def read(self, devices: list[str], *, want_version: bool) -> EadmReport:
        assert self.path is not None
        calls = [self._call(["stat", "-d", dev]) for dev in devices]
        if want_version:
            calls.append(self._call(["ver"]))
        results = await asyncio.gather(*calls)
        stats: dict[str, EadmStats] = {}
        failures: list[EadmFailure] = []
        for dev, result in zip(devices, results, strict=False):
            if isinstance(result, EadmFailure):
                failures.append(result)
                continue
            parsed = parse_stat(result.stdout)
            if parsed.error is not None:
                failures.append(EadmFailure("eadm_parse", f"eadm stat -d {dev}: {parsed.error}"))
            stats[dev] = parsed  # kept even when empty: its malformed lines still count
        version = None
        if want_version and not isinstance(results[-1], EadmFailure):
            version = parse_version(results[-1].stdout)
        return EadmReport(stats, version, tuple(failures))

    async def _call(self, args: list[str]) -> CommandResult | EadmFailure:
        assert self.path is not None
        what = "eadm " + " ".join(args)
        try:
            result = await run_command([self.path, *args], self.timeout)
        except CommandTimeoutError:
            return EadmFailure("eadm_timeout",
                               f"{what}: no answer in {self.timeout:g}s; killed")
        except OSError as exc:
            return EadmFailure("eadm_failed", f"{what}: cannot run: {exc.strerror}")
        if result.returncode != 0:
            return EadmFailure("eadm_failed", f"{what}: exit status {result.returncode}: "
                                              f"{result.first_error_line()}")
        return result
