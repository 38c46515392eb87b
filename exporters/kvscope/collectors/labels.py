"""Shared label sets of GPU series: dcgm-exporter's identity labels per compat generation.

DCGM_* families carry the keys of the selected dcgm-exporter release (kvscope.dcgm_compat);
kvscope_* families keep `Hostname` and `DCGM_FI_DRIVER_VERSION` under every generation, so that
kvscope's own rules and dashboards do not depend on the compat setting. An explicit
`hostname_label` sets the key on both.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvscope.config import Config
from kvscope.dcgm_compat import KVSCOPE_DRIVER_LABEL, KVSCOPE_HOSTNAME_KEY, generation
from kvscope.sources.nvml import GpuIdentity


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
