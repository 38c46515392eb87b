"""Doctor section: GPUs, their load balance and memory headroom."""

from __future__ import annotations

from kvscope.collectors.dcgm_compat import names_in_48_units
from kvscope.doctor import SECTIONS, Finding, Section, Severity, Snapshot, samples

IMBALANCE_POINTS = 30.0  # busiest minus idlest utilisation, in percentage points
FB_FULL_RATIO = 0.95


def _per_gpu(snap: Snapshot, key: str) -> dict[str, float]:
    """A DCGM reading per GPU in dcgm-exporter 4.8's unit, whichever generation's name the
    agent serves (dcgm.compat); MIG instances of a GPU are summed."""
    for name, factor in names_in_48_units(key):
        found: dict[str, float] = {}
        for labels, value in samples(snap, name):
            found[labels["gpu"]] = found.get(labels["gpu"], 0.0) + value * factor
        if found:
            return found
    return {}


# GPU collector errors that mean NVML as a whole does not answer (a wedged or reloading driver),
# as opposed to one GPU lost: kvscope_gpu_up is then 0 for every GPU without GPU_IS_LOST.
NOT_ANSWERING = ("fast: timeout", "fast: busy", "fast: nvml_", "timeout x", "busy x",
                 "nvml_unavailable", "nvml_event_wait")


def _nvml_not_answering(snap: Snapshot) -> bool:
    errors = snap.health.get("gpu", {}).get("errors", [])
    return any(e.startswith(NOT_ANSWERING) or "nvml_unavailable" in e for e in errors)


async def gpu_section(snap: Snapshot) -> Section:
    section = Section("GPUs")
    up = {labels["gpu"]: (labels, value) for labels, value in samples(snap, "kvscope_gpu_up")}
    if not up:
        available = [v for _, v in samples(snap, "kvscope_gpu_nvml_available")]
        section.lines.append("no GPUs found" + (" (NVML not available)" if available == [0.0]
                                                else ""))
        return section
    util = _per_gpu(snap, "gpu_util")
    used = _per_gpu(snap, "fb_used")
    free = _per_gpu(snap, "fb_free")
    section.lines.append(f"{'GPU':<4} {'model':<24} {'util%':>6} {'FB used':>12}  state")
    silent = _nvml_not_answering(snap) and not any(v for _, v in up.values())
    if silent:
        section.findings.append(Finding(
            Severity.CRITICAL, "NVML does not answer for any GPU (a hung or reloading NVIDIA "
            "driver): no GPU is observed, kvscope_gpu_up is 0 for all",
            "check dmesg for NVRM/Xid messages and whether nvidia-smi hangs; drain the node, "
            "then reset the GPUs or reboot"))
    for gpu in sorted(up, key=int):
        labels, is_up = up[gpu]
        fb = ""
        if gpu in used and gpu in free:
            ratio = used[gpu] / max(1.0, used[gpu] + free[gpu])
            fb = f"{ratio:6.1%}"
            if ratio >= FB_FULL_RATIO:
                section.findings.append(Finding(
                    Severity.WARNING, f"GPU {gpu} framebuffer {ratio:.1%} full: next KV-cache "
                    "growth or batch spike will OOM this rank first",
                    "lower the engine's memory fraction (--mem-fraction-static / "
                    "--gpu-memory-utilization) or rebalance KV cache across ranks"))
        state = "up" if is_up else ("NO ANSWER" if silent else "LOST")
        util_text = f"{util[gpu]:6.0f}" if gpu in util else "     -"
        section.lines.append(f"{gpu:<4} {labels.get('modelName', ''):<24.24} {util_text} "
                             f"{fb:>12}  {state}")
        if not is_up and not silent:
            section.findings.append(Finding(
                Severity.CRITICAL, f"GPU {gpu} is lost (NVML: GPU_IS_LOST)",
                "drain the node; a GPU that fell off the bus needs a reset or reboot"))
    if len(util) > 1:
        hi = max(util, key=lambda g: util[g])
        lo = min(util, key=lambda g: util[g])
        if util[hi] - util[lo] >= IMBALANCE_POINTS:
            section.findings.append(Finding(
                Severity.WARNING, f"GPU load imbalance: GPU {hi} at {util[hi]:.0f}% while GPU "
                f"{lo} at {util[lo]:.0f}%; tensor-parallel throughput is capped by the busiest",
                "check rank-0 extra work (scheduler, sampling, detokenise) and KV-cache "
                "placement; compare DCGM_FI_PROF_SM_ACTIVE across ranks"))
    return section


SECTIONS.append(gpu_section)
