"""The agent's web listener under abuse: what basic-auth timing reveals, what a password flood
does to scrapes and data freshness, and how much a stream of malformed requests logs.

    python3 bench/web_abuse_bench.py                       # this checkout
    python3 bench/web_abuse_bench.py --tree /path/to/old   # another checkout, to compare

Starts `kvscope demo` (every default collector, the simulated node) from the tree's exporters/
with TLS and basic auth (bcrypt cost 12, as `htpasswd -nBC 12` makes), all on 127.0.0.1, and
prints one table. The figures depend on the machine's cores and load: compare trees in the same
run on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import bcrypt
import trustme

REPO = Path(__file__).resolve().parents[1]
FLOODERS = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _fast_tier_stamp(body: bytes) -> float | None:
    for line in body.decode().splitlines():
        if line.startswith("kvscope_collector_last_success_timestamp_seconds{") and \
                'collector="gpu"' in line and 'tier="fast"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


class Agent:
    def __init__(self, tree: Path, tmp: Path) -> None:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        cert, key, ca_file = tmp / "cert.pem", tmp / "key.pem", tmp / "ca.pem"
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(ca_file)
        users = {u: bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=12)).decode()
                 for u in ("prometheus", "grafana")}
        web = tmp / "web.yml"
        web.write_text(f"tls_server_config: {{cert_file: {cert}, key_file: {key}}}\n"
                       "basic_auth_users:\n" + "".join(f"  {u}: '{h}'\n" for u, h in users.items()))
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.client_ssl = ssl.create_default_context(cafile=str(ca_file))
        self.log = tmp / "agent.log"
        env = dict(os.environ, PYTHONPATH=str(tree / "exporters"), NODE_NAME="bench-node")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvscope.cli", "demo", "--web.config.file", str(web),
             "--web.listen-address", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env=env, cwd=tree)

    def session(self, source: str | None = None) -> aiohttp.ClientSession:
        """A client connecting from `source` (a loopback address; default 127.0.0.1)."""
        local = (source, 0) if source else None
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=self.client_ssl, limit=0, local_addr=local))

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        async with self.session() as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(f"{self.url}/metrics",
                                           headers=_basic("prometheus", "s3cret")) as resp:
                        if resp.status == 200 and _fast_tier_stamp(await resp.read()):
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.3)
        raise SystemExit(f"agent not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


async def user_timing(agent: Agent) -> dict[str, float]:
    times: dict[str, list[float]] = {"prometheus": [], "nobody": []}
    async with agent.session() as session:
        for _ in range(7):
            for user, record in times.items():
                started = time.perf_counter()
                async with session.get(f"{agent.url}/metrics",
                                       headers=_basic(user, "wrong")) as resp:
                    await resp.read()
                record.append(time.perf_counter() - started)
    return {u: statistics.median(t) * 1e3 for u, t in times.items()}


async def flood(agent: Agent, seconds: float) -> dict[str, float]:
    stop = asyncio.Event()
    statuses: dict[int, int] = {}

    async def attacker(session: aiohttp.ClientSession, n: int) -> None:
        while not stop.is_set():
            try:
                async with session.get(f"{agent.url}/metrics",
                                       headers=_basic("prometheus", f"guess-{n}")) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
            except aiohttp.ClientError:
                statuses[0] = statuses.get(0, 0) + 1

    async with agent.session() as scraper, agent.session() as crowd, \
            agent.session("127.0.0.2") as fresh:
        async with scraper.get(f"{agent.url}/metrics",
                               headers=_basic("prometheus", "s3cret")) as resp:
            await resp.read()  # verified once before the flood, as a running Prometheus is
        tasks = [asyncio.create_task(attacker(crowd, n)) for n in range(FLOODERS)]
        await asyncio.sleep(1.0)
        first_login_started = time.perf_counter()
        first_login: float | None = None
        latencies, ages = [], []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            async with scraper.get(f"{agent.url}/metrics",
                                   headers=_basic("prometheus", "s3cret")) as resp:
                body = await resp.read()
            latencies.append(time.perf_counter() - started)
            stamp = _fast_tier_stamp(body)
            ages.append(time.time() - stamp if stamp else float("inf"))
            if first_login is None:  # grafana, from 127.0.0.2, retries once a second
                async with fresh.get(f"{agent.url}/metrics",
                                     headers=_basic("grafana", "s3cret")) as resp:
                    await resp.read()
                    if resp.status == 200:
                        first_login = time.perf_counter() - first_login_started
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
    return {"scrape_p50_ms": statistics.median(latencies) * 1e3,
            "scrape_max_ms": max(latencies) * 1e3, "age_max_s": max(ages),
            "first_login_s": first_login if first_login is not None else float("inf"),
            "attempts": sum(statuses.values()),
            "http_429": statuses.get(429, 0), "http_500": statuses.get(500, 0)}


def malformed(agent: Agent, count: int) -> dict[str, float]:
    before = agent.log.stat().st_size
    tracebacks = agent.log.read_text(errors="replace").count("Traceback")
    context = agent.client_ssl
    for i in range(count):
        with socket.create_connection(("127.0.0.1", agent.port)) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /metrics HTTP/1.1\r\nBad Header %d\r\n\r\n" % i)
            while tls.recv(65536):
                pass
    time.sleep(0.5)
    text = agent.log.read_text(errors="replace")
    return {"log_bytes": agent.log.stat().st_size - before,
            "tracebacks": text.count("Traceback") - tracebacks}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout to run the agent from")
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument("--malformed", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvscope-web-bench-") as tmp:
        agent = Agent(args.tree.resolve(), Path(tmp))
        try:
            await agent.wait_ready()
            timing = await user_timing(agent)
            flooded = await flood(agent, args.flood_seconds)
            bad = malformed(agent, args.malformed)
        finally:
            agent.stop()
    print(f"tree: {args.tree.resolve()}  ({os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f})\n")
    print("| measure | value |\n|---|---|")
    print(f"| wrong password, real user (median ms, cost 12) | {timing['prometheus']:.0f} |")
    print(f"| unknown user (median ms) | {timing['nobody']:.0f} |")
    print(f"| flood: {FLOODERS} clients x {args.flood_seconds:.0f} s, attempts | "
          f"{flooded['attempts']:.0f} (429: {flooded['http_429']:.0f}, "
          f"500: {flooded['http_500']:.0f}) |")
    print(f"| flood: cached scraper p50 / max (ms) | {flooded['scrape_p50_ms']:.0f} / "
          f"{flooded['scrape_max_ms']:.0f} |")
    print(f"| flood: oldest fast-tier data served (s) | {flooded['age_max_s']:.1f} |")
    print(f"| flood: first login of another user from another address (s) | "
          f"{flooded['first_login_s']:.1f} |")
    print(f"| {args.malformed} malformed requests: log bytes / tracebacks | "
          f"{bad['log_bytes']:.0f} / {bad['tracebacks']:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
