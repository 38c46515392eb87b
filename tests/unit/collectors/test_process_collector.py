"""The `self` collector: the agent's own RSS, CPU seconds and open fds, read off the event loop."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from kvscope.collectors.base import Tier
from kvscope.collectors.process import ProcessCollector
from kvscope.runtime import BlockingPool


def _rss_bytes() -> int:
    status = Path(f"/proc/{os.getpid()}/status").read_text().splitlines()
    return next(int(ln.split()[1]) for ln in status if ln.startswith("VmRSS:")) * 1024


async def _values(collector: ProcessCollector, pool: BlockingPool) -> dict[str, float]:
    result = await collector.poll(Tier.FAST, pool)
    assert result.errors == ()
    return {s.name: s.value for f in result.families for s in f.samples}


async def test_reports_this_process_from_the_pool_thread() -> None:
    collector = ProcessCollector()
    assert set(collector.schedules()) == {Tier.FAST}
    pool = BlockingPool("self-fast")
    readers: list[str] = []
    original = collector._reader.collect

    def collect():  # type: ignore[no-untyped-def]
        readers.append(threading.current_thread().name)
        return original()

    collector._reader.collect = collect  # type: ignore[method-assign]
    try:
        before = await _values(collector, pool)
        sum(i * i for i in range(2_000_000))  # spend some CPU between the two polls
        after = await _values(collector, pool)
    finally:
        pool.shutdown()
    assert readers == ["kvscope-self-fast"] * 2  # /proc is read in the pool, not on the loop
    assert 0.5 < after["process_resident_memory_bytes"] / _rss_bytes() < 2
    assert after["process_cpu_seconds_total"] > before["process_cpu_seconds_total"]
    assert after["process_open_fds"] >= 3 and after["process_max_fds"] >= after["process_open_fds"]
