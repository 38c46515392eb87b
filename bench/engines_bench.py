"""Benchmark: one engine collection cycle over 16 targets of ~100 KB each, and /metrics latency.

    PYTHONPATH=exporters python3 bench/engines_bench.py [--targets 16] [--cycles 40]

The 16 fake engines run in a child process (their rendering must not count as agent CPU) and
serve a vLLM exposition widened to ~100 KB with data-parallel ranks, as a vLLM with DP=8 and
LMCache prints it. The agent side is the production path: EnginesCollector inside the Runtime,
served by kvscope.web.server.build_app. A second child process scrapes /metrics at a fixed rate,
first while the collector is idle, then while cycles run back to back, and reports latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exporters"))


def widened_vllm(target_bytes: int = 100_000) -> bytes:
    """The sim's vLLM V1 + LMCache exposition with DP ranks added until it is ~target_bytes."""
    from kvscope.sim.engines import Load, SimEngine, render

    engine = SimEngine("bench", "vllm", model="meta-llama/Llama-3.1-70B-Instruct",
                       features=frozenset({"lmcache", "nixl"}), load=Load())
    lines = render(engine, 600.0).splitlines()
    ranks = 1
    while True:
        out = []
        for line in lines:
            if 'engine="0"' in line and not line.startswith("#"):
                out += [line.replace('engine="0"', f'engine="{r}"') for r in range(ranks)]
            else:
                out.append(line)
        body = ("\n".join(out) + "\n").encode()
        if len(body) >= target_bytes:
            return body
        ranks += 1


def serve_engines(count: int) -> None:
    """Child process: `count` HTTP servers on 127.0.0.1 serving the same ~100 KB body."""
    from aiohttp import web

    body = widened_vllm()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    async def main() -> None:
        ports = []
        for _ in range(count):
            app = web.Application()
            app.router.add_get("/metrics", metrics)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.append(runner.addresses[0][1])
        print(json.dumps({"ports": ports, "bytes": len(body)}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def scrape_metrics(url: str, seconds: float, rate: float) -> None:
    """Child process: GET url at `rate` per second for `seconds`; print latencies (ms)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    latencies = []
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        started = time.perf_counter()
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        resp.read()
        latencies.append((time.perf_counter() - started) * 1000)
        next_at += 1 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    print(json.dumps(latencies), flush=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def agent(ports: list[int], cycles: int, seconds: float) -> dict[str, Any]:
    from aiohttp import web

    from kvscope.collectors.base import Tier
    from kvscope.collectors.engines import EnginesCollector
    from kvscope.config import load
    from kvscope.context import NodeContext
    from kvscope.runtime import Runtime
    from kvscope.web.server import build_app

    config = load(None, {"collectors.engines.discovery": False,
                         "collectors.engines.targets": [
                             {"url": f"http://127.0.0.1:{p}/metrics"} for p in ports]})
    collector = EnginesCollector(NodeContext(config=config))
    runtime = Runtime([collector])
    runtime.background_render = True  # as in a running agent (Runtime.start sets it)
    runner = web.AppRunner(build_app(runtime), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"

    await runtime.poll_once(collector, Tier.FAST)  # connections opened, state primed
    import gc

    gc.freeze()  # as the agent does once started (app._serve)
    cpu, wall = [], []
    for _ in range(cycles):
        c0, w0 = time.process_time(), time.perf_counter()
        snap = await runtime.poll_once(collector, Tier.FAST)
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
        assert snap.ok, snap.error
    series = sum(len(f.samples) for f in snap.families)
    render = []
    for _ in range(10):
        await runtime.poll_once(collector, Tier.FAST)
        w0 = time.perf_counter()
        runtime.exposition()
        render.append((time.perf_counter() - w0) * 1000)

    async def scrape_phase(mode: str) -> list[float]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--scrape", url, "--seconds", str(seconds),
            stdout=asyncio.subprocess.PIPE)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            if mode == "idle":
                await asyncio.sleep(0.05)
                continue
            started = time.monotonic()
            await runtime.poll_once(collector, Tier.FAST)
            if mode == "cadence":  # the fast tier's loop, at 1 s instead of the default 5 s
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        out, _ = await proc.communicate()
        return [float(x) for x in json.loads(out)]

    idle = await scrape_phase("idle")
    cadence = await scrape_phase("cadence")
    busy = await scrape_phase("busy")
    await runtime.stop()
    await runner.cleanup()
    return {"cpu": cpu, "wall": wall, "idle": idle, "cadence": cadence, "busy": busy,
            "series": series, "render": render}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--serve-engines", type=int)
    ap.add_argument("--scrape")
    args = ap.parse_args()
    if args.serve_engines:
        serve_engines(args.serve_engines)
        return
    if args.scrape:
        scrape_metrics(args.scrape, args.seconds, rate=50.0)
        return
    child = subprocess.Popen([sys.executable, __file__, "--serve-engines", str(args.targets)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        r = asyncio.run(agent(info["ports"], args.cycles, args.seconds))
    finally:
        child.terminate()
        child.wait()
    print(f"targets: {args.targets} x {info['bytes'] / 1000:.0f} KB exposition; cycles: "
          f"{args.cycles}; normalized samples per cycle: {r['series']}")
    print(f"{'measure':<42} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    rows = [("collection cycle CPU (ms)", r["cpu"]), ("collection cycle wall (ms)", r["wall"]),
            ("render after a new snapshot (ms)", r["render"]),
            ("/metrics latency, collector idle (ms)", r["idle"]),
            ("/metrics latency, a cycle every 1 s (ms)", r["cadence"]),
            ("/metrics latency, cycles back to back (ms)", r["busy"])]
    for name, values in rows:
        print(f"{name:<42} {statistics.median(values):8.2f} {_pct(values, 0.95):8.2f} "
              f"{_pct(values, 0.99):8.2f} {max(values):8.2f}")


if __name__ == "__main__":
    main()
