"""The topology slow tier with a dead Kubernetes API: the kubelet's pods are still served.

The kubelet says which pod holds which GPU; the API only adds PD roles and groups. When the API
fails, the tier serves the pods with role "unknown" and reports itself down with the API's
reason, instead of dropping the pods with the roles.
"""

from __future__ import annotations

import dataclasses
from contextlib import AsyncExitStack

from conftest import start_sim_services
from kvscope.app import build_runtime
from kvscope.config import Config, set_dotted
from nvlink_support import context, samples, sim_node

DEAD_API = "http://127.0.0.1:9"  # loopback discard port: nothing listens, connection refused


async def test_dead_api_keeps_the_kubelets_pods_and_marks_the_tier_down() -> None:
    ctx = context(sim_node("healthy"))
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)  # fake kubelet and fake API server
        data = ctx.config.model_dump()
        set_dotted(data, "kubernetes.api_url", DEAD_API)  # then the API server goes away
        ctx = dataclasses.replace(ctx, config=Config.model_validate(data))
        runtime = build_runtime(ctx)
        try:
            await runtime.poll_all_once()
            families = runtime.families()
        finally:
            await runtime.stop()
    up = {(lb["collector"], lb["tier"]): v for lb, v in samples(families, "kvscope_collector_up")}
    assert up[("topology", "slow")] == 0 and up[("topology", "static")] == 1
    reasons = {lb["reason"] for lb, _ in samples(families, "kvscope_collector_errors_total")
               if lb["collector"] == "topology"}
    assert len(reasons) == 1 and next(iter(reasons)).startswith("kube_"), reasons
    pods = samples(families, "kvscope_pod_gpu_info")
    assert pods and {lb["role"] for lb, _ in pods} == {"unknown"}
    assert samples(families, "kvscope_pod_attribution_enabled") == [({}, 1.0)]
