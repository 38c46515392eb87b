"""GPU node: one node's GPUs side by side, so an odd one out (GPU 0, GPU 2's memory) shows.

Busy or merely resident: DCGM_FI_DEV_GPU_UTIL only says a kernel was resident; the profiling
ratios (SM active, tensor active, from NVML GPM on Hopper and newer) say how busy the SMs are.
"""

from dashboards import common as c

INCIDENT_ONLY = c.IncidentOnly()

SEL = c.ON_NODE_GPU
TO_PD = c.data_links(("PD group ${__data.fields.pd_group}",
                      c.dashboard_url(c.UID_PD, pd_group="${__data.fields.pd_group}")))
TO_NVLINK = c.data_links(("NVLink and topology of ${node}",
                          c.dashboard_url(c.UID_NVLINK, node="${node}")))



def per_gpu(expr: str) -> str:
    return c.keyed(expr, "gpu", "pci_bus_id")


side_by_side = c.Row("GPUs side by side", [
    c.Cell(c.bar_gauge("Utilisation per GPU",
                       "DCGM_FI_DEV_GPU_UTIL, one bar per GPU: one bar far above the others is "
                       "the GPU 0 syndrome (default device, rank 0 or the coordinator pinned to "
                       "GPU 0).",
                       [c.target(f"DCGM_FI_DEV_GPU_UTIL{{{SEL}}}", "GPU {{gpu}}")],
                       unit=c.PERCENT, thresholds=c.UTIL_STEPS, maximum=100), width=12),
    c.Cell(c.bar_gauge("Memory used / total per GPU",
                       "Framebuffer used over total for each GPU: the OOM hits the one GPU "
                       "near 1, not the node average (GPUMemoryOOMRisk 0.85 / 0.95).",
                       [c.target(f"gpu:DCGM_FI_DEV_FB_USED:ratio{{{SEL}}}", "GPU {{gpu}}")],
                       unit=c.RATIO, thresholds=c.MEMORY_RATIO_STEPS, maximum=1), width=12),
    c.Cell(c.table("Busy or merely resident",
                   "GPU_UTIL beside the GPM profiling ratios: a GPU at 100% GPU_UTIL with low "
                   "SM active is waiting (on memory, the host or a peer), not computing.",
                   [c.target(per_gpu(f"DCGM_FI_DEV_GPU_UTIL{{{SEL}}} / 100"), table=True,
                             ref="util"),
                    c.target(per_gpu(f"DCGM_FI_PROF_SM_ACTIVE{{{SEL}}}"), table=True, ref="sm"),
                    c.target(per_gpu(f"DCGM_FI_PROF_SM_OCCUPANCY{{{SEL}}}"), table=True,
                             ref="occupancy"),
                    c.target(per_gpu(f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{SEL}}}"), table=True,
                             ref="tensor"),
                    c.target(per_gpu(f"DCGM_FI_PROF_DRAM_ACTIVE{{{SEL}}}"), table=True,
                             ref="dram")],
                   unit=c.RATIO, thresholds=c.steps((c.NEUTRAL, None)), cell_colour=False,
                   rename={"Value #util": "GPU_UTIL", "Value #sm": "SM active",
                           "Value #occupancy": "SM occupancy",
                           "Value #tensor": "tensor active", "Value #dram": "DRAM active"}),
           width=24, height=9),
])

activity = c.Row("Activity over time", [
    c.Cell(c.timeseries("GPU_UTIL",
                        "Share of time a kernel was resident (NVML utilisation rates).",
                        [c.target(f"DCGM_FI_DEV_GPU_UTIL{{{SEL}}}", "GPU {{gpu}}")],
                        unit=c.PERCENT, minimum=0, maximum=100), width=8),
    c.Cell(c.timeseries("SM active",
                        "Ratio of cycles an SM had a warp assigned (NVML GPM SM_UTIL).",
                        [c.target(f"DCGM_FI_PROF_SM_ACTIVE{{{SEL}}}", "GPU {{gpu}}")],
                        unit=c.RATIO, minimum=0, maximum=1), width=8),
    c.Cell(c.timeseries("Tensor active",
                        "Ratio of cycles a tensor pipe was active (NVML GPM ANY_TENSOR_UTIL).",
                        [c.target(f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{SEL}}}", "GPU {{gpu}}")],
                        unit=c.RATIO, minimum=0, maximum=1), width=8),
])

memory = c.Row("Memory", [
    c.Cell(c.timeseries("Framebuffer used per GPU",
                        "DCGM_FI_DEV_FB_USED against each GPU's total (the flat lines).",
                        [c.target(f"DCGM_FI_DEV_FB_USED{{{SEL}}}", "GPU {{gpu}} used"),
                         c.target(f"DCGM_FI_DEV_FB_TOTAL{{{SEL}}}", "GPU {{gpu}} total")],
                        unit=c.MIB, minimum=0), width=12),
    c.Cell(c.timeseries("ECC errors and remapped rows",
                        "Corrected and uncorrected ECC errors per second since the driver "
                        "loaded, and rows remapped for uncorrectable errors.",
                        [c.target(f"rate(DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{{{SEL}}}"
                                  "[$__rate_interval])", "GPU {{gpu}} single-bit"),
                         c.target(f"rate(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{SEL}}}"
                                  "[$__rate_interval])", "GPU {{gpu}} double-bit"),
                         c.target(f"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{SEL}}}",
                                  "GPU {{gpu}} remapped rows (uncorrectable)")],
                        unit=c.SHORT, minimum=0), width=12),
])

clocks = c.Row("Clocks, power and temperature", [
    c.Cell(c.timeseries("SM clock",
                        "SM clock per GPU; a GPU clocked below its peers under the same load "
                        "is being held down (see the reasons beside).",
                        [c.target(f"DCGM_FI_DEV_SM_CLOCK{{{SEL}}} * 1e6", "GPU {{gpu}}")],
                        unit=c.HERTZ), width=8),
    c.Cell(c.timeseries("Clock event reasons",
                        "GPUs held down by each reason (power cap, thermal, HW slowdown, ...); "
                        "idle is normal on an idle GPU.",
                        [c.target(f"sum by (reason) (kvscope_gpu_clock_event_active{{{SEL}}})",
                                  "{{reason}}")],
                        unit=c.SHORT, minimum=0, stack=True), width=8),
    c.Cell(c.timeseries("Power against the enforced limit",
                        "Power draw per GPU; the dashed lines are each GPU's enforced limit.",
                        [c.target(f"DCGM_FI_DEV_POWER_USAGE{{{SEL}}}", "GPU {{gpu}}"),
                         c.target(f"DCGM_FI_DEV_ENFORCED_POWER_LIMIT{{{SEL}}}",
                                  "GPU {{gpu}} limit")],
                        unit=c.WATT, minimum=0), width=8),
    c.Cell(c.timeseries("GPU and memory temperature",
                        "Core and HBM temperature per GPU; the lines are GPUTemperatureHigh's.",
                        [c.target(f"DCGM_FI_DEV_GPU_TEMP{{{SEL}}}", "GPU {{gpu}} core"),
                         c.target(f"DCGM_FI_DEV_MEMORY_TEMP{{{SEL}}}", "GPU {{gpu}} memory")],
                        unit=c.CELSIUS, thresholds=c.TEMP_STEPS, show_thresholds=True),
           width=12),
    c.Cell(c.timeseries("Energy per GPU",
                        "Average power from the energy counter (mJ), steadier than samples.",
                        [c.target(f"rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{SEL}}}"
                                  "[$__rate_interval]) / 1000", "GPU {{gpu}}")],
                        unit=c.WATT, minimum=0), width=12),
])

pcie = c.Row("PCIe", [
    c.Cell(c.timeseries("PCIe throughput",
                        "Host <-> GPU bytes per second from NVML GPM (NVML's own byte counters "
                        "are 32-bit and wrap every 4 GiB, so kvscope does not use them).",
                        [c.target(f"DCGM_FI_PROF_PCIE_TX_BYTES{{{SEL}}}", "GPU {{gpu}} TX"),
                         c.target(f"DCGM_FI_PROF_PCIE_RX_BYTES{{{SEL}}}", "GPU {{gpu}} RX")],
                        unit=c.BYTES_PER_SECOND, minimum=0), width=8),
    c.Cell(c.table("PCIe link: current against maximum",
                   "A GPU trained below its maximum generation or width has a degraded link "
                   "(GPUPCIeLinkDegraded): reseat, or check the riser and the BIOS.",
                   [c.target(per_gpu(f"DCGM_FI_DEV_PCIE_LINK_GEN{{{SEL}}}"), table=True,
                             ref="gen"),
                    c.target(per_gpu(f"DCGM_FI_DEV_PCIE_MAX_LINK_GEN{{{SEL}}}"), table=True,
                             ref="maxgen"),
                    c.target(per_gpu(f"DCGM_FI_DEV_PCIE_LINK_WIDTH{{{SEL}}}"), table=True,
                             ref="width"),
                    c.target(per_gpu(f"DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH{{{SEL}}}"), table=True,
                             ref="maxwidth")],
                   rename={"Value #gen": "gen", "Value #maxgen": "max gen",
                           "Value #width": "width", "Value #maxwidth": "max width"}),
           width=8),
    c.Cell(c.timeseries("PCIe replays",
                        "PCIe retries per second: a steady rate points at a marginal link.",
                        [c.target(f"rate(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{SEL}}}"
                                  "[$__rate_interval])", "GPU {{gpu}}")],
                        unit=c.PER_SECOND, minimum=0), width=8),
])

pods = c.Row("Pods and health", [
    c.Cell(c.table("Pods per GPU",
                   "Which container holds each GPU (kubelet pod-resources), with its PD role "
                   "and group; click a row to open the PD group.",
                   [c.target(f"kvscope_pod_gpu_info{{{SEL}}}", table=True)],
                   hide=("Value", "Hostname", "instance", "UUID"), links=TO_PD), width=12),
    c.Cell(c.stat("GPU up",
                  "1 while NVML answers for the GPU; 0 once it is lost (e.g. XID 79).",
                  [c.target(f"kvscope_gpu_up{{{SEL}}}", "GPU {{gpu}}")], unit=c.NONE,
                  thresholds=c.UP_STEPS, mappings=c.UP_MAPPINGS, links=TO_NVLINK), width=12),
    c.Cell(INCIDENT_ONLY.mark(
        c.timeseries("XID events",
                     "XID events per GPU and XID since the agent started "
                     "(kvscope_gpu_xid_errors_total).",
                     [c.target(f"sum by (gpu, xid) (kvscope_gpu_xid_errors_total{{{SEL}}})",
                               "GPU {{gpu}} XID {{xid}}")],
                     unit=c.SHORT, minimum=0),
        scenario="xid-79", when="a GPU of this node reports an XID"), width=24),
])

dashboard = c.dashboard(
    uid=c.UID_NODE, title="kvscope / GPU node",
    description="One node's GPUs side by side: utilisation against the profiling ratios, "
                "memory against total, clocks and their reasons, PCIe, pods per GPU.",
    variables=[c.node_variable(c.GPU_INVENTORY, multi=False), c.gpu_variable()],
    rows=[side_by_side, activity, memory, clocks, pcie, pods],
    alertnames="GPU.*",
)
