"""Soak: the agent on the simulated node, scraped 50 times a second while faults come and go.

    python3 bench/soak.py --minutes 10            # the table in docs/benchmarks.md
    python3 bench/soak.py --seconds 30 --window 10  # the short form tests/integration runs

The agent runs as in the benchmarks (bench/sim_agent.py, the simulator's services in their own
process) with every default collector on, and bench/soak_faults.py toggles a fault every
--fault-period seconds: an NVML call failing, one hanging past the tier timeout, an XID 79
with the GPU lost, the engines' KV cache full, an RDMA port down; each cleared after one period.
Per window (a minute by default): RSS, open fds and threads of the agent at the window's end,
scrapes, failed scrapes, /metrics p50/p99/max. Then the growth from the first window to the
last. Writes the table (and --json) and exits 1 if any scrape failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scrape_bench import pct, sim_kvscope, wait_past_first_polls
from simnode import NodeShape


@dataclass
class Window:
    end_s: float
    scrapes: int
    failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    rss_mib: float
    fds: int
    threads: int


async def scrape_windows(url: str, proc: psutil.Process, rate: float, seconds: float,
                         window: float) -> tuple[list[Window], list[str]]:
    """Scrape `url` at `rate` per second; close a window every `window` seconds."""
    windows: list[Window] = []
    failures: list[str] = []
    latencies: list[float] = []
    failed = 0
    started = time.monotonic()
    next_at, window_end = started, started + window
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while (now := time.monotonic()) < started + seconds:
            t0 = time.perf_counter()
            try:
                async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                    body = await resp.read()
                    if resp.status != 200 or not body.endswith(b"\n"):
                        raise ValueError(f"HTTP {resp.status}, {len(body)} bytes")
                latencies.append(time.perf_counter() - t0)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failed += 1
                failures.append(f"{now - started:.1f}s: {type(exc).__name__}: {exc}")
            if time.monotonic() >= window_end:
                windows.append(close_window(window_end - started, latencies, failed, proc))
                latencies, failed, window_end = [], 0, window_end + window
            next_at += 1.0 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if latencies or failed:
        windows.append(close_window(time.monotonic() - started, latencies, failed, proc))
    return windows, failures


def close_window(end: float, latencies: list[float], failed: int,
                 proc: psutil.Process) -> Window:
    values = latencies or [0.0]
    return Window(round(end, 1), len(latencies) + failed, failed, pct(values, .5),
                  pct(values, .99), max(values) * 1000, proc.memory_info().rss / 2**20,
                  proc.num_fds(), proc.num_threads())


def growth(windows: list[Window]) -> dict[str, float]:
    first, last = windows[0], windows[-1]
    return {"rss_mib": last.rss_mib - first.rss_mib, "fds": last.fds - first.fds,
            "threads": last.threads - first.threads}


def markdown(windows: list[Window], grown: dict[str, float], errors: dict[str, float],
             args: argparse.Namespace) -> str:
    lines = [f"Soak: {args.rate:g} scrapes/s for {args.seconds:.0f} s, a fault toggled every "
             f"{args.fault_period:g} s, windows of {args.window:g} s.", "",
             "| window end (s) | scrapes | failed | p50 (ms) | p99 (ms) | max (ms) | RSS (MiB) |"
             " fds | threads |", "|---|---|---|---|---|---|---|---|---|"]
    for w in windows:
        lines.append(f"| {w.end_s:.0f} | {w.scrapes} | {w.failed} | {w.p50_ms:.2f} | "
                     f"{w.p99_ms:.2f} | {w.max_ms:.1f} | {w.rss_mib:.1f} | {w.fds} | "
                     f"{w.threads} |")
    lines += ["", f"Growth, first window to last: RSS {grown['rss_mib']:+.1f} MiB, fds "
              f"{grown['fds']:+.0f}, threads {grown['threads']:+.0f}."]
    if errors:
        lines += ["", "The faults as the agent counted them (kvscope_collector_errors_total): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sorted(errors.items())) + "."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    server = sim_kvscope(NodeShape(fault_delay=0.0), faults=args.fault_period)
    try:
        server.start()
        wait_past_first_polls([server], 6.0)
        windows, failures = asyncio.run(scrape_windows(server.url, server.process, args.rate,
                                                       args.seconds, args.window))
        alive = server.proc is not None and server.proc.poll() is None
        errors = collector_errors(server.url) if alive else {}
    finally:
        server.stop()
    return {"windows": [asdict(w) for w in windows], "growth": growth(windows),
            "failures": failures[:50], "failed": sum(w.failed for w in windows),
            "agent_alive": alive, "collector_errors": errors}


def collector_errors(url: str) -> dict[str, float]:
    """`collector/reason` -> count from the agent's own errors counter: the faults struck."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kvscope_collector_errors_total{"):
            labels, _, value = line.rpartition(" ")
            fields = dict(part.split("=", 1) for part in labels[labels.index("{") + 1:-1]
                          .split(","))
            key = f"{fields['collector'].strip(chr(34))}/{fields['reason'].strip(chr(34))}"
            out[key] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, help="length (overrides --seconds)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=50.0, help="scrapes per second")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per table row")
    parser.add_argument("--fault-period", type=float, default=15.0,
                        help="seconds each fault (and each quiet spell) lasts")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    if args.minutes:
        args.seconds = args.minutes * 60
    result = run(args)
    windows = [Window(**w) for w in result["windows"]]
    table = markdown(windows, result["growth"], result["collector_errors"], args)
    print(table)
    for failure in result["failures"]:
        print(f"failed scrape: {failure}", file=sys.stderr)
    if args.out:
        args.out.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0 if result["failed"] == 0 and result["agent_alive"] else 1)


if __name__ == "__main__":
    main()
