#!/usr/bin/env python3
"""Compare kvscope's GPU series with `nvidia-smi --query-gpu`, taken in the same command.

    python3 scripts/compare_with_nvidia_smi.py            # idle GPUs
    python3 scripts/compare_with_nvidia_smi.py --load     # + torch load: GPM ratios, PCIe bytes

It polls kvscope's GPU collector in this process (real pynvml: static, fast and slow tiers), runs
nvidia-smi right after, and prints one row per field and GPU with both values. Identity and
configuration fields must match exactly; moving values (utilisation, power, temperature, clocks)
within a tolerance, since the two reads are milliseconds apart. With --load it also runs a bf16
matrix loop on GPU 0 to check the GPM ratios (DCGM_FI_PROF_*) against an idle GPU, and copies a
known number of bytes host->GPU 0 to test the PCIe byte counters (NVML fields 197/198) for wrap.
Exit status 1 when an exact field differs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_SOURCE_ROOT = Path(__file__).resolve().parent.parent / "exporters"
if (_SOURCE_ROOT / "kvscope").is_dir():
    sys.path.insert(0, str(_SOURCE_ROOT))

# kvscope series -> (nvidia-smi field, tolerance: None = exact, ("abs", x) or ("rel", x))
FIELDS: dict[str, tuple[str, Any]] = {
    "DCGM_FI_DEV_FB_TOTAL": ("memory.total", None),
    "DCGM_FI_DEV_FB_RESERVED": ("memory.reserved", ("abs", 2)),
    "DCGM_FI_DEV_FB_USED": ("memory.used", ("abs", 64)),
    "DCGM_FI_DEV_FB_FREE": ("memory.free", ("abs", 64)),
    "DCGM_FI_DEV_GPU_UTIL": ("utilization.gpu", ("abs", 10)),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("utilization.memory", ("abs", 10)),
    "DCGM_FI_DEV_ENC_UTIL": ("utilization.encoder", ("abs", 5)),
    "DCGM_FI_DEV_DEC_UTIL": ("utilization.decoder", ("abs", 5)),
    "DCGM_FI_DEV_GPU_TEMP": ("temperature.gpu", ("abs", 2)),
    "DCGM_FI_DEV_MEMORY_TEMP": ("temperature.memory", ("abs", 2)),
    "DCGM_FI_DEV_POWER_USAGE": ("power.draw.instant", ("rel", 0.15)),
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": ("enforced.power.limit", ("abs", 0.5)),
    "DCGM_FI_DEV_SM_CLOCK": ("clocks.sm", ("rel", 0.10)),
    "DCGM_FI_DEV_MEM_CLOCK": ("clocks.mem", ("rel", 0.02)),
    "DCGM_FI_DEV_PCIE_LINK_GEN": ("pcie.link.gen.current", None),
    "DCGM_FI_DEV_PCIE_LINK_WIDTH": ("pcie.link.width.current", None),
    "DCGM_FI_DEV_PCIE_MAX_LINK_GEN": ("pcie.link.gen.max", None),
    "DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH": ("pcie.link.width.max", None),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("clocks_event_reasons.active", ("mask", 0x1)),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("ecc.errors.corrected.volatile.total", None),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("ecc.errors.uncorrected.volatile.total", None),
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": ("ecc.errors.corrected.aggregate.total", None),
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": ("ecc.errors.uncorrected.aggregate.total", None),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("remapped_rows.correctable", None),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("remapped_rows.uncorrectable", None),
    "kvscope_gpu_row_remap_pending": ("remapped_rows.pending", None),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("remapped_rows.failure", None),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("total_energy_consumption", ("rel", 0.01)),
}
LABELS = {"UUID": "uuid", "modelName": "name", "pci_bus_id": "pci.bus_id",
          "DCGM_FI_DRIVER_VERSION": "driver_version"}


def nvidia_smi(fields: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """{index: {field: value}} for the fields this nvidia-smi knows; and the unknown ones."""
    fields = list(fields)
    unknown: list[str] = []
    while True:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu=index,{','.join(fields)}",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=30, check=False)
        bad = [f for f in fields if f'"{f}"' in proc.stdout + proc.stderr]
        if proc.returncode == 0:
            break
        if not bad:
            raise SystemExit(f"nvidia-smi failed: {proc.stdout}{proc.stderr}")
        unknown += bad
        fields = [f for f in fields if f not in bad]
    out = {}
    for line in proc.stdout.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        out[values[0]] = dict(zip(fields, values[1:], strict=True))
    return out, unknown


def _number(text: str) -> float | None:
    text = text.strip()
    if text.startswith("0x"):
        return float(int(text, 16))
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def _verdict(ours: float | None, theirs: float | None, tolerance: Any) -> str:
    if ours is None and theirs is None:
        return "both absent"
    if ours is None:
        return "ABSENT in kvscope"
    if theirs is None:
        return "n/a in nvidia-smi"
    if tolerance is None:
        return "ok" if ours == theirs else "DIFF"
    kind, amount = tolerance
    if kind == "mask":  # ignore bits that flip between two reads (GpuIdle)
        return "ok" if int(ours) & ~amount == int(theirs) & ~amount else "DIFF"
    allowed = amount if kind == "abs" else amount * max(abs(theirs), 1.0)
    return "ok" if abs(ours - theirs) <= allowed else "DIFF (moving value)"


class KvscopeGpu:
    def __init__(self) -> None:
        import pynvml

        from kvscope.backends import Backends
        from kvscope.collectors.gpu import GpuCollector
        from kvscope.config import Config
        from kvscope.context import NodeContext
        from kvscope.runtime import Runtime
        from kvscope.sources.nvml import NvmlSession

        backends = Backends(nvml=NvmlSession(lambda: pynvml))
        self.ctx = NodeContext(config=Config(), backends=backends, oneshot=True)
        self.collector = GpuCollector(self.ctx)
        self.runtime = Runtime([self.collector])

    async def poll(self, *tiers: str) -> dict[str, dict[str, tuple[dict[str, str], float]]]:
        from kvscope.collectors.base import Tier

        for tier in tiers:
            snap = await self.runtime.poll_once(self.collector, Tier(tier))
            if not snap.ok:
                print(f"kvscope {tier} tier failed: {snap.error}")
        out: dict[str, dict[str, tuple[dict[str, str], float]]] = {}
        for family in self.runtime.families():
            for s in family.samples:
                if "gpu" in s.labels:
                    out.setdefault(s.name, {})[s.labels["gpu"]] = (s.labels, s.value)
        return out


def compare(series: dict[str, dict[str, tuple[dict[str, str], float]]]) -> int:
    wanted = [f for f, _ in FIELDS.values()] + list(LABELS.values())
    smi, unknown = nvidia_smi(wanted)
    if unknown:
        print(f"nvidia-smi does not know: {', '.join(unknown)}")
    exact_diffs = 0
    print("| kvscope series | nvidia-smi field | GPU | kvscope | nvidia-smi | verdict |")
    print("|---|---|---|---|---|---|")
    for index, row in sorted(smi.items()):
        labels = series["kvscope_gpu_up"][index][0]
        for label, field in LABELS.items():
            ok = labels.get(label, "") .upper() == row.get(field, "").upper() or \
                (label == "pci_bus_id" and labels.get(label, "").upper().endswith(
                    row.get(field, "").upper()[-12:]))
            exact_diffs += 0 if ok else 1
            print(f"| label {label} | {field} | {index} | {labels.get(label)} | "
                  f"{row.get(field)} | {'ok' if ok else 'DIFF'} |")
        for name, (field, tolerance) in FIELDS.items():
            if field in unknown:
                continue
            ours = series.get(name, {}).get(index, (None, None))[1]
            theirs = _number(row.get(field, ""))
            if name == "DCGM_FI_DEV_POWER_USAGE" and theirs is None:
                theirs = _number(row.get("power.draw", ""))
            verdict = _verdict(ours, theirs, tolerance)
            if verdict == "DIFF" and tolerance is None:
                exact_diffs += 1
            print(f"| {name} | {field} | {index} | {ours} | {row.get(field)} | {verdict} |")
    return exact_diffs


def _matmul_load(stop: threading.Event) -> None:
    import torch

    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    while not stop.is_set():
        for _ in range(20):
            a @ b
        torch.cuda.synchronize(0)


async def load_checks(agent: KvscopeGpu) -> None:

    print("\n## GPM ratios under a bf16 matmul loop on GPU 0 (5 s window)")
    stop = threading.Event()
    worker = threading.Thread(target=_matmul_load, args=(stop,), daemon=True)
    worker.start()
    await asyncio.sleep(1.0)
    await agent.poll("fast")  # opens the GPM window
    await asyncio.sleep(5.0)
    series = await agent.poll("fast")
    smi, _ = nvidia_smi(["utilization.gpu"])
    stop.set()
    worker.join()
    print("| GPU | GPU_UTIL % | nvidia-smi util % | GR_ENGINE | SM_ACTIVE | SM_OCCUPANCY | "
          "TENSOR | DRAM |")
    print("|---|---|---|---|---|---|---|---|")
    for gpu in sorted(series.get("kvscope_gpu_up", {})):
        def get(name: str, g: str = gpu) -> str:
            value = series.get(name, {}).get(g)
            return "absent" if value is None else f"{value[1]:.3f}"
        print(f"| {gpu} | {get('DCGM_FI_DEV_GPU_UTIL')} | {smi.get(gpu, {}).get('utilization.gpu')}"
              f" | {get('DCGM_FI_PROF_GR_ENGINE_ACTIVE')} | {get('DCGM_FI_PROF_SM_ACTIVE')} | "
              f"{get('DCGM_FI_PROF_SM_OCCUPANCY')} | {get('DCGM_FI_PROF_PIPE_TENSOR_ACTIVE')} | "
              f"{get('DCGM_FI_PROF_DRAM_ACTIVE')} |")

    await pcie_checks(agent)


async def pcie_checks(agent: KvscopeGpu) -> None:
    import pynvml
    import torch

    print("\n## GPM PCIe throughput (DCGM_FI_PROF_PCIE_RX_BYTES) while copying host -> GPU 0")
    host = torch.empty(1 << 30, dtype=torch.uint8).pin_memory()
    dev = torch.empty(1 << 30, dtype=torch.uint8, device="cuda:0")
    await agent.poll("fast")  # opens the window
    opened = time.monotonic()
    copied = 0
    while time.monotonic() - opened < 4.0:
        dev.copy_(host)
        torch.cuda.synchronize(0)
        copied += host.numel()
    await asyncio.sleep(1.0)  # an idle second inside the window: the average must include it
    series = await agent.poll("fast")
    window = time.monotonic() - opened
    rx = series.get("DCGM_FI_PROF_PCIE_RX_BYTES", {}).get("0", (None, None))[1]
    tx = series.get("DCGM_FI_PROF_PCIE_TX_BYTES", {}).get("0", (None, None))[1]
    expected = copied / window
    ratio = f"{rx / expected:.3f}" if rx else "n/a"
    print(f"copied {copied} bytes in a {window:.2f} s window: {expected:.4g} B/s on average; "
          f"kvscope RX {rx} B/s (ratio {ratio}), TX {tx} B/s")

    print("\n## PCIe byte counters (NVML fields 197 TX / 198 RX) while copying host -> GPU 0")
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def read() -> tuple[int, int]:
        tx, rx = pynvml.nvmlDeviceGetFieldValues(handle, [197, 198])
        return int(tx.value.ullVal), int(rx.value.ullVal)

    samples = [(time.monotonic(), *read())]
    copied = 0
    for _ in range(12):
        dev.copy_(host, non_blocking=False)
        copied += host.numel()
        torch.cuda.synchronize(0)
        samples.append((time.monotonic(), *read()))
    rx_deltas = [b[2] - a[2] for a, b in itertools.pairwise(samples)]
    tx_deltas = [b[1] - a[1] for a, b in itertools.pairwise(samples)]
    print(f"copied {copied} bytes host->GPU in 12 x 1 GiB; RX counter readings: "
          f"{[s[2] for s in samples]}")
    print(f"RX deltas per GiB copied: {rx_deltas}")
    print(f"TX deltas: {tx_deltas}")
    total = samples[-1][2] - samples[0][2]
    print(f"RX moved {total} for {copied} copied (ratio {total / copied:.4f}); any negative "
          f"delta (wrap or reset): {any(d < 0 for d in rx_deltas + tx_deltas)}; largest "
          f"reading {max(max(s[1], s[2]) for s in samples)} vs 2^32 = {2**32}")


async def main_async(args: argparse.Namespace) -> int:
    agent = KvscopeGpu()
    series = await agent.poll("static", "fast", "slow")
    started = time.monotonic()
    diffs = compare(series)
    print(f"\nnvidia-smi took {time.monotonic() - started:.2f} s after kvscope's poll; "
          f"exact-field differences: {diffs}")
    if args.load:
        await load_checks(agent)
    await agent.runtime.stop()
    return 1 if diffs else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", action="store_true", help="also check GPM and PCIe under load")
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("nvidia-smi not found")
        return 2
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
