"""Benchmark: the agent's peak memory and time for one RDMA collection when eadm floods.

    python3 bench/rdma_flood_bench.py [--timeout 10] [--runs 3]

Each row runs `kvscope collect` in a child process over the eRDMA fixture tree, with eadm
(i) absent, (ii) printing its normal ~2 KiB, (iii) writing without end. The child's peak RSS
(getrusage of the children) and wall time are printed as a table. Before the reads were bounded,
(iii) held everything eadm wrote until `eadm_timeout`, so the peak grew with the timeout; now it
is killed at the 1 MiB cap, so (iii) costs about what (ii) costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "rdma"

NORMAL = (
    "import pathlib, sys\n"
    f"name = 'ver.txt' if sys.argv[1:2] == ['ver'] else 'stat_erdma_0.txt'\n"
    f"sys.stdout.write(pathlib.Path({str(FIXTURES / 'eadm')!r}, name).read_text())\n"
)
FLOOD = "\n".join(
    (
        "import sys",
        "line = b'hw_tx_bytes_cnt : 1\\n' * 4096",
        "while True: sys.stdout.buffer.write(line)",
        "",
    )
)


def _tool(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def _one_collect(eadm: str, config: Path) -> tuple[float, float, str]:
    """(peak RSS MiB, seconds, the eadm reason seen) of one `kvscope collect` child."""
    argv = [
        sys.executable,
        "-m",
        "kvscope.cli",
        "collect",
        "--config",
        str(config),
        "--no-collector.gpu",
        "--path.sysfs",
        str(FIXTURES / "erdma-alibaba"),
        "--collector.rdma.eadm-path",
        eadm,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO / "exporters"))
    started = time.monotonic()
    # RUSAGE_CHILDREN's maxrss is the largest child so far, so each run is measured by a
    # wrapper process of its own.
    wrapper = (
        "import resource, subprocess, sys\n"
        "out = subprocess.run(sys.argv[1:], capture_output=True, text=True).stdout\n"
        "reason = next((l.split('reason=\"')[1].split('\"')[0] for l in out.splitlines() "
        "if l.startswith('kvscope_collector_errors_total') and 'eadm' in l), '-')\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, reason)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, env=env, check=True
    )
    seconds = time.monotonic() - started
    kib, reason = done.stdout.split()
    return int(kib) / 1024, seconds, reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=10.0, help="eadm_timeout in seconds")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = folder / "kvscope.yaml"
        config.write_text(
            f"collectors:\n  rdma:\n    eadm_timeout: {args.timeout}\n"
            f"    timeout: {args.timeout + 5}\n"
        )
        cases = [
            ("eadm absent", "/nonexistent/eadm"),
            ("eadm normal (~2 KiB)", str(_tool(folder, "eadm-normal", NORMAL))),
            ("eadm flooding", str(_tool(folder, "eadm-flood", FLOOD))),
        ]
        print(
            f"eadm_timeout {args.timeout:g} s; median of {args.runs} runs; host "
            f"{os.uname().nodename}, {os.cpu_count()} CPUs"
        )
        print(f"| {'case':<22} | peak RSS (MiB) | wall (s) | eadm reason |")
        print(f"|{'-' * 24}|----------------|----------|-------------|")
        for name, eadm in cases:
            runs = [_one_collect(eadm, config) for _ in range(args.runs)]
            rss = statistics.median(r[0] for r in runs)
            wall = statistics.median(r[1] for r in runs)
            print(f"| {name:<22} | {rss:14.1f} | {wall:8.2f} | {runs[-1][2]:<11} |")


if __name__ == "__main__":
    main()
