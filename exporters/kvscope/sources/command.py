"""Run a helper program (eadm, rdma) without a shell, under a timeout and an output cap.

The program runs in its own session so that a kill reaches anything it started; a program that
hangs in an uninterruptible ioctl costs one timeout, never a stuck poller. Its output is read in
chunks while it runs and never held past `max_output` bytes per stream: a program that floods
(a broken tool, a debug build printing in a loop) is killed as soon as it passes the cap, so it
costs at most the cap plus one chunk of memory, not whatever it wrote before its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

MAX_OUTPUT = 1024 * 1024  # per stream; eadm stat prints ~2 KiB, rdma resource show ~100 B/device
CHUNK = 64 * 1024
REAP_S = 1.0  # how long to wait for a killed program to be reaped before giving up on it


class Outcome(enum.StrEnum):
    EXITED = "exited"  # ran to the end: see returncode
    TIMEOUT = "timeout"  # no end within the limit: killed
    TOO_LARGE = "too_large"  # wrote more than the cap: killed
    CANNOT_RUN = "cannot_run"  # could not be started (permissions, bad interpreter): stderr says


@dataclass(frozen=True)
class CommandResult:
    """What a program wrote and how it ended. stdout and stderr are empty unless it exited
    (CANNOT_RUN: stderr holds the system's reason)."""

    argv: tuple[str, ...]
    outcome: Outcome
    returncode: int = -1  # -1 unless the program exited
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.EXITED and self.returncode == 0

    def describe(self, limit_s: float, max_output: int = MAX_OUTPUT) -> str:
        """One line saying how the program failed (or `exit status 0`)."""
        what = " ".join((Path(self.argv[0]).name, *self.argv[1:]))
        if self.outcome is Outcome.TIMEOUT:
            return f"{what}: no answer in {limit_s:g}s; killed"
        if self.outcome is Outcome.TOO_LARGE:
            return f"{what}: more than {max_output} bytes of output; killed"
        if self.outcome is Outcome.CANNOT_RUN:
            return f"{what}: cannot run: {self.stderr}"
        return f"{what}: exit status {self.returncode}: {self.first_error_line()}"

    def first_error_line(self) -> str:
        for line in (self.stderr + "\n" + self.stdout).splitlines():
            if line.strip():
                return line.strip()[:200]
        return f"exit status {self.returncode}"


class _TooLargeError(Exception):
    pass


def resolve(program: str | None) -> str | None:
    """Absolute path of an executable given by name or path; None when absent."""
    if not program:
        return None
    return shutil.which(program)


async def run_command(
    argv: list[str], limit_s: float, max_output: int = MAX_OUTPUT
) -> CommandResult:
    """Run `argv` to its end, its timeout or its output cap, whichever comes first."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=CHUNK,
        )
    except OSError as exc:
        return CommandResult(tuple(argv), Outcome.CANNOT_RUN, stderr=exc.strerror or str(exc))
    try:
        out, err = await asyncio.wait_for(_communicate(proc, max_output), limit_s)
    except asyncio.CancelledError:
        _kill(proc)  # the poll itself was abandoned: leave nothing running behind it
        raise
    except TimeoutError:
        await _kill_and_reap(proc)
        return CommandResult(tuple(argv), Outcome.TIMEOUT)
    except _TooLargeError:
        await _kill_and_reap(proc)
        return CommandResult(tuple(argv), Outcome.TOO_LARGE)
    return CommandResult(
        tuple(argv),
        Outcome.EXITED,
        proc.returncode if proc.returncode is not None else -1,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
    )


async def _communicate(proc: asyncio.subprocess.Process, max_output: int) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.ensure_future(_read_capped(stream, max_output))
        for stream in (proc.stdout, proc.stderr)
    ]
    try:
        out, err = await asyncio.gather(*readers)
    finally:
        for reader in readers:
            reader.cancel()  # the other stream's reader, when one of them failed
    await proc.wait()
    return out, err


async def _read_capped(stream: asyncio.StreamReader, max_output: int) -> bytes:
    """The whole stream, read a chunk at a time; _TooLargeError as soon as it passes the cap."""
    data = bytearray()
    while chunk := await stream.read(CHUNK):
        if len(data) + len(chunk) > max_output:
            raise _TooLargeError
        data += chunk
    return bytes(data)


async def _kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    _kill(proc)
    # Read the pipes to their end (discarding it) so their transports close with the process.
    # A program stuck in an uninterruptible ioctl dies only when the ioctl returns: do not let
    # it hold the poll; the event loop's child watcher reaps it whenever it goes.
    streams = [s for s in (proc.stdout, proc.stderr) if s is not None]
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*map(_discard, streams), proc.wait()), REAP_S)


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(CHUNK):
        pass


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
