"""Run a helper program (eadm, rdma) without a shell, under a timeout, and kill it on expiry.

The program runs in its own session so that the kill reaches anything it started; a program that
hangs in an uninterruptible ioctl costs one timeout, never a stuck poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass

MAX_OUTPUT = 1024 * 1024


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    def first_error_line(self) -> str:
        for line in (self.stderr + "\n" + self.stdout).splitlines():
            if line.strip():
                return line.strip()[:200]
        return f"exit status {self.returncode}"


class CommandTimeoutError(Exception):
    pass


def resolve(program: str | None) -> str | None:
    """Absolute path of an executable given by name or path; None when absent."""
    if not program:
        return None
    return shutil.which(program)


async def run_command(argv: list[str], limit_s: float) -> CommandResult:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except asyncio.CancelledError:
        _kill(proc)  # the poll itself was abandoned: leave nothing running behind it
        raise
    except TimeoutError:
        _kill(proc)
        with contextlib.suppress(Exception):
            await proc.wait()
        raise CommandTimeoutError(f"{' '.join(argv)}: no answer in {limit_s:g}s; killed") from None
    return CommandResult(proc.returncode if proc.returncode is not None else -1,
                         out[:MAX_OUTPUT].decode("utf-8", "replace"),
                         err[:MAX_OUTPUT].decode("utf-8", "replace"))


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
