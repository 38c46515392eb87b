"""Per-MIG-instance series on the simulated MIG H200 (issue 11, item 6)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from conftest import FrozenClock, parse, sim_context, start_sim_services
from kvscope.app import build_runtime
from kvscope.collectors.labels import mig_device_key, mig_device_pods
from kvscope.sim.mig import GPU_INSTANCE_IDS, MIG_GPU, PROFILE_MEMORY_MIB
from kvscope.sources.pod_resources import ContainerDevices

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def collect_mig(compat: str = "4.8") -> Samples:
    """GPU and topology collectors (the kubelet's pod-resources List is real gRPC against the
    simulated kubelet), polled twice so the GPM windows close."""
    ctx = sim_context("mig", clock=FrozenClock(), overrides={
        "collectors.topology.enabled": True, "collectors.gpu.min_gpm_window": 1e-6,
        "dcgm.compat": compat})
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        runtime = build_runtime(ctx)
        await runtime.poll_all_once()
        await runtime.poll_all_once()
        body = runtime.exposition()
        await runtime.stop()
    return parse(body)


def on_mig_gpu(samples: Samples, name: str) -> list[tuple[dict[str, str], float]]:
    return [(lb, v) for lb, v in samples.get(name, []) if lb["gpu"] == str(MIG_GPU)]


async def test_framebuffer_per_gpu_instance_labelled_as_dcgm_exporter() -> None:
    samples = await collect_mig()
    total = on_mig_gpu(samples, "DCGM_FI_DEV_FB_TOTAL")
    assert sorted(int(lb["GPU_I_ID"]) for lb, _ in total) == list(GPU_INSTANCE_IDS)
    assert {lb["GPU_I_PROFILE"] for lb, _ in total} == {"1g.18gb"}
    assert {v for _, v in total} == {PROFILE_MEMORY_MIB}
    # Parent identity on every instance series, as dcgm-exporter: gpu, UUID, modelName of the GPU.
    assert {lb["UUID"] for lb, _ in total} == {samples["kvscope_gpu_mig_enabled"][MIG_GPU][0]
                                               ["UUID"]}
    assert {lb["modelName"] for lb, _ in total} == {"NVIDIA H200"}
    used = {lb["GPU_I_ID"]: v for lb, v in on_mig_gpu(samples, "DCGM_FI_DEV_FB_USED")}
    free = {lb["GPU_I_ID"]: v for lb, v in on_mig_gpu(samples, "DCGM_FI_DEV_FB_FREE")}
    assert all(used[gi] + free[gi] == PROFILE_MEMORY_MIB for gi in used)
    # No whole-GPU framebuffer series beside the instances' (sums by gpu stay right).
    assert all("GPU_I_ID" in lb for lb, _ in on_mig_gpu(samples, "DCGM_FI_DEV_FB_USED"))
    # The other GPUs are whole: no MIG labels.
    assert all("GPU_I_ID" not in lb for lb, _ in samples["DCGM_FI_DEV_FB_USED"]
               if lb["gpu"] != str(MIG_GPU))


async def test_gpm_per_instance_and_no_util_on_the_mig_gpu() -> None:
    samples = await collect_mig()
    gr = on_mig_gpu(samples, "DCGM_FI_PROF_GR_ENGINE_ACTIVE")
    assert sorted(int(lb["GPU_I_ID"]) for lb, _ in gr) == list(GPU_INSTANCE_IDS)
    assert all(0 <= v <= 1 for _, v in gr) and len({v for _, v in gr}) > 1
    assert not on_mig_gpu(samples, "DCGM_FI_PROF_PCIE_TX_BYTES")  # N/A per instance
    assert not on_mig_gpu(samples, "DCGM_FI_DEV_GPU_UTIL")  # NVML: not on MIG GPUs
    assert len(samples["DCGM_FI_DEV_GPU_UTIL"]) == 7
    assert on_mig_gpu(samples, "kvscope_gpu_mig_enabled")[0][1] == 1


async def test_pods_attributed_per_instance_from_kubelet_mig_device_ids() -> None:
    samples = await collect_mig()
    pods = {lb["GPU_I_ID"]: lb.get("pod") for lb, _ in on_mig_gpu(samples, "DCGM_FI_DEV_FB_USED")}
    assert pods == {"7": "embedder-0", "8": "embedder-1", "9": "embedder-2", "10": None,
                    "11": None, "12": None, "13": None}
    decode = {lb["gpu"] for lb, _ in samples["DCGM_FI_DEV_FB_USED"]
              if lb.get("pod") == "sglang-decode-0"}
    assert decode == {"4", "5", "6"}


async def test_instances_follow_the_compat_generation() -> None:
    samples = await collect_mig("4.10")
    total = on_mig_gpu(samples, "DCGM_FI_DEV_FB_CAPACITY_BYTES")
    assert {v for _, v in total} == {PROFILE_MEMORY_MIB * 1024 * 1024}
    assert all(lb["hostname"] == "golden-node" for lb, _ in total)
    assert len(on_mig_gpu(samples, "DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO")) == 7


def test_mig_device_ids_of_both_driver_generations() -> None:
    assert mig_device_key("MIG-1b2c3d4e-0000-5000-8000-000000000000") == (
        "MIG-1b2c3d4e-0000-5000-8000-000000000000")
    assert mig_device_key("MIG-GPU-a810a1fc-9f46-0e6f-5cef-bf34c2248e12/1/0") == (
        "GPU-a810a1fc-9f46-0e6f-5cef-bf34c2248e12/1")
    assert mig_device_key("GPU-a810a1fc-9f46-0e6f-5cef-bf34c2248e12") is None
    assert mig_device_key("MIG-GPU-x/y/0") is None
    pods = mig_device_pods([
        ContainerDevices("b", "ns", "c", "nvidia.com/mig-1g.18gb", ("MIG-u1::2",)),
        ContainerDevices("a", "ns", "c", "nvidia.com/gpu", ("MIG-u1", "GPU-whole"))])
    assert pods == {"MIG-u1": {"pod": "a", "namespace": "ns", "container": "c"}}
