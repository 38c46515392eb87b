"""The chart's least-privilege defaults, asserted on what helm renders: every exception appears
only with the feature that needs it."""

from __future__ import annotations

from typing import Any

import pytest

from helm_chart import SCENARIOS, agent_container, by_kind, one, render

pytestmark = pytest.mark.integration


def _host_paths(docs: list[dict[str, Any]]) -> set[str]:
    return {v["hostPath"]["path"] for v in _pod(docs)["volumes"] if "hostPath" in v}


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_container_security_holds_in_every_scenario(scenario: str) -> None:
    docs = render(scenario)
    security = agent_container(docs)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"].get("add", [])) <= {"IPC_LOCK"}
    pod = _pod(docs)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["hostNetwork"] is False
    assert pod["hostPID"] is False
    assert pod["hostIPC"] is False


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_host_path_is_mounted_read_only(scenario: str) -> None:
    docs = render(scenario)
    pod = _pod(docs)
    host_volumes = {v["name"] for v in pod["volumes"] if "hostPath" in v}
    assert host_volumes, "the agent reads sysfs at least"
    mounts = {m["name"]: m for m in agent_container(docs)["volumeMounts"]}
    for name in host_volumes:
        assert mounts[name].get("readOnly") is True, f"hostPath {name} is writable"


def test_default_is_root_without_capabilities_for_pod_attribution_only() -> None:
    docs = render("default-values.yaml")
    pod = _pod(docs)
    # uid 0 because the kubelet's pod-resources socket is root-owned 0755 (values.yaml).
    assert pod["securityContext"]["runAsUser"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is False
    assert "add" not in agent_container(docs)["securityContext"]["capabilities"]
    assert _host_paths(docs) == {"/sys", "/var/lib/kubelet/pod-resources"}


def test_without_pod_attribution_the_agent_runs_as_nobody() -> None:
    docs = render(sets=["podResources.enabled=false"])
    security = _pod(docs)["securityContext"]
    assert security["runAsUser"] == 65534
    assert security["runAsGroup"] == 65534
    assert security["runAsNonRoot"] is True
    assert _host_paths(docs) == {"/sys"}


def test_minimal_scenario_is_non_root_and_talks_to_no_api() -> None:
    docs = render("minimal-values.yaml")
    pod = _pod(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert not by_kind(docs, "ClusterRole")
    args = agent_container(docs)["args"]
    assert "--collector.gpu" in args
    assert {"--no-collector.nvlink", "--no-collector.rdma", "--no-collector.engines",
            "--no-collector.topology"} <= set(args)


def test_pod_logs_need_root_even_without_pod_attribution() -> None:
    docs = render(sets=["podResources.enabled=false", "rdma.logFollow.enabled=true"])
    assert _pod(docs)["securityContext"]["runAsUser"] == 0
    mounts = {m["mountPath"]: m for m in agent_container(docs)["volumeMounts"]}
    assert mounts["/var/log/pods"]["readOnly"] is True


def test_the_qp_probe_alone_adds_ipc_lock_and_the_infiniband_devices() -> None:
    assert "/dev/infiniband" not in _host_paths(render())
    docs = render(sets=["rdma.probe.enabled=true"])
    assert agent_container(docs)["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert "/dev/infiniband" in _host_paths(docs)


def test_procfs_is_not_mounted_by_default() -> None:
    docs = render()
    assert "/proc" not in _host_paths(docs)
    assert not any(a.startswith("--path.procfs") for a in agent_container(docs)["args"])


def test_rbac_is_read_only_and_limited_to_discovery() -> None:
    rules = one(render(), "ClusterRole")["rules"]
    granted = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in rules}
    assert granted == {(("",), ("pods",)): {"get", "list"}, (("",), ("nodes",)): {"get"}}
    volcano = one(render(sets=["kubernetesApi.volcanoHyperNodes=true"]), "ClusterRole")["rules"]
    assert {"apiGroups": ["topology.volcano.sh"], "resources": ["hypernodes"],
            "verbs": ["list"]} in volcano


def test_service_account_token_follows_api_use() -> None:
    docs = render()
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert _pod(docs)["automountServiceAccountToken"] is True
    off = render(sets=["kubernetesApi.enabled=false"])
    assert _pod(off)["automountServiceAccountToken"] is False
    assert not by_kind(off, "ClusterRole")
    assert not by_kind(off, "ClusterRoleBinding")


def test_scheduling_on_gpu_nodes_and_rollout_one_node_at_a_time() -> None:
    daemonset = one(render(), "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


def test_nvml_without_claiming_gpus() -> None:
    container = agent_container(render())
    env = {e["name"]: e for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    claimed = {**container["resources"].get("limits", {}), **container["resources"]["requests"]}
    assert not any(name.startswith("nvidia.com/") for name in claimed)


def test_user_overrides_of_security_are_honoured() -> None:
    docs = render(sets=["securityContext.readOnlyRootFilesystem=false",
                        "podSecurityContext.runAsUser=1000"])
    assert agent_container(docs)["securityContext"]["readOnlyRootFilesystem"] is False
    assert _pod(docs)["securityContext"]["runAsUser"] == 1000


def test_the_qp_probe_runs_as_root_so_that_ipc_lock_takes_effect() -> None:
    docs = render(sets=["podResources.enabled=false", "rdma.probe.enabled=true"])
    assert _pod(docs)["securityContext"]["runAsUser"] == 0
