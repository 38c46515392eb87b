"""Where the agent's resident memory comes from: RSS after each import, in the agent's order.

    PYTHONPATH=exporters python3 bench/import_memory.py [--nvml]

Each step's figure is the growth of this process's RSS (VmRSS), so shared library pages count
where they are first mapped; --nvml adds `nvmlInit()` (the driver library's own allocations)
at the end. The agent's figures in docs/benchmarks.md add its state on top of these.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

STEPS = ("asyncio", "ssl", "yaml", "click", "pydantic", "prometheus_client", "aiohttp",
         "aiohttp.web", "psutil", "pynvml", "kvscope.config", "kvscope.collectors.registry",
         "kvscope.app", "kvscope.cli", "grpc", "kvscope.sources.podresources.api_pb2_grpc")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    last = rss_mib()
    print(f"{'interpreter':<46} {last:6.1f} MiB")
    for name in STEPS:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"{name:<46} not importable: {exc}")
            continue
        now = rss_mib()
        print(f"{name:<46} {now - last:+6.1f} -> {now:6.1f} MiB")
        last = now
    if "--nvml" in sys.argv:
        import pynvml

        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            print(f"{'nvmlInit()':<46} failed: {exc}")
            return
        now = rss_mib()
        print(f"{'nvmlInit()':<46} {now - last:+6.1f} -> {now:6.1f} MiB")


if __name__ == "__main__":
    main()
