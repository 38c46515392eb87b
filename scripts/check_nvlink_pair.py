#!/usr/bin/env python3
"""Check kvscope's NVLink counters and GPU matrix against a real copy and `nvidia-smi topo -m`.

On a machine with two or more NVLink-joined GPUs:

    python3 scripts/check_nvlink_pair.py            # GPU0 -> GPU1, 40 x 256 MiB

It starts kvscope's NVLink and topology collectors in this process (real pynvml), reads the
per-GPU NVLink byte counters (kvscope_nvlink_transmit/receive_bytes_total), copies a known
number of bytes from the source GPU to the destination GPU with torch, reads the counters again
and checks that the source's TX and the destination's RX moved by the bytes copied, within the
tolerance (2 %). It then runs `nvidia-smi topo -m`, parses it and compares every GPU pair with
kvscope_gpu_p2p_link_info. It prints a table and exits 0 when everything matches, 1 on a
mismatch, 2 when the check cannot run (fewer than two GPUs, no torch, no nvidia-smi).

Needs only: nvidia-ml-py, prometheus-client, aiohttp, psutil, torch, and kvscope's pure-Python
dependencies (pydantic, PyYAML, click, bcrypt, grpcio, protobuf). Optional imports are lazy.

Dry run without GPUs (the simulator stands in for NVML and the copy; the matrix comes from a
saved `nvidia-smi topo -m` output):

    python3 scripts/check_nvlink_pair.py --scenario h200x2 --topo-file saved-topo.txt
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run from a checkout, the checkout's kvscope wins over an installed one.
_SOURCE_ROOT = Path(__file__).resolve().parent.parent / "exporters"
if (_SOURCE_ROOT / "kvscope").is_dir():
    sys.path.insert(0, str(_SOURCE_ROOT))

from kvscope.parsers.nvidia_smi_topo import parse_topo_matrix  # noqa: E402

MIB = 1024 * 1024
EXIT_OK, EXIT_MISMATCH, EXIT_CANNOT_RUN = 0, 1, 2


@dataclass
class Row:
    check: str
    expected: str
    kvscope: str
    ok: bool | None  # None: informational
    note: str = ""


class CannotRunError(Exception):
    pass


# ---- kvscope in-process ----------------------------------------------------------------------


class Agent:
    """kvscope's NVLink and topology collectors over one NVML library object."""

    def __init__(self, library: Any) -> None:
        from kvscope.backends import Backends
        from kvscope.collectors.nvlink import NvlinkCollector
        from kvscope.collectors.topology import TopologyCollector
        from kvscope.config import Config
        from kvscope.context import NodeContext
        from kvscope.runtime import BlockingPool
        from kvscope.sources.nvml import NvmlSession

        # No Kubernetes API and no kubelet here: only the hardware is checked.
        config = Config.model_validate({"collectors": {"topology": {"kubernetes_api": False}}})
        backends = Backends(nvml=NvmlSession(lambda: library))
        self.ctx = NodeContext(config=config, backends=backends, oneshot=True)
        self.nvlink = NvlinkCollector(self.ctx)
        self.topology = TopologyCollector(self.ctx)
        self.pool = BlockingPool("check")
        self.static: list[Any] = []

    async def start(self) -> None:
        from kvscope.collectors.base import Tier

        self.static = [*(await self.nvlink.poll(Tier.STATIC, self.pool)).families,
                       *(await self.topology.poll(Tier.STATIC, self.pool)).families]

    async def counters(self) -> dict[tuple[str, int], float]:
        """(tx|rx, gpu index) -> bytes, from one fast poll."""
        from kvscope.collectors.base import Tier

        out = {}
        for family in (await self.nvlink.poll(Tier.FAST, self.pool)).families:
            for sample in family.samples:
                if sample.name == "kvscope_nvlink_transmit_bytes_total":
                    out[("tx", int(sample.labels["gpu"]))] = sample.value
                elif sample.name == "kvscope_nvlink_receive_bytes_total":
                    out[("rx", int(sample.labels["gpu"]))] = sample.value
        return out

    def matrix(self) -> dict[tuple[int, int], str]:
        return {(int(s.labels["gpu"]), int(s.labels["peer_gpu"])): s.labels["link_type"]
                for family in self.static for s in family.samples
                if s.name == "kvscope_gpu_p2p_link_info"}

    def links(self) -> dict[int, int]:
        """GPU index -> NVLinks kvscope found."""
        out: dict[int, int] = {}
        for family in self.static:
            for s in family.samples:
                if s.name == "kvscope_nvlink_link_info":
                    out[int(s.labels["gpu"])] = out.get(int(s.labels["gpu"]), 0) + 1
        return out

    def affinity(self) -> dict[int, tuple[str, str]]:
        return {int(s.labels["gpu"]): (s.labels["cpus"], s.labels["numa_node"])
                for family in self.static for s in family.samples
                if s.name == "kvscope_gpu_cpu_affinity_info"}

    async def close(self) -> None:
        await self.nvlink.close()
        await self.topology.close()
        self.pool.shutdown()


# ---- the copy ---------------------------------------------------------------------------------


def torch_copier(src: int, dst: int, chunk_bytes: int, chunks: int) -> Callable[[], float]:
    """A function that copies chunks x chunk_bytes from GPU src to GPU dst and returns seconds.

    CUDA_DEVICE_ORDER=PCI_BUS_ID makes torch's device numbers NVML's (and nvidia-smi's).
    """
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    try:
        import torch
    except ImportError as exc:
        raise CannotRunError(f"torch is not installed: {exc}") from None
    if not torch.cuda.is_available() or torch.cuda.device_count() <= max(src, dst):
        raise CannotRunError(f"need CUDA devices {src} and {dst}; torch sees "
                        f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    if not torch.cuda.can_device_access_peer(src, dst):
        print(f"note: torch reports no peer access {src}->{dst}; the copy will be staged "
              "through the host and NVLink counters should not move", file=sys.stderr)
    a = torch.empty(chunk_bytes, dtype=torch.uint8, device=f"cuda:{src}")
    b = torch.empty(chunk_bytes, dtype=torch.uint8, device=f"cuda:{dst}")
    b.copy_(a)  # warm-up: peer mapping and allocator set-up happen outside the measurement
    torch.cuda.synchronize(src)
    torch.cuda.synchronize(dst)

    def copy() -> float:
        started = time.perf_counter()
        for _ in range(chunks):
            b.copy_(a, non_blocking=True)
        torch.cuda.synchronize(src)
        torch.cuda.synchronize(dst)
        return time.perf_counter() - started

    return copy


# ---- comparisons ------------------------------------------------------------------------------


def compare_bytes(before: dict[tuple[str, int], float], after: dict[tuple[str, int], float],
                  *, src: int, dst: int, nbytes: int, tolerance: float) -> list[Row]:
    rows = []
    for direction, gpu in (("tx", src), ("rx", dst)):
        key = (direction, gpu)
        if key not in before or key not in after:
            rows.append(Row(f"GPU{gpu} NVLink {direction.upper()} bytes", f"{nbytes:,}",
                            "absent", False, "kvscope exported no counter for this GPU"))
            continue
        moved = after[key] - before[key]
        error = (moved - nbytes) / nbytes
        rows.append(Row(f"GPU{gpu} NVLink {direction.upper()} bytes", f"{nbytes:,}",
                        f"{moved:,.0f}", abs(error) <= tolerance, f"{error:+.2%}"))
    return rows


def compare_matrix(kvscope_matrix: dict[tuple[int, int], str], topo_text: str) -> list[Row]:
    parsed = parse_topo_matrix(topo_text)
    if parsed.error is not None:
        return [Row("nvidia-smi topo -m", "a matrix", "unparsable", False, parsed.error)]
    smi = parsed.gpu_pairs()
    rows = []
    for pair in sorted(set(smi) | set(kvscope_matrix)):
        if pair[0] > pair[1]:
            continue  # the matrix is symmetric; one row per pair
        expected, got = smi.get(pair, "absent"), kvscope_matrix.get(pair, "absent")
        rows.append(Row(f"GPU{pair[0]}<->GPU{pair[1]} link", expected, got, expected == got))
    return rows


def compare_affinity(kvscope_affinity: dict[int, tuple[str, str]], topo_text: str) -> list[Row]:
    """Informational: nvidia-smi's CPU/NUMA columns next to kvscope's (never fails the check)."""
    parsed = parse_topo_matrix(topo_text)
    rows = []
    for row_name, cpus in sorted(parsed.cpu_affinity.items()):
        if not row_name.startswith("GPU"):
            continue
        gpu = int(row_name[3:])
        ours = kvscope_affinity.get(gpu, ("absent", "absent"))
        rows.append(Row(f"GPU{gpu} CPU / NUMA affinity",
                        f"{cpus} / {parsed.numa_affinity.get(row_name, '?')}",
                        f"{ours[0]} / {ours[1]}", None))
    return rows


def render(rows: Sequence[Row]) -> str:
    head = ("check", "nvidia-smi / copied", "kvscope", "result")
    widths = [max(len(head[0]), *(len(r.check) for r in rows)),
              max(len(head[1]), *(len(r.expected) for r in rows)),
              max(len(head[2]), *(len(r.kvscope) for r in rows))]
    lines = [f"{head[0]:<{widths[0]}}  {head[1]:>{widths[1]}}  {head[2]:>{widths[2]}}  "
             f"{head[3]}"]
    for r in rows:
        result = "info" if r.ok is None else ("OK" if r.ok else "MISMATCH")
        note = f"  ({r.note})" if r.note else ""
        lines.append(f"{r.check:<{widths[0]}}  {r.expected:>{widths[1]}}  "
                     f"{r.kvscope:>{widths[2]}}  {result}{note}")
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------------


def _nvidia_smi_topo(timeout: float) -> str:
    try:
        done = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise CannotRunError("nvidia-smi not found") from None
    except subprocess.TimeoutExpired:
        raise CannotRunError(f"nvidia-smi topo -m hung for {timeout:.0f}s") from None
    if done.returncode != 0:
        raise CannotRunError(f"nvidia-smi topo -m failed: {done.stderr.strip()[:200]}")
    return done.stdout


def _setup(args: argparse.Namespace, nbytes: int) -> tuple[Any, Callable[[], float], str]:
    """The NVML library, the copy function and the topo -m text, real or simulated."""
    if args.scenario:
        from kvscope.sim.nvml import FakeNvml
        from kvscope.sim.scenarios import SimOptions, build_scenario

        node = build_scenario(args.scenario, SimOptions(latency_scale=0.0, fault_delay=0.0))
        node.topology.flows = []  # a quiet node: only the copy moves the counters

        def sim_copy() -> float:
            node.topology.add_transfer(args.src, args.dst, nbytes * args.sim_scale)
            return 0.0

        topo = Path(args.topo_file).read_text() if args.topo_file else ""
        return FakeNvml(node), sim_copy, topo
    from kvscope.sources.nvml import NvmlUnavailable, load_library

    try:
        library = load_library()
    except NvmlUnavailable as exc:
        raise CannotRunError(str(exc)) from None
    copy = torch_copier(args.src, args.dst, args.chunk_mib * MIB, args.chunks)
    topo = Path(args.topo_file).read_text() if args.topo_file else _nvidia_smi_topo(30)
    return library, copy, topo


async def run(args: argparse.Namespace) -> int:
    nbytes = args.chunks * args.chunk_mib * MIB
    library, copy, topo_text = _setup(args, nbytes)
    agent = Agent(library)
    try:
        await agent.start()
        before = await agent.counters()
        gpus = sorted({gpu for _, gpu in before})
        if len(gpus) < 2 and not args.scenario:
            raise CannotRunError(f"need two GPUs with NVLink; kvscope sees NVLink on {gpus}")
        seconds = copy()
        after = await agent.counters()
        rows = compare_bytes(before, after, src=args.src, dst=args.dst, nbytes=nbytes,
                             tolerance=args.tolerance)
        links = agent.links()
        rows += [Row(f"GPU{gpu} NVLinks", "-", str(links.get(gpu, 0)), None)
                 for gpu in (args.src, args.dst)]
        if topo_text:
            rows += compare_matrix(agent.matrix(), topo_text)
            rows += compare_affinity(agent.affinity(), topo_text)
        else:
            rows.append(Row("nvidia-smi topo -m", "skipped", "-", None, "no --topo-file"))
    finally:
        await agent.close()
    rate = f", {nbytes / seconds / 1e9:.1f} GB/s" if seconds > 0 else ""
    print(f"copied {nbytes:,} bytes GPU{args.src} -> GPU{args.dst} "
          f"({args.chunks} x {args.chunk_mib} MiB{rate})")
    print(render(rows))
    failed = [r for r in rows if r.ok is False]
    print(f"\n{'FAIL' if failed else 'PASS'}: {len(failed)} mismatch(es), tolerance "
          f"{args.tolerance:.0%}")
    return EXIT_MISMATCH if failed else EXIT_OK


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=int, default=0, help="source GPU (NVML index)")
    p.add_argument("--dst", type=int, default=1, help="destination GPU (NVML index)")
    p.add_argument("--chunks", type=int, default=40)
    p.add_argument("--chunk-mib", type=int, default=256)
    p.add_argument("--tolerance", type=float, default=0.02, help="relative, default 0.02")
    p.add_argument("--topo-file", help="saved `nvidia-smi topo -m` output instead of running it")
    p.add_argument("--scenario", help="dry run on kvscope's simulated node (no GPU needed)")
    p.add_argument("--sim-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except CannotRunError as exc:
        print(f"check_nvlink_pair: cannot run: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN


if __name__ == "__main__":
    sys.exit(main())
