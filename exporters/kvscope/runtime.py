"""Scheduling, snapshots and the cached exposition.

Each enabled collector polls on one or more cadence tiers. Every poll yields an immutable
`Snapshot`; the runtime keeps the newest one per (collector, tier) and renders the exposition
lazily, once per change. A scrape therefore never touches NVML, sysfs or the network: it returns
bytes that were rendered from snapshots taken by the pollers.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from prometheus_client.core import Metric

from kvscope import __version__
from kvscope.collectors.base import (
    Collector,
    CollectorError,
    NoData,
    PollResult,
    Schedule,
    Tier,
)
from kvscope.render.exposition import merge, render_openmetrics, render_text
from kvscope.render.families import counter, gauge, info

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas() -> bool:
    """One malloc arena for the whole process, as MALLOC_ARENA_MAX=1 would give.

    glibc gives each thread that allocates its own arena, and the agent has a reader thread
    per (collector, tier): on the simulated node that fragmentation cost 1.9 MiB of RSS and USS
    (docs/benchmarks.md). The threads hold the interpreter lock while they allocate anyway, so
    one arena costs no parallelism. Called before the reader threads start; returns False where
    the C library is not glibc (musl has no arenas to limit)."""
    import ctypes

    try:  # the process's own symbols, the C library's among them
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError, TypeError):
        return False


class BlockingPool:
    """One daemon worker thread per (collector, tier) for blocking reads.

    A read that hangs past its timeout keeps its thread; the runtime then refuses to start the
    next poll of that tier (counted as `busy`) instead of queueing work behind the hung read.
    The thread is a daemon so that a wedged driver call can never hold the agent at shutdown
    (ThreadPoolExecutor joins its threads at interpreter exit).
    """

    def __init__(self, name: str) -> None:
        self._name = f"kvscope-{name}"
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending: set[Future[Any]] = set()

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fut, call = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(call())
            except BaseException as exc:  # handed to the awaiting coroutine
                fut.set_exception(exc)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        fut: Future[T] = Future()
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        self._queue.put((fut, functools.partial(fn, *args, **kwargs)))
        return await asyncio.wrap_future(fut)

    def shutdown(self) -> None:
        self._queue.put(None)


@dataclass(frozen=True)
class Snapshot:
    collector: str
    tier: Tier
    families: tuple[Metric, ...]
    timestamp: float  # wall clock at poll end
    duration: float
    errors: tuple[str, ...] = ()  # reasons of the sources that failed; () when all succeeded
    complete: bool = True  # False when the poll read nothing (raised, timed out, busy)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error(self) -> str | None:
        """The first failure's reason, or None when the poll succeeded."""
        return self.errors[0] if self.errors else None


@dataclass
class _TierState:
    schedule: Schedule
    pool: BlockingPool
    last: Snapshot | None = None  # newest poll, good or bad
    served: Snapshot | None = None  # newest poll that read something (served until stale)
    last_good: Snapshot | None = None  # newest poll in which every source succeeded


def _failed(reason: str, message: str) -> PollResult:
    return PollResult((), (CollectorError(reason, message),))


class _Rendered:
    """Bodies for one state of the snapshots, each format rendered on first request only."""

    def __init__(self, key: tuple[int, frozenset[tuple[str, Tier]]],
                 families: list[Metric]) -> None:
        self.key = key
        self._families = families
        self._bodies: dict[tuple[bool, bool], bytes] = {}
        self.renders = 0

    def prepare(self, wanted: set[tuple[bool, bool]]) -> _Rendered:
        """Render every wanted (openmetrics, gzip) body now; runs in a worker thread."""
        for openmetrics, gzip_ok in sorted(wanted):
            self.body(openmetrics, gzip_ok)
        return self

    def body(self, openmetrics: bool, gzip_ok: bool) -> bytes:
        cached = self._bodies.get((openmetrics, gzip_ok))
        if cached is not None:
            return cached
        raw = self._bodies.get((openmetrics, False))
        if raw is None:
            render = render_openmetrics if openmetrics else render_text
            raw = self._bodies[(openmetrics, False)] = render(self._families)
            self.renders += 1
        if gzip_ok:
            self._bodies[(openmetrics, True)] = gzip.compress(raw, compresslevel=5)
            return self._bodies[(openmetrics, True)]
        return raw


# Pauses between failing polls of an event tier: doubling from the first to the last.
EVENT_RETRY_MIN = 0.5
EVENT_RETRY_MAX = 30.0


class Runtime:
    """Owns the collectors' poll loops, their snapshots and the rendered exposition."""

    def __init__(
        self,
        collectors: Sequence[Collector],
        *,
        staleness_factor: float = 3.0,
        min_staleness: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.collectors = list(collectors)
        self._clock = clock
        self._staleness_factor = staleness_factor
        self._min_staleness = min_staleness
        self._tiers: dict[tuple[str, Tier], _TierState] = {}
        for c in self.collectors:
            for tier, sched in c.schedules().items():
                self._tiers[(c.name, tier)] = _TierState(sched, BlockingPool(f"{c.name}-{tier}"))
        self._errors: Counter[tuple[str, str]] = Counter()
        # (computed at, valid until, stale tiers): see _stale_keys
        self._stale_cache: tuple[float, float, frozenset[tuple[str, Tier]]] | None = None
        self._version = 0
        self._rendered: _Rendered | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.render_count = 0
        # Once the poll loops run (start() sets it), bodies are rendered after each change, in a
        # thread, and a scrape serves the newest finished render: it never waits for rendering.
        self.background_render = False
        self._render_task: asyncio.Task[None] | None = None
        self._wanted: set[tuple[bool, bool]] = {(False, False)}
        self.render_delay = 0.05  # coalesces tiers finishing together into one render
        self._stopping = False

    # ---- polling -------------------------------------------------------------------------

    async def poll_once(self, collector: Collector, tier: Tier) -> Snapshot:
        state = self._tiers[(collector.name, tier)]
        started = time.monotonic()
        previous = state.last.error if state.last is not None else None
        result, complete, logged = await self._poll_result(collector, tier, state)
        if result.errors and not result.families:
            complete = False  # failed and read nothing: like a raise, keep the last families
        errors = tuple(e.reason for e in result.errors)
        if not logged:
            for exc in result.errors:
                self._log_failure(previous, exc.reason, "collector %s/%s: %s", collector.name,
                                  tier, exc)
        if not errors and previous is not None:
            log.info("collector %s/%s: recovered (was: %s)", collector.name, tier, previous)
        snap = Snapshot(collector.name, tier, tuple(result.families), self._clock(),
                        time.monotonic() - started, errors, complete)
        self._store(state, snap)
        return snap

    async def _poll_result(self, collector: Collector, tier: Tier,
                           state: _TierState) -> tuple[PollResult, bool, bool]:
        """(result, complete, logged): complete is False when the poll read nothing at all
        (busy, timed out, raised), so the tier's previous families stay served until stale;
        logged is True when the failure was already logged with its traceback."""
        if state.pool.busy:
            return _failed("busy", "previous read still running; poll skipped"), False, False
        try:
            result = await asyncio.wait_for(collector.poll(tier, state.pool),
                                            state.schedule.timeout)
        except TimeoutError:
            message = f"poll exceeded {state.schedule.timeout:.1f}s"
            return _failed("timeout", message), False, False
        except CollectorError as exc:
            return PollResult((), (exc,)), False, False
        except NoData as exc:
            log.debug("collector %s/%s: no data: %s", collector.name, tier, exc)
            return PollResult(), True, False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken collector must never break the agent
            log.exception("collector %s/%s failed: %s", collector.name, tier, exc)
            return _failed(type(exc).__name__, str(exc)), False, True
        return result, True, False

    @staticmethod
    def _log_failure(previous: str | None, reason: str, message: str, *args: object) -> None:
        # A source that stays down fails every poll: say so when the reason first appears or
        # changes, then at debug level, so the log is not one line per poll for days (the
        # counter kvscope_collector_errors_total still counts every one).
        level = logging.DEBUG if previous == reason else logging.WARNING
        log.log(level, message, *args)

    def _store(self, state: _TierState, snap: Snapshot) -> None:
        previous = state.served
        self._stale_cache = None
        state.last = snap
        if snap.complete:
            state.served = snap
        if snap.ok:
            state.last_good = snap
        for reason in snap.errors:
            self._errors[(snap.collector, reason)] += 1
        unchanged_event = (snap.tier is Tier.EVENT and snap.ok and previous is not None
                           and list(previous.families) == list(snap.families))
        if not unchanged_event:
            self._version += 1
            if self.background_render and self._render_task is None:
                self._render_task = asyncio.create_task(self._render_in_background())

    async def _render_in_background(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.render_delay)
                key = (self._version, self._stale_keys(self._clock()))
                rendered = _Rendered(key, self.families())
                await asyncio.to_thread(rendered.prepare, set(self._wanted))
                if self._rendered is not None:
                    self.render_count += self._rendered.renders
                self._rendered = rendered
                if self._version == key[0]:
                    return  # nothing changed while rendering
        finally:
            self._render_task = None

    async def _tier_loop(self, collector: Collector, tier: Tier) -> None:
        sched = self._tiers[(collector.name, tier)].schedule
        retry = 0.0
        while not self._stopping:
            started = time.monotonic()
            snap = await self.poll_once(collector, tier)
            elapsed = time.monotonic() - started
            # Fixed-rate schedule. An event tier (interval 0) blocks inside its poll, so one that
            # fails returns at once (its read still hung: "busy"; the library gone): without a
            # pause it would poll as fast as the loop runs, a core and a counter in the millions.
            if sched.interval == 0 and snap.errors:
                retry = min(EVENT_RETRY_MAX, max(EVENT_RETRY_MIN, retry * 2))
            else:
                retry = 0.0
            await asyncio.sleep(max(retry, sched.interval - elapsed))

    async def poll_all_once(self) -> None:
        """One poll of every tier: static first, then the rest concurrently (used by `collect`)."""
        await self._poll_tiers({Tier.STATIC})
        await self._poll_tiers({Tier.FAST, Tier.SLOW, Tier.EVENT})

    async def _poll_tiers(self, tiers: set[Tier]) -> None:
        jobs = [self.poll_once(c, t) for c in self.collectors for t in c.schedules() if t in tiers]
        await asyncio.gather(*jobs)

    async def start(self) -> None:
        """Take the static snapshots, then start every tier's loop in the background."""
        self.background_render = True
        limit_malloc_arenas()
        await self._poll_tiers({Tier.STATIC})
        for c in self.collectors:
            for tier in c.schedules():
                if tier is Tier.STATIC:
                    # The first static poll already ran; the loop sleeps before the next one.
                    task = asyncio.create_task(self._delayed_loop(c, tier))
                else:
                    task = asyncio.create_task(self._tier_loop(c, tier))
                self._tasks.append(task)

    async def _delayed_loop(self, collector: Collector, tier: Tier) -> None:
        await asyncio.sleep(self._tiers[(collector.name, tier)].schedule.interval)
        await self._tier_loop(collector, tier)

    async def stop(self) -> None:
        self._stopping = True
        self.background_render = False
        if self._render_task is not None:
            self._tasks.append(self._render_task)
        pending = {t for t in self._tasks if not t.done()}
        # On Python 3.11 asyncio.wait_for can swallow a cancellation that races with the poll it
        # wraps finishing; the loop then goes on. So: cancel, wait a bounded time, cancel again
        # (the _stopping flag ends any loop that saw its cancellation eaten).
        for _ in range(3):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=2.0)
        if pending:
            log.warning("%d poller task(s) did not stop; leaving them", len(pending))
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("poller task ended with %r", task.exception())
        self._tasks.clear()
        for c in self.collectors:
            started = time.monotonic()
            try:
                await asyncio.wait_for(c.close(), 3)
            except Exception:  # shutdown continues whatever one collector does
                log.exception("collector %s: close failed", c.name)
            log.debug("collector %s closed in %.2fs", c.name, time.monotonic() - started)
        for state in self._tiers.values():
            state.pool.shutdown()

    # ---- health --------------------------------------------------------------------------

    def _staleness_bound(self, sched: Schedule) -> float:
        if sched.interval <= 0:  # event tiers: the poll itself is the wait
            return max(self._min_staleness, self._staleness_factor * sched.timeout)
        return max(self._min_staleness, self._staleness_factor * sched.interval)

    def _stale_keys(self, now: float) -> frozenset[tuple[str, Tier]]:
        """The tiers whose served snapshot is too old to serve.

        Every scrape asks, so the answer is kept until the next snapshot or until the next
        fresh tier's deadline passes (14 tiers re-checked on each scrape cost ~20 us of the
        event loop's time per scrape)."""
        cached = self._stale_cache
        if cached is not None and cached[0] <= now < cached[1]:
            return cached[2]
        stale = set()
        fresh_until = float("inf")
        for key, state in self._tiers.items():
            served = state.served
            if served is None:
                continue
            bound = self._staleness_bound(state.schedule)
            if now - served.timestamp > bound:
                stale.add(key)
            else:
                fresh_until = min(fresh_until, served.timestamp + bound)
        result = frozenset(stale)
        self._stale_cache = (now, fresh_until, result)
        return result

    def collector_health(self) -> dict[str, dict[str, object]]:
        """Per collector: up, first snapshot seen, last error; for /readyz and the index page."""
        now = self._clock()
        stale = self._stale_keys(now)
        out: dict[str, dict[str, object]] = {}
        for c in self.collectors:
            states = [(t, self._tiers[(c.name, t)]) for t in c.schedules()]
            seen = all(s.last is not None for _, s in states)
            errors = [f"{t}: {reason}" for t, s in states if s.last for reason in s.last.errors]
            errors += [f"{t}: stale" for t, _ in states if (c.name, t) in stale]
            out[c.name] = {"ready": seen, "up": seen and not errors, "errors": errors}
        return out

    @property
    def ready(self) -> bool:
        return all(h["ready"] for h in self.collector_health().values())

    def _health_families(self, stale: frozenset[tuple[str, Tier]]) -> list[Metric]:
        up = gauge("kvscope_collector_up",
                   "1 when every source of the tier's last poll succeeded and the tier is fresh; "
                   "0 when a source failed (the errors counter says why).")
        duration = gauge("kvscope_collector_duration_seconds",
                         "Wall time of the collector's last poll, per cadence tier.")
        last_ok = gauge("kvscope_collector_last_success_timestamp_seconds",
                        "Unix time of the collector's last successful poll, per cadence tier.")
        errors = counter("kvscope_collector_errors_total",
                         "Failed polls and failed sources within a poll, by reason (timeout, "
                         "busy, exception class, source error).")
        for c in self.collectors:
            tiers = [(t, self._tiers[(c.name, t)]) for t in c.schedules()]
            if any(s.last is None for _, s in tiers):
                continue  # no first snapshot yet: not ready, nothing to claim
            for t, s in tiers:
                healthy = s.last is not None and s.last.ok and (c.name, t) not in stale
                up.add({"collector": c.name, "tier": t}, 1 if healthy else 0)
                if s.last is not None and t is not Tier.EVENT:
                    duration.add({"collector": c.name, "tier": t}, s.last.duration)
                if s.last_good is not None:
                    last_ok.add({"collector": c.name, "tier": t}, s.last_good.timestamp)
        for (name, reason), n in sorted(self._errors.items()):
            errors.add({"collector": name, "reason": reason}, n)
        build = info("kvscope_build_info", "kvscope version; value is always 1.")
        build.add({"version": __version__}, 1)
        return [f.metric for f in (up, duration, last_ok, errors, build) if len(f)]

    # ---- exposition ----------------------------------------------------------------------

    def families(self) -> list[Metric]:
        stale = self._stale_keys(self._clock())
        fams: list[Metric] = []
        for key, state in self._tiers.items():
            if state.served is not None and key not in stale:
                fams.extend(state.served.families)
        return merge(fams + self._health_families(stale))

    def exposition(self, *, openmetrics: bool = False, gzip_ok: bool = False) -> bytes:
        """Bytes for one scrape, rendered at most once per change of snapshots or staleness."""
        self._wanted.add((openmetrics, gzip_ok))
        stale = self._stale_keys(self._clock())
        current = self._rendered
        outdated = current is None or current.key[1] != stale or (
            current.key[0] != self._version and not self.background_render)
        if outdated:
            if current is not None:
                self.render_count += current.renders
            current = self._rendered = _Rendered((self._version, stale), self.families())
        assert current is not None
        return current.body(openmetrics, gzip_ok)

    @property
    def renders(self) -> int:
        """How many times an exposition body was rendered (for tests and benchmarks)."""
        return self.render_count + (self._rendered.renders if self._rendered else 0)
