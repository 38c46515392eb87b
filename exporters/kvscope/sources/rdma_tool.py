"""iproute2's `rdma -j resource show`: resources in use per device (QPs against max_qp).

The summary is one netlink dump, cheap even with 100k QPs (unlike `resource show qp`, which lists
every QP). A tool that is missing or cannot open the RDMA netlink socket means "no data".
"""

from __future__ import annotations

from dataclasses import dataclass

from kvscope.parsers.rdma_tool import Resources, parse_resources
from kvscope.sources.command import CommandTimeoutError, resolve, run_command


@dataclass(frozen=True)
class ToolOutcome:
    resources: Resources | None = None  # None: no data (tool absent or failed)
    timed_out: str | None = None  # message when the tool hung and was killed
    unavailable: str | None = None  # why there is no data, for a debug log


class RdmaTool:
    def __init__(self, program: str | None, timeout: float) -> None:
        self.path = resolve(program)
        self.timeout = timeout

    async def resources(self) -> ToolOutcome:
        if self.path is None:
            return ToolOutcome(unavailable="rdma tool not installed")
        try:
            result = await run_command([self.path, "-j", "resource", "show"], self.timeout)
        except CommandTimeoutError as exc:
            return ToolOutcome(timed_out=str(exc))
        except OSError as exc:
            return ToolOutcome(unavailable=f"cannot run {self.path}: {exc.strerror}")
        if result.returncode != 0:
            return ToolOutcome(unavailable=f"rdma resource show: {result.first_error_line()}")
        return ToolOutcome(resources=parse_resources(result.stdout))
