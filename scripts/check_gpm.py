#!/usr/bin/env python3
"""Judge kvscope's GPM ratios against a GPU load whose busy fraction is known.

    python3 scripts/check_gpm.py [--gpu 0] [--phase-seconds 40] [--half-periods 1,4] [--out F]

It starts `kvscope serve` (the real agent, default collectors, on a loopback port) and, in a
separate process, a bf16 matrix-multiply load on one GPU in two phases:

- saturated: back-to-back GEMMs, so SM_ACTIVE must be >= 0.9;
- half duty: GEMMs for half of every period, idle for the other half, so SM_ACTIVE must be within
  0.1 of 0.5 while GPU_UTIL (the fraction of its sample window in which any kernel ran) jumps.

The load runs in its own process on purpose: a load thread inside the checking process shares the
GIL with the poller and leaves gaps in the GPU's work, so the GPU is not as busy as the check
assumes (an earlier in-process check read SM_ACTIVE 0.54 at GPU_UTIL 99).

Each phase scrapes /metrics once per fast-tier window after a warm-up and keeps one sample per
window (the GPM ratios are window averages). Exit status 1 when a phase misses its criterion,
2 when the machine has no GPU, torch or GPM.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RATIOS = ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_SM_ACTIVE",
          "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE")
UTIL = "DCGM_FI_DEV_GPU_UTIL"
FAST_SECONDS = 5.0  # the agent's default fast cadence: one GPM window per poll

# The load process: a bf16 GEMM loop, busy for `duty` of every `period` seconds. It prints one line
# when its operands are on the GPU so the checker starts the clock only then.
LOAD = r"""
import sys, time, torch
gpu = int(sys.argv[1])
duty, period, seconds = (float(v) for v in sys.argv[2:5])
dev = torch.device("cuda", gpu)
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
torch.cuda.synchronize(dev)
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.monotonic()
    while time.monotonic() - start < duty * period:
        for _ in range(4):
            a @ b
        torch.cuda.synchronize(dev)
    rest = period - (time.monotonic() - start)
    if rest > 0:
        time.sleep(rest)
"""


@dataclass(frozen=True)
class Phase:
    name: str
    duty: float
    period: float
    criterion: str

    def passes(self, sm_active: float) -> bool:
        if self.duty >= 1.0:
            return sm_active >= 0.9
        return abs(sm_active - self.duty) <= 0.1


def phases(half_periods: list[float]) -> list[Phase]:
    """Saturated, then one half-duty phase per period (a longer period lets GPU_UTIL's short
    sample window land wholly inside a busy or an idle half, so it swings).

    A period must divide the agent's GPM window (the fast cadence) a whole number of times:
    otherwise each window holds a different share of busy time (a 4 s period in 5 s windows
    gives 0.375-0.625 per window) and the windows' values no longer measure a 0.5 load."""
    out = [Phase("saturated", 1.0, 1.0, "SM_ACTIVE >= 0.9")]
    for period in half_periods:
        if period <= 0 or abs(FAST_SECONDS / period - round(FAST_SECONDS / period)) > 1e-9:
            raise SystemExit(f"--half-periods: {period:g} s does not divide the "
                             f"{FAST_SECONDS:g} s GPM window a whole number of times")
        out.append(Phase(f"half duty ({period / 2:g} s busy / {period / 2:g} s idle)", 0.5, period,
                         "abs(SM_ACTIVE - 0.5) <= 0.1"))
    return out


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def mean(self, name: str) -> float | None:
        """The phase's average: windows are of equal length, so their mean is the time average."""
        got = self.values.get(name)
        return statistics.fmean(got) if got else None

    def span(self, name: str) -> str:
        got = self.values.get(name)
        return f"{min(got):.0f}-{max(got):.0f}" if got else "absent"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str, gpu: str) -> dict[str, float]:
    """The GPU's DCGM series from one scrape: {name: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.labels.get("gpu") == gpu and sample.name in (*RATIOS, UTIL):
                out[sample.name] = sample.value
    return out


def wait_ready(url: str, agent: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise SystemExit(f"kvscope serve exited with {agent.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("kvscope serve did not become ready in time")


def run_phase(phase: Phase, url: str, gpu: int, seconds: float) -> Samples:
    load = subprocess.Popen([sys.executable, "-c", LOAD, str(gpu), str(phase.duty),
                             str(phase.period), str(seconds + 2 * FAST_SECONDS)],
                            stdout=subprocess.PIPE, env=os.environ.copy())
    assert load.stdout is not None
    if load.stdout.readline().strip() != b"ready":
        load.kill()
        raise SystemExit("the load process failed to start (is torch with CUDA installed?)")
    samples = Samples()
    try:
        time.sleep(2 * FAST_SECONDS)  # two windows: the first GPM window after the load began
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, value in scrape(url, str(gpu)).items():
                samples.add(name, value)
            time.sleep(FAST_SECONDS)
    finally:
        load.terminate()
        load.wait(timeout=30)
    return samples


def report(rows: list[tuple[Phase, Samples]]) -> tuple[str, bool]:
    lines = ["| phase | windows | GPU_UTIL % (min-max) | GR_ENGINE | SM_ACTIVE | TENSOR | DRAM | "
             "criterion | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    ok = True
    for phase, samples in rows:
        sm = samples.mean("DCGM_FI_PROF_SM_ACTIVE")
        passed = sm is not None and phase.passes(sm)
        ok &= passed

        def avg(name: str, s: Samples = samples) -> str:
            value = s.mean(name)
            return "absent" if value is None else f"{value:.3f}"

        windows = len(samples.values.get("DCGM_FI_PROF_SM_ACTIVE", []))
        lines.append(f"| {phase.name} | {windows} | {samples.span(UTIL)} | "
                     f"{avg('DCGM_FI_PROF_GR_ENGINE_ACTIVE')} | {avg('DCGM_FI_PROF_SM_ACTIVE')} | "
                     f"{avg('DCGM_FI_PROF_PIPE_TENSOR_ACTIVE')} | {avg('DCGM_FI_PROF_DRAM_ACTIVE')}"
                     f" | {phase.criterion} | {'pass' if passed else 'FAIL'} |")
    lines.append("")
    lines.append("Ratios are means of per-window values; GPU_UTIL is every scraped value.")
    return "\n".join(lines), ok


def per_window(rows: list[tuple[Phase, Samples]]) -> str:
    lines = ["| phase | GPU_UTIL % per window | SM_ACTIVE per window |", "|---|---|---|"]
    for phase, samples in rows:
        util = ", ".join(f"{v:.0f}" for v in samples.values.get(UTIL, []))
        sm = ", ".join(f"{v:.2f}" for v in samples.values.get("DCGM_FI_PROF_SM_ACTIVE", []))
        lines.append(f"| {phase.name} | {util} | {sm} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--phase-seconds", type=float, default=40.0)
    parser.add_argument("--half-periods", default="1,5",
                        help="comma-separated periods (s) of the half-duty phases, each "
                        "dividing the 5 s GPM window (default 1,5)")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "exporters"), os.environ.get("PYTHONPATH", "")) if p)}
    agent = subprocess.Popen([sys.executable, "-m", "kvscope.cli", "serve",
                              "--web.listen-address", f"127.0.0.1:{port}",
                              "--no-collector.engines"], env=env)
    try:
        wait_ready(url, agent, time.monotonic() + 60)
        time.sleep(2 * FAST_SECONDS)
        idle = scrape(url, str(args.gpu))
        if "DCGM_FI_PROF_SM_ACTIVE" not in idle:
            print(f"GPU {args.gpu} exports no DCGM_FI_PROF_SM_ACTIVE: no GPM (pre-Hopper?)")
            return 2
        print(f"idle GPU {args.gpu}: " + ", ".join(f"{k}={v:g}" for k, v in sorted(idle.items())))
        rows = [(phase, run_phase(phase, url, args.gpu, args.phase_seconds)) for phase in phases(
            [float(v) for v in args.half_periods.split(",")])]
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    table, ok = report(rows)
    text = f"{table}\n\n{per_window(rows)}\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
