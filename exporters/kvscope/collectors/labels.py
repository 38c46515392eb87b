"""Shared label sets of GPU series: dcgm-exporter's identity labels per compat generation.

DCGM_* families carry the keys of the selected dcgm-exporter release (collectors/dcgm_compat.py);
kvscope_* families keep `Hostname` and `DCGM_FI_DRIVER_VERSION` under every generation, so that
kvscope's own rules and dashboards do not depend on the compat setting. An explicit
`hostname_label` sets the key on both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kvscope.collectors.dcgm_compat import KVSCOPE_DRIVER_LABEL, KVSCOPE_HOSTNAME_KEY, generation
from kvscope.config import Config
from kvscope.sources.nvml import GpuIdentity
from kvscope.sources.pod_resources import ContainerDevices


def hostname_key(config: Config, *, dcgm: bool) -> str:
    if config.hostname_label is not None:
        return config.hostname_label
    return generation(config.dcgm.compat).hostname_key if dcgm else KVSCOPE_HOSTNAME_KEY


def driver_label(config: Config, *, dcgm: bool) -> str:
    return generation(config.dcgm.compat).driver_version_label if dcgm else KVSCOPE_DRIVER_LABEL


def gpu_identity_labels(config: Config, gpu: GpuIdentity, driver: str,
                        pod: Mapping[str, str] | None, *, dcgm: bool) -> dict[str, str]:
    """dcgm-exporter's label set of a whole-GPU series, in its order: gpu, UUID, pci_bus_id,
    device, modelName, the hostname key, the driver-version label, then pod labels."""
    labels = {"gpu": str(gpu.index), "UUID": gpu.uuid, "pci_bus_id": gpu.pci_bus_id,
              "device": f"nvidia{gpu.minor}", "modelName": gpu.name,
              hostname_key(config, dcgm=dcgm): config.node_name}
    if config.driver_version_label:
        labels[driver_label(config, dcgm=dcgm)] = driver
    if pod:
        labels.update(pod)
    return labels


def gpu_labels(config: Config, gpu: GpuIdentity) -> dict[str, str]:
    """Compact identity for kvscope_* per-GPU and per-link families (NVLink, topology)."""
    return {"gpu": str(gpu.index), "UUID": gpu.uuid,
            hostname_key(config, dcgm=False): config.node_name}


MIG_PREFIX = "MIG-"


def mig_device_key(device_id: str) -> str | None:
    """The key a MIG device id is filed under in the pod attribution (collectors/shared.py):
    the MIG UUID itself (drivers R470 and later give each MIG device one), or
    `<parent GPU UUID>/<GPU instance id>` for the old `MIG-GPU-<uuid>/<gi>/<ci>` form. The GPU
    collector looks an instance up under both."""
    if not device_id.startswith(MIG_PREFIX):
        return None
    rest = device_id[len(MIG_PREFIX):]
    if rest.startswith("GPU-") and rest.count("/") == 2:
        parent, gi, _ = rest.split("/")
        return f"{parent}/{gi}" if gi.isdigit() else None
    return device_id


def mig_device_pods(devices: Iterable[ContainerDevices]) -> dict[str, dict[str, str]]:
    """MIG device -> {pod, namespace, container}, from the kubelet's pod-resources List, for
    any resource (nvidia.com/mig-<profile> with the mixed strategy, nvidia.com/gpu with the
    single one). The first holder by namespace, pod and container wins, as for whole GPUs."""
    out: dict[str, dict[str, str]] = {}
    for d in sorted(devices, key=lambda d: (d.namespace, d.pod, d.container)):
        for device_id in d.device_ids:
            key = mig_device_key(device_id.split("::")[0])  # EKS appends ::<replica>
            if key is not None and key not in out:
                out[key] = {"pod": d.pod, "namespace": d.namespace, "container": d.container}
    return out
