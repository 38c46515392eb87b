"""The NVIDIA driver's procfs files of the simulated GPUs: `driver/nvidia/gpus/<bus id>/
information`, written as the driver writes them, with the fake NVML's UUIDs and bus ids (the GPU
collector names the GPUs from them while NVML hangs from boot)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from kvscope.parsers.pci import sysfs_bus_id
from kvscope.sim import services
from kvscope.sim.node import SimGpu, SimNode


def information(gpu: SimGpu) -> str:
    """One GPU's `information` file, in the driver's layout (key, colon, tabs, value)."""
    bus = sysfs_bus_id(gpu.pci_bus_id)
    rows = (
        ("Model", "\t\t", gpu.name),
        ("IRQ", "\t\t", str(220 + gpu.index)),
        ("GPU UUID", "\t", gpu.uuid),
        ("Video BIOS", "\t", "96.00.af.00.01"),
        ("Bus Type", "\t", "PCIe"),
        ("DMA Size", "\t", "52 bits"),
        ("DMA Mask", "\t", "0xfffffffffffff"),
        ("Bus Location", "\t", bus),
        ("Device Minor", "\t", str(gpu.index)),
        ("GPU Excluded", "", "No"),
    )
    return "".join(f"{key}:{pad}\t {value}\n" for key, pad, value in rows)


def write_procfs(node: SimNode, root: Path) -> None:
    for gpu in node.gpus:
        folder = root / "driver" / "nvidia" / "gpus" / sysfs_bus_id(gpu.pci_bus_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "information").write_text(information(gpu), encoding="utf-8")


async def start_procfs(node: SimNode, stack: AsyncExitStack) -> dict[str, Any]:
    """Write the node's driver procfs files and point paths.procfs at them."""
    root = services.shared_root(node, stack) / "proc"
    await asyncio.to_thread(write_procfs, node, root)
    return {"paths.procfs": str(root)}

