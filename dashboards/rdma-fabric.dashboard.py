"""RDMA fabric: is the fabric healthy, and can the transfer engines create their queue pairs?

InfiniBand and RoCE ports report PMA and hw counters; Alibaba eRDMA reports through eadm
(`kvscope_erdma_*`), including the instance's bandwidth-quota drops.
"""

from dashboards import common as c

INCIDENT_ONLY = c.IncidentOnly()

SEL = 'instance=~"$node", device=~"$device"'
ERDMA = "the node has Alibaba eRDMA devices (eadm)"

PORT_STATE = [{"type": "value", "options": {
    "1": {"text": "DOWN", "color": c.BAD, "index": 0},
    "2": {"text": "INIT", "color": c.WARN, "index": 1},
    "3": {"text": "ARMED", "color": c.WARN, "index": 2},
    "4": {"text": "ACTIVE", "color": c.GOOD, "index": 3},
    "5": {"text": "ACTIVE_DEFER", "color": c.WARN, "index": 4}}}]
VERDICT = [{"type": "value", "options": {
    "0": {"text": "fails", "color": c.BAD, "index": 0},
    "1": {"text": "fits", "color": c.GOOD, "index": 1}}}]

# Counters whose increase means a sick link, cable or peer (IB PMA and mlx5 hw_counters).
LINK_ERRORS = ("symbol_error|port_rcv_errors|link_downed|link_error_recovery|port_xmit_discards|"
               "local_link_integrity_errors|excessive_buffer_overrun_errors|"
               "port_rcv_remote_physical_errors|port_rcv_switch_relay_errors")
TRANSPORT_ERRORS = ("out_of_sequence|packet_seq_err|local_ack_timeout_err|rnr_nak_retry_err|"
                    "req_cqe_error|resp_cqe_error|req_remote_access_errors|out_of_buffer|"
                    "implied_nak_seq_err|duplicate_request")



def with_port_info(metric: str) -> str:
    """A per-port gauge with the port's attributes, one row per port in merged tables."""
    return c.keyed(f"{metric}{{{SEL}}}\n"
                   "  * on (instance, device, port) group_left (link_layer, width, speed)\n"
                   f"  kvscope_rdma_port_info{{{SEL}}}",
                   "instance", "device", "port", "link_layer", "width", "speed")


def per_device(metric: str) -> str:
    return c.keyed(f"{metric}{{{SEL}}}", "instance", "device")


ports = c.Row("Ports", [
    c.Cell(c.table("Port state",
                   "Logical state, physical state and attributes of every port: anything but "
                   "ACTIVE / LinkUp fires RDMAPortDown.",
                   [c.target(with_port_info("kvscope_rdma_port_state"), table=True,
                             ref="state"),
                    c.target(with_port_info("kvscope_rdma_port_physical_state"), table=True,
                             ref="phys"),
                    c.target(with_port_info("kvscope_rdma_port_rate_bytes_per_second"),
                             table=True, ref="rate")],
                   rename={"Value #state": "state", "Value #phys": "physical state",
                           "Value #rate": "rate (bytes/s)"},
                   mappings=PORT_STATE), width=24, height=7),
    c.Cell(c.timeseries("Port transmit against port rate",
                        "Bytes sent per port; the dashed lines are the ports' rates. On eRDMA "
                        "the rate is the vNIC speed, not the instance's bandwidth quota.",
                        [c.target(f"rate(kvscope_rdma_port_transmit_bytes_total{{{SEL}}}"
                                  "[$__rate_interval])", "{{instance}} {{device}} TX"),
                         c.target(f"kvscope_rdma_port_rate_bytes_per_second{{{SEL}}}",
                                  "{{instance}} {{device}} rate")],
                        unit=c.BYTES_PER_SECOND, minimum=0), width=12),
    c.Cell(c.timeseries("Port receive against port rate",
                        "Bytes received per port; the dashed lines are the ports' rates.",
                        [c.target(f"rate(kvscope_rdma_port_receive_bytes_total{{{SEL}}}"
                                  "[$__rate_interval])", "{{instance}} {{device}} RX"),
                         c.target(f"kvscope_rdma_port_rate_bytes_per_second{{{SEL}}}",
                                  "{{instance}} {{device}} rate")],
                        unit=c.BYTES_PER_SECOND, minimum=0), width=12),
    c.Cell(c.timeseries("Port use of rate",
                        "The busier direction over the port rate: near 1 the port is the "
                        "bottleneck.",
                        [c.target(f"port:kvscope_rdma_port_throughput:ratio_rate{{{SEL}}}",
                                  "{{instance}} {{device}}")],
                        unit=c.RATIO, minimum=0, maximum=1), width=12),
    c.Cell(c.timeseries("Packets",
                        "Packets per second per port and direction.",
                        [c.target(f"rate(kvscope_rdma_port_transmit_packets_total{{{SEL}}}"
                                  "[$__rate_interval])", "{{instance}} {{device}} TX"),
                         c.target(f"rate(kvscope_rdma_port_receive_packets_total{{{SEL}}}"
                                  "[$__rate_interval])", "{{instance}} {{device}} RX")],
                        unit=c.PER_SECOND, minimum=0), width=12),
])

errors = c.Row("Errors", [
    c.Cell(c.timeseries("Link errors (InfiniBand / RoCE PMA)",
                        "Symbol, receive, link-down and recovery errors per second from the "
                        "PMA counters: a sick cable or port.",
                        [c.target("sum by (instance, device, counter) (rate(\n"
                                  f'  kvscope_rdma_port_counter_total{{{SEL}, '
                                  f'counter=~"{LINK_ERRORS}"}}[$__rate_interval]\n))',
                                  "{{instance}} {{device}} {{counter}}")],
                        unit=c.PER_SECOND, minimum=0, thresholds=c.RATE_OF_BAD_STEPS),
           width=12),
    c.Cell(c.timeseries("Transport errors (hw counters)",
                        "Sequence errors, ACK timeouts, RNR retries and completion errors per "
                        "second: a congested fabric or a peer that stopped posting receives.",
                        [c.target("sum by (instance, device, counter) (rate(\n"
                                  f'  kvscope_rdma_hw_counter_total{{{SEL}, '
                                  f'counter=~"{TRANSPORT_ERRORS}"}}[$__rate_interval]\n))',
                                  "{{instance}} {{device}} {{counter}}")],
                        unit=c.PER_SECOND, minimum=0, thresholds=c.RATE_OF_BAD_STEPS),
           width=12),
    c.Cell(INCIDENT_ONLY.mark(
        c.timeseries("eRDMA bandwidth-quota drops",
                     "Packets the eRDMA device dropped because the instance's bps or pps quota "
                     "was hit, while the port still reports its nominal rate "
                     "(RDMABandwidthThrottled).",
                     [c.target(f"rate(kvscope_erdma_hw_bps_limit_drop_total{{{SEL}}}"
                               "[$__rate_interval])", "{{instance}} {{device}} TX bps"),
                      c.target(f"rate(kvscope_erdma_hw_pps_limit_drop_total{{{SEL}}}"
                               "[$__rate_interval])", "{{instance}} {{device}} TX pps"),
                      c.target(f"rate(kvscope_erdma_hw_rx_bps_limit_drop_total{{{SEL}}}"
                               "[$__rate_interval])", "{{instance}} {{device}} RX bps"),
                      c.target(f"rate(kvscope_erdma_hw_rx_pps_limit_drop_total{{{SEL}}}"
                               "[$__rate_interval])", "{{instance}} {{device}} RX pps")],
                     unit=c.PER_SECOND, minimum=0, thresholds=c.RATE_OF_BAD_STEPS),
        scenario="erdma-throttle", when=ERDMA), width=24),
])

queue_pairs = c.Row("Queue pairs", [
    c.Cell(c.timeseries("QPs in use against the device maximum",
                        "Queue pairs in use (rdma resource show) over the device's max_qp: "
                        "near 1 new connections fail (RDMAQPExhaustion).",
                        [c.target(f"device:kvscope_rdma_qp:usage_ratio{{{SEL}}}",
                                  "{{instance}} {{device}}")],
                        unit=c.RATIO, minimum=0, thresholds=c.QP_USAGE_STEPS,
                        show_thresholds=True), width=12),
    c.Cell(c.timeseries("RDMA resources in use",
                        "QPs, CQs, MRs and PDs in use per device.",
                        [c.target(f'kvscope_rdma_resources{{{SEL}, type=~"qp|cq|mr|pd"}}',
                                  "{{instance}} {{device}} {{type}}")],
                        unit=c.SHORT, minimum=0), width=12),
    c.Cell(c.matrix_table("QP profile verdicts",
                          "Whether each transfer engine's QP request (SGEs, WRs, inline size) "
                          "fits the device's limits: `fails` predicts 'Failed to create QP' "
                          "before the engine starts (RDMAQPProfileUnsupported).",
                          f"kvscope_rdma_qp_profile_fits{{{SEL}}}",
                          rows="device", columns="profile", value="Value"), width=12),
    c.Cell(c.matrix_table("QP probe results",
                          "The opt-in create-QP probe: 1 when ibv_create_qp with the profile's "
                          "caps succeeded on the device, 0 when it failed (the reason label "
                          "names the errno).",
                          f"kvscope_rdma_qp_probe_success{{{SEL}}}",
                          rows="device", columns="profile", value="Value"), width=12),
    c.Cell(c.table("Device limits",
                   "The limits the profiles are checked against (ibv_query_device).",
                   [c.target(per_device("kvscope_rdma_device_max_qp"), table=True, ref="qp"),
                    c.target(per_device("kvscope_rdma_device_max_sge"), table=True, ref="sge"),
                    c.target(per_device("kvscope_rdma_device_max_qp_wr"), table=True,
                             ref="wr")],
                   rename={"Value #qp": "max_qp", "Value #sge": "max_sge",
                           "Value #wr": "max_qp_wr"}), width=24, height=6),
    c.Cell(INCIDENT_ONLY.mark(
        c.timeseries("QP create failures",
                     "Queue-pair creations that failed: from the eRDMA driver's own counter, "
                     "and from the engines' logs (`Failed to create QP` lines, opt-in log "
                     "following) by pod and framework.",
                     [c.target(f"rate(kvscope_erdma_verbs_create_qp_failed_total{{{SEL}}}"
                               "[$__rate_interval])", "{{instance}} {{device}} (driver)"),
                      c.target("sum by (namespace, pod, framework, kind) (rate(\n"
                               '  kvscope_rdma_app_qp_failures_total{instance=~"$node"}'
                               "[$__rate_interval]\n))",
                               "{{namespace}}/{{pod}} {{framework}} {{kind}}")],
                     unit=c.PER_SECOND, minimum=0, thresholds=c.RATE_OF_BAD_STEPS),
        scenario="qp-failure", when="queue-pair creation fails"), width=24),
])

dashboard = c.dashboard(
    uid=c.UID_RDMA, title="kvscope / RDMA fabric",
    description="Port throughput against port rate, link and transport errors, port state, "
                "QPs against the device maximum, eRDMA quota drops, QP failures and profile "
                "verdicts.",
    variables=[c.node_variable("kvscope_rdma_port_state", multi=True),
               c.query_variable("device", "Device",
                                'label_values(kvscope_rdma_port_state{instance=~"$node"}, device)',
                                multi=True, include_all=True)],
    rows=[ports, errors, queue_pairs],
    alertnames="RDMA.*",
)
