"""Scrape benchmark: kvscope side by side with its peers, and how its cost grows with the node.

    python3 bench/scrape_bench.py            # the simulated 8-GPU node
    python3 bench/scrape_bench.py --real     # this machine's GPUs through real NVML

One process tree, every server its own process on 127.0.0.1:
- kvscope with every default collector. On the simulated node the simulator's services (fake
  engines, kubelet, Kubernetes API, the RDMA sysfs tree) run in a separate process
  (bench/sim_services.py), so the agent's CPU and memory are its own;
- nvitop-exporter 1.7.2 (`--interval 5`, kvscope's fast-tier cadence), with --real only: it
  needs NVML;
- the naive per-scrape exporter (bench/naive_exporter.py): NVML calls inside collect();
- the floor (bench/floor_server.py): bare aiohttp serving kvscope's exposition bytes.

Measured: /metrics p50/p99/max at 1, 8 and 32 concurrent scrapers (one server scraped at a
time, the others idle; rounds alternate between servers so drift hits all of them), idle CPU
of all servers together at one cadence (nobody scraping), CPU at a steady scrape rate, RSS and
USS, series count and exposition size; then, on the simulated node, kvscope alone at 1-16
GPUs, 1-32 engine targets and 1-8 RDMA devices.

Writes results.md, results.json and results.png into --out-dir (default
docs/benchmarks/<host>-<date>/). On a small shared machine the load generator's own cost
dominates absolute latencies: judge by the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from simnode import NodeShape  # noqa: E402

CONCURRENCY = (1, 8, 32)
NVITOP_INTERVAL = 5.0  # kvscope's fast tier; nvitop-exporter runs at the same cadence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO / "exporters"), str(BENCH),
                                       os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path)


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    slow: bool = False  # answers in tens of milliseconds: fewer scrapes per latency phase
    proc: subprocess.Popen[bytes] | None = None
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def start(self, timeout: float = 90.0) -> None:
        self.proc = subprocess.Popen(self.argv, env=child_env(), cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        for proc in [self.proc, *self.helpers]:
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_sim_services(shape: NodeShape, faults: float = 0.0,
                       ) -> tuple[subprocess.Popen[bytes], str]:
    """The simulator's services in their own process; returns it and its config overrides."""
    proc = subprocess.Popen([sys.executable, str(BENCH / "sim_services.py"), shape.to_json(),
                             f"--faults={faults:g}"], env=child_env(), cwd=REPO,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line:
        raise SystemExit("the simulator's services did not start")
    return proc, line.strip()


def sim_kvscope(shape: NodeShape, name: str = "kvscope", faults: float = 0.0) -> Server:
    """kvscope on the simulated node; `faults`: toggle bench/soak_faults.py every N seconds."""
    services, overrides = start_sim_services(shape, faults)
    port = free_port()
    server = Server(name, [sys.executable, str(BENCH / "sim_agent.py"), shape.to_json(),
                           overrides, f"127.0.0.1:{port}", f"--faults={faults:g}"], port)
    server.helpers.append(services)
    return server


def real_kvscope() -> Server:
    port = free_port()
    return Server("kvscope", [sys.executable, "-m", "kvscope.cli", "serve",
                              "--web.listen-address", f"127.0.0.1:{port}",
                              "--log.level", "error"], port)


def nvitop_exporter() -> Server:
    port = free_port()
    # prometheus_client renders its registry on every scrape: tens of milliseconds per scrape
    # on an H200 node, so it gets the slow servers' shorter latency phases.
    return Server("nvitop-exporter 1.7.2",
                  [sys.executable, "-m", "nvitop_exporter", "--bind-address", "127.0.0.1",
                   "--port", str(port), "--interval", f"{NVITOP_INTERVAL:g}",
                   "--hostname", "bench"], port, slow=True)


def naive_exporter(real: bool) -> Server:
    port = free_port()
    return Server("naive per-scrape NVML", [sys.executable, str(BENCH / "naive_exporter.py"),
                                            str(port), *([] if real else ["--sim"])],
                  port, slow=True)


def floor_server(body_file: Path) -> Server:
    port = free_port()
    return Server("floor (bare aiohttp, kvscope's bytes)",
                  [sys.executable, str(BENCH / "floor_server.py"), str(port), str(body_file)],
                  port)


# ---- measuring ------------------------------------------------------------------------------

async def scrape_latencies(url: str, concurrency: int, per_worker: int) -> list[float]:
    """Seconds per scrape, `concurrency` keep-alive scrapers each scraping `per_worker` times."""
    out: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for _ in range(per_worker):
                started = time.perf_counter()
                async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"{url}: HTTP {resp.status}")
                out.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def steady_scrapes(url: str, rate: float, seconds: float) -> int:
    """Scrape at a fixed rate (one scraper) for `seconds`; returns how many were made."""
    done = 0
    async with aiohttp.ClientSession() as session:
        next_at = time.monotonic()
        end = next_at + seconds
        while time.monotonic() < end:
            async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
                await resp.read()
            done += 1
            next_at += 1.0 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return done


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def pct(values: list[float], q: float) -> float:
    """Milliseconds at quantile q (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def memory_mib(proc: psutil.Process) -> tuple[float, float]:
    info = proc.memory_full_info()
    return info.rss / 2**20, info.uss / 2**20


def exposition_shape(url: str) -> tuple[int, int]:
    """(series, bytes) of one scrape."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        body: bytes = resp.read()
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return series, len(body)


def wait_past_first_polls(servers: list[Server], seconds: float, settle: float = 30.0) -> None:
    """Sleep `seconds`, then until every server's series count stops changing (the event and
    slow tiers add their series after the first fast poll)."""
    time.sleep(seconds)
    last = [exposition_shape(s.url)[0] for s in servers]
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = [exposition_shape(s.url)[0] for s in servers]
        if now == last:
            return
        last = now


# ---- the comparison -------------------------------------------------------------------------

def latency_phase(servers: list[Server], rounds: int, counts: dict[int, int],
                  slow_counts: dict[int, int]) -> dict[str, dict[int, list[float]]]:
    """Each server in turn, round after round. The others keep running: pausing them (as an
    earlier version did) let kvscope's snapshots go stale while it was stopped and made it
    catch up on every tier at once when resumed, inside the next server's measurement; their
    idle cost is below 1 % of a core."""
    samples: dict[str, dict[int, list[float]]] = {s.name: {c: [] for c in CONCURRENCY}
                                                  for s in servers}
    for _ in range(rounds):
        for s in servers:
            for c in CONCURRENCY:
                total = (slow_counts if s.slow else counts)[c]
                samples[s.name][c] += asyncio.run(scrape_latencies(s.url, c,
                                                                   max(1, total // c)))
    return samples


def compare(args: argparse.Namespace) -> dict[str, Any]:
    if args.real:
        servers = [real_kvscope(), nvitop_exporter(), naive_exporter(True)]
    else:
        servers = [sim_kvscope(NodeShape()), naive_exporter(False)]
    body_file = Path(tempfile.mkstemp(suffix=".prom")[1])
    try:
        for s in list(servers):
            try:
                s.start()
            except SystemExit as exc:  # a peer that cannot start is reported, not fatal
                if s is servers[0]:
                    raise
                print(f"left out: {exc}", file=sys.stderr, flush=True)
                s.stop()
                servers.remove(s)
        print(f"started: {', '.join(s.name for s in servers)}", flush=True)
        wait_past_first_polls(servers, args.warmup)
        with urllib.request.urlopen(servers[0].url) as resp:
            body_file.write_bytes(resp.read())
        servers.append(floor_server(body_file))
        servers[-1].start()
        wait_past_first_polls(servers, 2.0)

        procs = {s.name: s.process for s in servers}
        before = {n: cpu_seconds(p) for n, p in procs.items()}
        time.sleep(args.idle)
        idle = {n: 100.0 * (cpu_seconds(p) - before[n]) / args.idle for n, p in procs.items()}
        print(f"idle CPU measured over {args.idle:.0f} s", flush=True)

        steady: dict[str, float] = {}
        for s in servers:
            start_cpu, started = cpu_seconds(s.process), time.monotonic()
            asyncio.run(steady_scrapes(s.url, args.rate, args.steady))
            steady[s.name] = 100.0 * (cpu_seconds(s.process) - start_cpu) / (
                time.monotonic() - started)
        print(f"steady-rate CPU measured ({args.rate:g}/s for {args.steady:.0f} s each)",
              flush=True)

        counts = {1: args.requests, 8: args.requests * 2, 32: args.requests * 4}
        slow = {c: max(c, n // 10) for c, n in counts.items()}
        samples = latency_phase(servers, args.rounds, counts, slow)
        print("latencies measured", flush=True)

        rows = []
        for s in servers:
            rss, uss = memory_mib(s.process)
            series, size = exposition_shape(s.url)
            lat = {c: {"p50": pct(v, .5), "p99": pct(v, .99), "max": max(v) * 1000,
                       "n": len(v)} for c, v in samples[s.name].items()}
            rows.append({"server": s.name, "latency_ms": lat, "idle_cpu_pct": idle[s.name],
                         "steady_cpu_pct": steady[s.name], "rss_mib": rss, "uss_mib": uss,
                         "series": series, "bytes": size})
        return {"rows": rows, "floor_bytes": body_file.stat().st_size}
    finally:
        for s in servers:
            s.stop()
        body_file.unlink(missing_ok=True)


# ---- kvscope's cost as the node grows ----------------------------------------------------

def sweep_shapes(quick: bool) -> list[tuple[str, int, NodeShape]]:
    gpus = (1, 8, 16) if quick else (1, 2, 4, 8, 16)
    engines = (1, 8, 32) if quick else (1, 2, 4, 8, 16, 32)
    rdma = (1, 8) if quick else (1, 2, 4, 8)
    return ([("gpus", n, NodeShape(gpus=n)) for n in gpus]
            + [("engine targets", n, NodeShape(engines=n)) for n in engines]
            + [("rdma devices", n, NodeShape(rdma=n)) for n in rdma])


def measure_shape(shape: NodeShape, args: argparse.Namespace) -> dict[str, Any]:
    server = sim_kvscope(shape)
    try:
        server.start()
        wait_past_first_polls([server], args.warmup)
        proc = server.process
        start_cpu = cpu_seconds(proc)
        time.sleep(args.sweep_seconds)
        idle = 100.0 * (cpu_seconds(proc) - start_cpu) / args.sweep_seconds
        lat = asyncio.run(scrape_latencies(server.url, 8, max(1, args.requests // 4)))
        rss, uss = memory_mib(proc)
        series, size = exposition_shape(server.url)
        return {"idle_cpu_pct": idle, "p99_at_8_ms": pct(lat, .99), "rss_mib": rss,
                "uss_mib": uss, "series": series, "bytes": size}
    finally:
        server.stop()


def sweeps(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: dict[NodeShape, dict[str, Any]] = {}
    for axis, n, shape in sweep_shapes(args.quick):
        if shape not in seen:
            seen[shape] = measure_shape(shape, args)
        out.append({"axis": axis, "n": n, **seen[shape]})
        print(f"sweep {axis}={n}: {seen[shape]['series']} series, "
              f"{seen[shape]['idle_cpu_pct']:.2f} % CPU", flush=True)
    return out


# ---- reporting ------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(), "cpu": cpu,
                            "python": platform.python_version(),
                            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=30, check=False)
        info["gpus"] = [line.strip() for line in query.stdout.splitlines() if line.strip()]
    return info


def markdown(result: dict[str, Any]) -> str:
    m, args = result["machine"], result["args"]
    mode = "real GPUs" if args["real"] else "simulated 8 x H100 node (services out of process)"
    lines = [f"Mode: {mode}. Host {m['host']}: {m['cpus']} CPUs ({m['cpu']}), Python "
             f"{m['python']}{', GPUs: ' + '; '.join(m['gpus']) if m.get('gpus') else ''}; "
             f"{m['date']}.", "",
             f"Command: `{result['command']}`", "",
             f"Latency: {args['rounds']} rounds, in each every server in turn at 1, 8 and 32 "
             "concurrent keep-alive scrapers, the others idle. Idle CPU: all servers together "
             f"for {args['idle']:.0f} s, nobody scraping; kvscope's fast tier polls every 5 s and "
             f"nvitop-exporter runs with `--interval {NVITOP_INTERVAL:g}`, the same cadence. "
             f"Steady CPU: one scraper at {args['rate']:g} scrapes/s for {args['steady']:.0f} s.",
             ""]
    rows = result["compare"]["rows"]
    floor = next(r for r in rows if r["server"].startswith("floor"))
    head = "| server |" + "".join(f" p50/p99/max @{c} (ms) |" for c in CONCURRENCY)
    head += "".join(f" p99 @{c} / floor |" for c in CONCURRENCY)
    head += (" idle CPU (% of a core) | CPU at steady rate (%) | RSS (MiB) | USS (MiB) |"
             " series | bytes |")
    lines += [head, "|---" * (1 + 2 * len(CONCURRENCY) + 6) + "|"]
    for r in rows:
        lat = r["latency_ms"]
        cells = "".join(f" {lat[c]['p50']:.2f} / {lat[c]['p99']:.2f} / {lat[c]['max']:.1f} |"
                        for c in CONCURRENCY)
        cells += "".join(f" {lat[c]['p99'] / floor['latency_ms'][c]['p99']:.2f}x |"
                         for c in CONCURRENCY)
        lines.append(f"| {r['server']} |{cells} {r['idle_cpu_pct']:.2f} | "
                     f"{r['steady_cpu_pct']:.2f} | {r['rss_mib']:.1f} | {r['uss_mib']:.1f} | "
                     f"{r['series']} | {r['bytes']} |")
    if result.get("sweeps"):
        lines += ["", "kvscope alone on the simulated node (every default collector; "
                  f"idle CPU over {args['sweep_seconds']:.0f} s at the default cadence; p99 of "
                  "8 concurrent scrapers):", "",
                  "| grows with | n | series | bytes | idle CPU (% of a core) | p99 @8 (ms) |"
                  " RSS (MiB) | USS (MiB) |", "|---|---|---|---|---|---|---|---|"]
        for s in result["sweeps"]:
            lines.append(f"| {s['axis']} | {s['n']} | {s['series']} | {s['bytes']} | "
                         f"{s['idle_cpu_pct']:.2f} | {s['p99_at_8_ms']:.2f} | "
                         f"{s['rss_mib']:.1f} | {s['uss_mib']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep_rows = result.get("sweeps") or []
    axes_names = list(dict.fromkeys(s["axis"] for s in sweep_rows))
    fig, axes = plt.subplots(1, 1 + len(axes_names), figsize=(5 * (1 + len(axes_names)), 4.2),
                             squeeze=False)
    ax = axes[0][0]
    for r in result["compare"]["rows"]:
        ax.plot(CONCURRENCY, [r["latency_ms"][c]["p99"] for c in CONCURRENCY], marker="o",
                label=r["server"])
    ax.set(xscale="log", yscale="log", xlabel="concurrent scrapers", ylabel="p99 (ms)",
           title="/metrics p99", xticks=list(CONCURRENCY), xticklabels=list(map(str, CONCURRENCY)))
    ax.legend(fontsize=7)
    for ax, name in zip(axes[0][1:], axes_names, strict=True):
        points = [s for s in sweep_rows if s["axis"] == name]
        xs = [p["n"] for p in points]
        ax.plot(xs, [p["idle_cpu_pct"] for p in points], marker="o", color="tab:blue")
        ax.set(xlabel=name, ylabel="idle CPU (% of a core)", title=f"kvscope vs {name}")
        twin = ax.twinx()
        twin.plot(xs, [p["series"] for p in points], marker="s", color="tab:orange")
        twin.set_ylabel("series", color="tab:orange")
        ax.set_ylim(bottom=0)
        twin.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def default_out_dir() -> Path:
    host = platform.node().split(".")[0] or "host"
    return REPO / "docs" / "benchmarks" / f"{host}-{datetime.now(UTC):%Y-%m-%d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="this machine's GPUs (real NVML)")
    parser.add_argument("--out-dir", type=Path, help="where results.{md,json,png} go")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds after start")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU sampling")
    parser.add_argument("--rate", type=float, default=5.0, help="steady scrapes per second")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds at the steady rate")
    parser.add_argument("--requests", type=int, default=400,
                        help="scrapes per round at 1 scraper (x2 at 8, x4 at 32; /10 if slow)")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds per server")
    parser.add_argument("--sweep-seconds", type=float, default=15.0,
                        help="idle CPU window per sweep point")
    parser.add_argument("--no-sweeps", action="store_true", help="skip the growth sweeps")
    parser.add_argument("--quick", action="store_true", help="fewer sweep points")
    args = parser.parse_args()
    # A timeout's SIGTERM unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    out_dir = args.out_dir or default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine(), "args": {k: (str(v) if isinstance(v, Path)
                                                                 else v)
                                                             for k, v in vars(args).items()},
                              "command": " ".join(["python3", "bench/scrape_bench.py",
                                                   *sys.argv[1:]])}
    result["compare"] = compare(args)
    write(result, out_dir)  # the comparison is kept even if the sweeps are cut short
    if not args.no_sweeps:
        result["sweeps"] = sweeps(args)
        write(result, out_dir)
    print(markdown(result))


def write(result: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.md").write_text(markdown(result))
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    try:
        plot(result, out_dir / "results.png")
    except ImportError as exc:  # matplotlib is in the bench extra; the tables stand alone
        print(f"no plot: {exc}", file=sys.stderr)
    print(f"wrote {out_dir}/results.md, results.json, results.png", flush=True)


if __name__ == "__main__":
    main()

