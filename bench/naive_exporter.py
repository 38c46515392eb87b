"""The baseline kvscope is measured against: client_python's custom-collector pattern, calling
NVML inside collect() on every scrape (how most home-made GPU exporters, and dcgm-exporter 4.x
before request coalescing, behave). Serves dcgm-exporter's default field set.

Run: python3 bench/naive_exporter.py PORT [--sim]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class NaiveNvmlCollector(Collector):
    def __init__(self, lib: Any) -> None:
        self.lib = lib
        lib.nvmlInit()

    def collect(self) -> Iterator[Metric]:
        lib = self.lib
        labels = ["gpu", "UUID"]
        fams = {name: GaugeMetricFamily(name, name, labels=labels) for name in (
            "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_GPU_TEMP",
            "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "DCGM_FI_DEV_GPU_UTIL",
            "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL",
            "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_RESERVED",
            "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS")}
        for i in range(lib.nvmlDeviceGetCount()):
            h = lib.nvmlDeviceGetHandleByIndex(i)
            uuid = lib.nvmlDeviceGetUUID(h)
            lv = [str(i), uuid if isinstance(uuid, str) else uuid.decode()]
            util = lib.nvmlDeviceGetUtilizationRates(h)
            mem = lib.nvmlDeviceGetMemoryInfo(h, version=0x02000028)
            corr, unc, _, _ = lib.nvmlDeviceGetRemappedRows(h)
            values = {
                "DCGM_FI_DEV_SM_CLOCK": lib.nvmlDeviceGetClockInfo(h, 1),
                "DCGM_FI_DEV_MEM_CLOCK": lib.nvmlDeviceGetClockInfo(h, 2),
                "DCGM_FI_DEV_GPU_TEMP": lib.nvmlDeviceGetTemperature(h, 0),
                "DCGM_FI_DEV_POWER_USAGE": lib.nvmlDeviceGetPowerUsage(h) / 1000,
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION":
                    lib.nvmlDeviceGetTotalEnergyConsumption(h),
                "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": lib.nvmlDeviceGetPcieReplayCounter(h),
                "DCGM_FI_DEV_GPU_UTIL": util.gpu, "DCGM_FI_DEV_MEM_COPY_UTIL": util.memory,
                "DCGM_FI_DEV_ENC_UTIL": lib.nvmlDeviceGetEncoderUtilization(h)[0],
                "DCGM_FI_DEV_DEC_UTIL": lib.nvmlDeviceGetDecoderUtilization(h)[0],
                "DCGM_FI_DEV_FB_FREE": mem.free // 2**20, "DCGM_FI_DEV_FB_USED": mem.used // 2**20,
                "DCGM_FI_DEV_FB_RESERVED": mem.reserved // 2**20,
                "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": corr,
                "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": unc,
            }
            for name, value in values.items():
                fams[name].add_metric(lv, value)
        yield from fams.values()


def main() -> None:
    port = int(sys.argv[1])
    if "--sim" in sys.argv:
        from kvscope.sim.nvml import FakeNvml
        from kvscope.sim.scenarios import build_scenario

        lib: Any = FakeNvml(build_scenario("healthy"))
    else:
        import pynvml

        lib = pynvml
    REGISTRY.register(NaiveNvmlCollector(lib))
    start_http_server(port, addr="127.0.0.1")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
