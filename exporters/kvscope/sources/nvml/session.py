"""One NVML session per agent: the library loaded once, initialised once, its errors
translated once, shared by every collector that reads NVML.

`generation` counts successful initialisations: a reader that enumerated GPUs under an older
generation holds handles of a session that is gone (the driver was reloaded and `recover`
re-initialised NVML) and enumerates again before reading.

When NVML stops answering as a whole (the library or driver went away: a driver reload, an
upgrade), a reader calls `mark_broken`; `recover` then re-initialises the session, at most once
per back-off step (1 s doubling to 30 s), so a library that is gone for minutes costs a few
calls, not a busy loop, and the agent's series come back on their own when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kvscope.sources.nvml.library import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NvmlError,
    NvmlLibrary,
    NvmlUnavailable,
    load_library,
    translating,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class NvmlSession:
    """The agent's NVML session. `loader` gives the library (pynvml, or the simulator's fake)
    or raises NvmlUnavailable; it is asked again after a failure, so a library that appears
    later (a driver installed after the agent started) is found."""

    def __init__(self, loader: Callable[[], NvmlLibrary] = load_library) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._lib: NvmlLibrary | None = None
        self._initialised = False
        self.generation = 0
        self.retry_first = 1.0  # seconds before the first re-initialisation attempt
        self.retry_max = 30.0
        self._broken: str | None = None  # why NVML stopped answering, while it does not
        self._retry_in = self.retry_first
        self._retry_at = 0.0
        self._monotonic = time.monotonic

    @property
    def broken(self) -> str | None:
        """Why NVML as a whole does not answer (None while it does)."""
        return self._broken

    def mark_broken(self, why: str) -> None:
        """NVML as a whole stopped answering: `recover` re-initialises it after a back-off."""
        with self._lock:
            if self._broken is None:
                self._broken = why
                self._retry_in = self.retry_first
                self._retry_at = self._monotonic() + self._retry_in

    def retry_in(self) -> float:
        """Seconds until `recover` tries again (0 when it is due or nothing is broken)."""
        return max(0.0, self._retry_at - self._monotonic()) if self._broken else 0.0

    def recover(self) -> bool:
        """True when NVML answers: not broken, or re-initialised now. An attempt that fails
        doubles the wait before the next one (up to `retry_max`)."""
        with self._lock:
            if self._broken is None:
                return True
            now = self._monotonic()
            if now < self._retry_at:
                return False
            try:
                self._reinit()
            except (NvmlUnavailable, NvmlError) as exc:
                self._retry_in = min(self._retry_in * 2, self.retry_max)
                self._retry_at = now + self._retry_in
                log.debug("NVML still not answering (%s); next try in %.0fs", exc,
                          self._retry_in)
                return False
            return True

    def library(self) -> NvmlLibrary:
        """The initialised library, every call translated to NvmlError. Raises NvmlUnavailable
        (no library, no driver) or NvmlError (nvmlInit failed otherwise)."""
        with self._lock:
            if not self._initialised:
                self._init()
            assert self._lib is not None
            return self._lib

    def _reinit(self) -> None:
        """Shut the session down (what fails is ignored: the driver went away under it) and
        initialise it again; the generation moves on, so every reader enumerates anew."""
        if self._initialised and self._lib is not None:
            try:
                self._lib.nvmlShutdown()
            except NvmlError as exc:
                log.debug("NVML shutdown before re-initialising: %s", exc)
        self._initialised = False
        self._init()

    def _init(self) -> None:
        if self._lib is None:
            self._lib = translating(self._loader())
        try:
            self._lib.nvmlInit()
        except NvmlError as exc:
            if exc.code in (NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED):
                raise NvmlUnavailable(f"NVML not usable: {exc}") from exc
            raise
        except Exception as exc:  # the library failed to load itself (ctypes, OSError)
            raise NvmlUnavailable(f"NVML not usable: {exc}") from exc
        self._initialised = True
        self.generation += 1
        if self._broken is not None:
            log.info("NVML answers again (was: %s): re-initialised, session %d", self._broken,
                     self.generation)
            self._broken = None

    def close(self) -> None:
        """nvmlShutdown, once, when the agent stops."""
        with self._lock:
            if not self._initialised or self._lib is None:
                return
            self._initialised = False
            try:
                self._lib.nvmlShutdown()
            except NvmlError as exc:
                log.debug("NVML shutdown: %s", exc)


async def call_detached(fn: Callable[[], T], seconds: float) -> T | None:
    """Run `fn` on a daemon thread and wait up to `seconds`; None when it did not
    finish. For NVML calls at shutdown: a wedged driver blocks every caller, and a call stuck
    in a pooled (non-daemon) thread would hold the process at exit."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(), None)
        except BaseException as exc:  # handed to the waiting coroutine
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed while the call hung
            loop.call_soon_threadsafe(_settle, done, *outcome)

    threading.Thread(target=work, name="kvscope-nvml-release", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(done), seconds)
    except TimeoutError:
        log.warning("NVML did not answer within %.0fs at shutdown; leaving it", seconds)
        return None


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class HangGuard:
    """Blocking NVML reads on one daemon worker thread, each waited for up to a deadline.

    A wedged driver blocks every NVML caller, for good. A tier whose read sits in the driver
    would otherwise never be polled again (its pool stays busy), and what only it exports (for
    the GPU collector: kvscope_gpu_up) would go stale and vanish, so an alert on it could not
    fire. Behind this guard the poll itself returns at the deadline and can say "not answering"
    while the read stays stuck (`stuck`); the worker takes new reads once it returns.
    """

    def __init__(self, name: str) -> None:
        self._name = f"kvscope-{name}"
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._inflight: asyncio.Future[Any] | None = None

    @property
    def stuck(self) -> bool:
        """A read started earlier has still not returned."""
        return self._inflight is not None and not self._inflight.done()

    def _work(self) -> None:
        while True:
            self._queue.get()()

    async def run(self, fn: Callable[[], T], deadline: float) -> T:
        """`fn`'s result; TimeoutError when it takes longer than `deadline` (the read goes on
        in the background, and `stuck` says so until it returns)."""
        if self.stuck:
            raise RuntimeError("a previous read is still running")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        # A read abandoned at its deadline must not log "exception never retrieved" later.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())

        def call() -> None:
            try:
                outcome: tuple[Any, BaseException | None] = (fn(), None)
            except BaseException as exc:  # handed to the waiting coroutine
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed while the read hung
                loop.call_soon_threadsafe(_settle, done, *outcome)

        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        self._inflight = done
        self._queue.put(call)
        return await asyncio.wait_for(asyncio.shield(done), deadline)
