"""Scrape benchmark: kvscope vs a naive per-scrape NVML exporter vs a bare HTTP floor.

Each server runs in its own process on 127.0.0.1. The script measures /metrics latency (p50/p99)
at 1 and 32 concurrent scrapers, each server's RSS, and its idle CPU at kvscope's default cadence.
On a shared 2-core machine the client's own cost dominates absolute figures: judge by ratios.

    python3 bench/scrape_bench.py            # simulated 8 x H100 node, modelled NVML latency
    python3 bench/scrape_bench.py --real     # this machine's GPUs through real NVML

Prints a markdown table (and writes it to --out if given).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=f"{REPO / 'exporters'}{os.pathsep}"
                   f"{os.environ.get('PYTHONPATH', '')}")
        self.proc = subprocess.Popen(self.argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def latencies(url: str, concurrency: int, per_worker: int) -> list[float]:
    out: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for _ in range(per_worker):
                start = time.perf_counter()
                async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                    await resp.read()
                out.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def idle_cpu(proc: psutil.Process, seconds: float) -> float:
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / seconds


def kvscope_argv(real: bool, port: int, only_gpu: bool) -> list[str]:
    argv = [sys.executable, "-m", "kvscope.cli", "serve" if real else "demo",
            "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "error"]
    if not real:
        argv += ["--scenario", "healthy"]
    if only_gpu:
        argv += [f"--no-collector.{c}" for c in ("nvlink", "topology", "rdma", "engines")
                 if c in _registered()]
    return argv


def _registered() -> set[str]:
    sys.path.insert(0, str(REPO / "exporters"))
    from kvscope.collectors.registry import CONFIGURABLE

    return set(CONFIGURABLE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use this machine's GPUs")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU sampling")
    parser.add_argument("--requests", type=int, default=300, help="scrapes at concurrency 1")
    parser.add_argument("--per-worker", type=int, default=30, help="scrapes per worker at 32")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    servers = [
        Server("kvscope (gpu collector)", kvscope_argv(args.real, p := free_port(), True), p),
        Server("kvscope (all collectors)", kvscope_argv(args.real, p := free_port(), False), p),
        Server("naive per-scrape NVML", [sys.executable, str(REPO / "bench/naive_exporter.py"),
                                         str(p := free_port())] + ([] if args.real else ["--sim"]),
               p),
    ]
    body_file = Path(tempfile.mkstemp(suffix=".prom")[1])
    rows = []
    try:
        for s in servers:
            s.start()
        with urllib.request.urlopen(servers[0].url) as resp:
            body_file.write_bytes(resp.read())
        floor = Server("floor: bare aiohttp, same bytes",
                       [sys.executable, str(REPO / "bench/floor_server.py"),
                        str(p := free_port()), str(body_file)], p)
        floor.start()
        servers.append(floor)
        time.sleep(6)  # past the first fast and event polls
        procs = {s.name: psutil.Process(s.proc.pid) for s in servers if s.proc}
        # Idle CPU of all servers sampled together, nobody scraping.
        before = {n: p.cpu_times() for n, p in procs.items()}
        time.sleep(args.idle)
        cpu = {n: 100.0 * ((p.cpu_times().user - before[n].user) +
                           (p.cpu_times().system - before[n].system)) / args.idle
               for n, p in procs.items()}
        for s in servers:
            # The others are paused meanwhile: their own pollers and simulators would otherwise
            # share the two cores with the server under test and the client.
            others = [p for n, p in procs.items() if n != s.name]
            for other in others:
                other.suspend()
            try:
                one = asyncio.run(latencies(s.url, 1, args.requests))
                many = asyncio.run(latencies(s.url, 32, args.per_worker))
            finally:
                for other in others:
                    other.resume()
            rss = procs[s.name].memory_info().rss / 2**20
            uss = procs[s.name].memory_full_info().uss / 2**20
            size = len(urllib.request.urlopen(s.url).read())
            rows.append((s.name, pct(one, .5), pct(one, .99), pct(many, .5), pct(many, .99),
                         rss, uss, cpu[s.name], size))
    finally:
        for s in servers:
            s.stop()
        body_file.unlink(missing_ok=True)

    floor_p99 = rows[-1][4]
    naive_p99 = rows[2][4]
    mode = "real GPUs (nvidia-smi -L: see machine)" if args.real else \
        "simulated 8 x H100, modelled NVML latency"
    lines = [f"Mode: {mode}; host: {os.uname().nodename}, {os.cpu_count()} CPUs; "
             f"{args.requests} scrapes at concurrency 1, 32 x {args.per_worker} at 32; idle CPU "
             f"over {args.idle:.0f} s at default cadence.", "",
             "| server | p50 @1 (ms) | p99 @1 (ms) | p50 @32 (ms) | p99 @32 (ms) | p99 @32 / floor"
             " | naive p99 @32 / this | RSS (MiB) | USS (MiB) | idle CPU (% of a core) |"
             " body (bytes) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p50_1, p99_1, p50_32, p99_32, rss, uss, idle, size in rows:
        lines.append(f"| {name} | {p50_1:.2f} | {p99_1:.2f} | {p50_32:.2f} | {p99_32:.2f} | "
                     f"{p99_32 / floor_p99:.2f}x | {naive_p99 / p99_32:.1f}x | {rss:.1f} | "
                     f"{uss:.1f} | {idle:.2f} | {size} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")



if __name__ == "__main__":
    main()
