"""iproute2's `rdma -j resource show`: resources in use per device (QPs against max_qp).

The summary is one netlink dump, cheap even with 100k QPs (unlike `resource show qp`, which lists
every QP). The raw output comes back; kvscope.parsers.rdma_tool reads it.
"""

from __future__ import annotations

from kvscope.sources.command import CommandResult, resolve, run_command


class RdmaTool:
    def __init__(self, program: str | None, timeout: float) -> None:
        self.path = resolve(program)
        self.timeout = timeout

    async def resources(self) -> CommandResult | None:
        """The command's result; None when the tool is not installed."""
        if self.path is None:
            return None
        return await run_command([self.path, "-j", "resource", "show"], self.timeout)
