"""GPU fleet: which GPU is hot, which node is lopsided, and which GPUs are failing.

Queries use dcgm-exporter's names, so the dashboard also works where dcgm-exporter runs
(except the lost-GPU and XID-counter panels, which read kvscope's own series).
"""

from dashboards import common as c

INCIDENT_ONLY = c.IncidentOnly()

TO_NODE = c.data_links(("GPU node: ${__field.labels.instance}",
                        c.dashboard_url(c.UID_NODE, node="${__field.labels.instance}")))
ROW_TO_NODE = c.data_links(("GPU node: ${__data.fields.instance}, GPU ${__data.fields.gpu}",
                            c.dashboard_url(c.UID_NODE, node="${__data.fields.instance}",
                                            gpu="${__data.fields.gpu}")))

GPU = 'DCGM_FI_DEV_GPU_UTIL{instance=~"$node"}'
# Recording rules (alerts/rules/recording.yaml): pre-aggregated per node for a fleet of any size.
SPREAD = 'node:DCGM_FI_DEV_GPU_UTIL:spread{instance=~"$node"}'
STDDEV = 'node:DCGM_FI_DEV_GPU_UTIL:stddev{instance=~"$node"}'
FULLEST = 'node:DCGM_FI_DEV_FB_USED:ratio_max{instance=~"$node"}'
MEMORY = 'gpu:DCGM_FI_DEV_FB_USED:ratio{instance=~"$node"}'



def top(expr: str) -> str:
    """`expr` for the $topn busiest GPUs only, one row per node and GPU."""
    return c.keyed(f"{expr}\n  and on (instance, gpu) topk($topn, {GPU})",
                   "instance", "gpu", "modelName")


overview = c.Row("Fleet at a glance", [
    c.Cell(c.stat("GPUs reporting", "GPUs with a utilisation sample in the last scrape.",
                  [c.target(f"count({GPU})")], unit=c.SHORT,
                  thresholds=c.steps((c.NEUTRAL, None))), width=4, height=4),
    c.Cell(c.stat("Mean utilisation", "Average of DCGM_FI_DEV_GPU_UTIL over the selected GPUs.",
                  [c.target(f"avg({GPU})")], unit=c.PERCENT, thresholds=c.UTIL_STEPS),
           width=4, height=4),
    c.Cell(c.stat("Memory used / total", "Framebuffer used over framebuffer total, fleet-wide.",
                  [c.target('sum(DCGM_FI_DEV_FB_USED{instance=~"$node"})\n'
                            '/ sum(DCGM_FI_DEV_FB_TOTAL{instance=~"$node"})')],
                  unit=c.RATIO, thresholds=c.MEMORY_RATIO_STEPS), width=4, height=4),
    c.Cell(c.stat("Power", "Board power draw summed over the selected GPUs.",
                  [c.target('sum(DCGM_FI_DEV_POWER_USAGE{instance=~"$node"})')], unit=c.WATT,
                  thresholds=c.steps((c.NEUTRAL, None))), width=4, height=4),
    c.Cell(c.stat("GPUs lost", "GPUs NVML no longer answers for (GPU_IS_LOST, e.g. XID 79); "
                  "kvscope_gpu_up stays exported as 0 under the GPU's labels.",
                  [c.target('sum(1 - kvscope_gpu_up{instance=~"$node"})')], unit=c.SHORT,
                  thresholds=c.ZERO_GOOD_STEPS), width=4, height=4),
    c.Cell(c.stat("Nodes with GPU imbalance",
                  f"Nodes whose busiest and idlest GPU differ by more than "
                  f"{c.limit('gpu_util_spread_points'):g} points while the busiest is at least "
                  f"{c.limit('gpu_imbalance_min_busy_percent'):g}% busy: GPUUtilizationImbalance's "
                  "condition, before its `for`.",
                  [c.target(f"sum(\n  ({SPREAD} > bool {c.limit('gpu_util_spread_points'):g})\n"
                            "  * on (instance, Hostname)\n"
                            '  (node:DCGM_FI_DEV_GPU_UTIL:max{instance=~"$node"} >= bool '
                            f"{c.limit('gpu_imbalance_min_busy_percent'):g})\n)")],
                  unit=c.SHORT, thresholds=c.ZERO_GOOD_STEPS), width=4, height=4),
])

utilisation = c.Row("Utilisation", [
    c.Cell(c.heatmap("Utilisation by node and GPU",
                     "One row per GPU, coloured by DCGM_FI_DEV_GPU_UTIL: a node whose GPU 0 "
                     "glows while its peers are dark has the GPU 0 syndrome. Click a row to "
                     "open the node.",
                     [c.target(GPU, "{{instance}} GPU {{gpu}}")], unit=c.PERCENT,
                     maximum=100, links=TO_NODE), width=24, height=10),
    c.Cell(c.timeseries("Imbalance per node (max - min)",
                        "Spread between the busiest and the idlest GPU of each node, in "
                        f"points. Above {c.limit('gpu_util_spread_points'):g} fires "
                        "GPUUtilizationImbalance.",
                        [c.target(SPREAD, "{{instance}}")],
                        unit=c.SHORT, thresholds=c.IMBALANCE_STEPS, show_thresholds=True,
                        minimum=0, maximum=100, links=TO_NODE), width=12),
    c.Cell(c.timeseries("Utilisation standard deviation per node",
                        "Standard deviation of GPU utilisation across each node's GPUs "
                        f"(warning {c.limit('gpu_util_stddev_warning'):g}, "
                        f"critical {c.limit('gpu_util_stddev_critical'):g}).",
                        [c.target(STDDEV, "{{instance}}")],
                        unit=c.SHORT, thresholds=c.STDDEV_STEPS, show_thresholds=True,
                        minimum=0, links=TO_NODE), width=12),
    c.Cell(c.table("Top GPUs by utilisation",
                   "The $topn busiest GPUs with their temperature, power and memory; click a "
                   "row to open its node.",
                   [c.target(top(GPU), table=True, ref="util"),
                    c.target(top('DCGM_FI_DEV_GPU_TEMP{instance=~"$node"}'), table=True,
                             ref="temp"),
                    c.target(top('DCGM_FI_DEV_POWER_USAGE{instance=~"$node"}'), table=True,
                             ref="power"),
                    c.target(top(MEMORY), table=True, ref="memory")],
                   rename={"Value #util": "utilisation %", "Value #temp": "temperature C",
                           "Value #power": "power W", "Value #memory": "memory used / total"},
                   links=ROW_TO_NODE), width=24, height=9),
])

memory_power = c.Row("Memory, power and temperature", [
    c.Cell(c.timeseries("Fullest GPU per node (memory used / total)",
                        "The highest framebuffer used / total of each node's GPUs. Above 0.85 "
                        "warns and above 0.95 pages (GPUMemoryOOMRisk): the OOM hits one GPU, "
                        "not the node average.",
                        [c.target(FULLEST, "{{instance}}")],
                        unit=c.RATIO, thresholds=c.MEMORY_RATIO_STEPS, show_thresholds=True,
                        minimum=0, maximum=1, links=TO_NODE), width=8),
    c.Cell(c.timeseries("Power per node",
                        "Board power summed over each node's GPUs, against the sum of the "
                        "enforced power limits (dashed).",
                        [c.target('sum by (instance) (DCGM_FI_DEV_POWER_USAGE{instance=~"$node"})',
                                  "{{instance}}"),
                         c.target('sum by (instance) '
                                  '(DCGM_FI_DEV_ENFORCED_POWER_LIMIT{instance=~"$node"})',
                                  "{{instance}} limit")],
                        unit=c.WATT, minimum=0, links=TO_NODE), width=8),
    c.Cell(c.timeseries("Hottest GPU per node",
                        "The highest GPU core temperature of each node; the lines are "
                        "GPUTemperatureHigh's.",
                        [c.target('max by (instance) (DCGM_FI_DEV_GPU_TEMP{instance=~"$node"})',
                                  "{{instance}}")],
                        unit=c.CELSIUS, thresholds=c.TEMP_STEPS, show_thresholds=True,
                        links=TO_NODE), width=8),
])

failures = c.Row("Failures", [
    c.Cell(INCIDENT_ONLY.mark(
        c.table("XID errors",
                "XID events counted from NVML's event set since the agent started "
                "(kvscope_gpu_xid_errors_total), by GPU and XID; 79 = fallen off the bus, "
                "48 = double-bit ECC, 94/95 = contained/uncontained ECC, 13/31/43 usually "
                "the application.",
                [c.target('sum by (instance, gpu, xid) '
                          '(kvscope_gpu_xid_errors_total{instance=~"$node"})', table=True)],
                rename={"Value": "events"}, links=ROW_TO_NODE),
        scenario="xid-79", when="a GPU reports an XID"), width=12),
    c.Cell(INCIDENT_ONLY.mark(
        c.table("Lost GPUs",
                "GPUs NVML reports as lost (kvscope_gpu_up 0): drain the node and reset or "
                "replace the GPU.",
                [c.target('kvscope_gpu_up{instance=~"$node"} == 0', table=True)],
                hide=("DCGM_FI_DRIVER_VERSION", "Value", "container", "device"),
                links=ROW_TO_NODE),
        scenario="xid-79", when="NVML loses a GPU (XID 79)"), width=12),
])

dashboard = c.dashboard(
    uid=c.UID_FLEET, title="kvscope / GPU fleet",
    description="Which GPU is hot and why: utilisation, imbalance, memory, power, "
                "temperature and failures across every node.",
    variables=[c.node_variable(c.GPU_INVENTORY, multi=True),
               c.custom_variable("topn", "Top N", ["5", "10", "20", "50"], default="10")],
    rows=[overview, utilisation, memory_power, failures],
    alertnames="GPU.*",
)
