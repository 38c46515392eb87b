"""NVLink and topology: is the KV cache travelling on the path it should?

Per-GPU NVLink totals are always exported; per-link series need the nvlink collector's opt-ins
(`collectors.nvlink.per_link`, `per_link_bytes`) and stay empty without them.
"""

from dashboards import common as c

INCIDENT_ONLY = c.IncidentOnly()

SEL = c.ON_NODE_GPU
PER_LINK = "collectors.nvlink.per_link and per_link_bytes are on"
TO_PD = c.data_links(("PD group ${__data.fields.pd_group}",
                      c.dashboard_url(c.UID_PD, pd_group="${__data.fields.pd_group}")))

throughput = c.Row("Throughput", [
    c.Cell(c.timeseries("NVLink transmit per GPU",
                        "Data bytes sent over all of the GPU's links (field 138).",
                        [c.target(f"rate(kvscope_nvlink_transmit_bytes_total{{{SEL}}}"
                                  "[$__rate_interval])", "GPU {{gpu}}")],
                        unit=c.BYTES_PER_SECOND, minimum=0), width=8),
    c.Cell(c.timeseries("NVLink receive per GPU",
                        "Data bytes received over all of the GPU's links (field 139).",
                        [c.target(f"rate(kvscope_nvlink_receive_bytes_total{{{SEL}}}"
                                  "[$__rate_interval])", "GPU {{gpu}}")],
                        unit=c.BYTES_PER_SECOND, minimum=0), width=8),
    c.Cell(c.timeseries("NVLink use of capacity",
                        "Transmit rate over the GPU's capacity (active links x slowest "
                        "link's rate per direction).",
                        [c.target(f"rate(kvscope_nvlink_transmit_bytes_total{{{SEL}}}"
                                  "[$__rate_interval])\n"
                                  "/ on (instance, gpu) (\n"
                                  "  max by (instance, gpu) "
                                  f"(kvscope_nvlink_links_active{{{SEL}}})\n"
                                  "  * min by (instance, gpu) "
                                  f"(kvscope_nvlink_link_speed_bytes_per_second{{{SEL}}})\n)",
                                  "GPU {{gpu}}")],
                        unit=c.RATIO, minimum=0, maximum=1), width=8),
    c.Cell(INCIDENT_ONLY.mark(
        c.timeseries("NVLink transmit per link",
                     "Data bytes sent per link (field 138 per link).",
                     [c.target(f"rate(kvscope_nvlink_link_transmit_bytes_total{{{SEL}}}"
                               "[$__rate_interval])", "GPU {{gpu}} link {{link}}")],
                     unit=c.BYTES_PER_SECOND, minimum=0),
        scenario="nvlink-degraded", when=PER_LINK), width=24),
])

health = c.Row("Link health", [
    c.Cell(c.bar_gauge("Links down per GPU",
                       "NVLinks NVML reports minus the active ones: above 0 fires NVLinkDown; "
                       "traffic then shares the remaining links, or falls back to PCIe.",
                       [c.target(f"kvscope_nvlink_links{{{SEL}}}\n"
                                 f"- kvscope_nvlink_links_active{{{SEL}}}", "GPU {{gpu}}")],
                       unit=c.SHORT, thresholds=c.ZERO_GOOD_STEPS, maximum=18), width=8),
    c.Cell(c.timeseries("NVLink errors",
                        "Replay, recovery and CRC errors per second, summed over each GPU's "
                        "links: a climbing rate precedes a link going down.",
                        [c.target(f"sum by (gpu, error) (rate(kvscope_nvlink_errors_total{{{SEL}}}"
                                  "[$__rate_interval]))", "GPU {{gpu}} {{error}}")],
                        unit=c.PER_SECOND, minimum=0, thresholds=c.RATE_OF_BAD_STEPS), width=8),
    c.Cell(INCIDENT_ONLY.mark(
        c.table("Links down",
                "Each link NVML reports inactive, with its GPU.",
                [c.target(f"kvscope_nvlink_link_up{{{SEL}}} == 0", table=True)],
                hide=("Value", "UUID", "Hostname")),
        scenario="nvlink-degraded", when=f"a link is down and {PER_LINK}"), width=8),
    c.Cell(c.table("NVLink generation and peers",
                   "NVLink version and what sits on the other end (GPU or NVSwitch).",
                   [c.target(c.keyed(f"kvscope_nvlink_link_info{{{SEL}}}\n"
                                     "  * on (instance, gpu) group_left ()\n"
                                     f"  kvscope_nvlink_links{{{SEL}}}",
                                     "gpu", "version", "remote_type"), table=True)],
                   rename={"Value": "links"}), width=24, height=7),
])

topology = c.Row("Topology", [
    c.Cell(c.matrix_table("GPU to GPU paths",
                          "The topology matrix as nvidia-smi topo -m names it: NV# = joined "
                          "by # NVLinks, PIX/PXB = PCIe switch, NODE = same NUMA node, "
                          "SYS = across the CPU interconnect.",
                          f"kvscope_gpu_p2p_link_info{{{SEL}}}",
                          rows="gpu", columns="peer_gpu", value="link_type"), width=12,
           height=10),
    c.Cell(c.matrix_table("GPU to NIC paths",
                          "PCIe path from each GPU to each RDMA NIC: PIX or PXB is what "
                          "GPUDirect RDMA wants; NODE or SYS sends the KV cache through the CPU.",
                          f"kvscope_gpu_nic_affinity_info{{{SEL}}}",
                          rows="gpu", columns="nic", value="path"), width=12, height=10),
    c.Cell(c.table("CPU and NUMA affinity",
                   "CPUs and NUMA node nearest each GPU: pin the serving process there.",
                   [c.target(f"kvscope_gpu_cpu_affinity_info{{{SEL}}}", table=True)],
                   hide=("Value", "UUID", "Hostname")), width=12, height=7),
    c.Cell(c.table("Node placement",
                   "The node's switch and switch chain (Volcano HyperNodes or node labels).",
                   [c.target(f"kvscope_node_network_info{{{c.ON_NODE}}}", table=True)],
                   hide=("Value",)), width=12, height=7),
])

pd_paths = c.Row("PD pairs", [
    c.Cell(c.table("PD pairs: path and IPC verdict",
                   "Each prefill/decode pair of a PD group, the best physical path between "
                   "their GPUs, and whether their containers can use it for CUDA IPC (0 with "
                   "the reason: e.g. no shared IPC namespace, so the KV cache goes over TCP "
                   "while NVLink stays idle). Click a row to open the PD group.",
                   [c.target(f"kvscope_pd_pair_ipc_possible{{{c.ON_NODE}}}\n"
                             "* on (instance, namespace, pd_group, prefill_pod, decode_pod)\n"
                             "  group_left (path, prefill_gpus, decode_gpus)\n"
                             f"  kvscope_pd_pair_path_info{{{c.ON_NODE}}}", table=True)],
                   rename={"Value": "IPC possible"},
                   mappings=[{"type": "value", "options": {
                       "0": {"text": "no", "color": c.BAD, "index": 0},
                       "1": {"text": "yes", "color": c.GOOD, "index": 1}}}],
                   links=TO_PD), width=24, height=7),
    c.Cell(c.table("GPU visibility per container",
                   "What each GPU container can see: privileged, host IPC, "
                   "NVIDIA_VISIBLE_DEVICES and CUDA_VISIBLE_DEVICES.",
                   [c.target(f"kvscope_pod_gpu_visibility_info{{{c.ON_NODE}}}", table=True)],
                   hide=("Value",)), width=24, height=6),
])

dashboard = c.dashboard(
    uid=c.UID_NVLINK, title="kvscope / NVLink and topology",
    description="NVLink throughput, errors and links down per GPU and per link; the GPU, NIC "
                "and CPU topology; PD pairs with their path and IPC verdict.",
    variables=[c.node_variable("kvscope_gpu_p2p_link_info", multi=False), c.gpu_variable()],
    rows=[throughput, health, topology, pd_paths],
    alertnames="NVLink.*|TensorParallel.*|PDPair.*|KVTransferBypassing.*|PDGroupSpans.*",
)
