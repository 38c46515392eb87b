"""What the RDMA collector exports: every family's name, type and HELP text, as tables.

The collector (collectors/rdma.py) fills these from parsed records; the parsers know no metric
names. Port families are declared with the record field they read, so adding a port value is one
row here. The README's RDMA metric table lists the same families;
tests/unit/docs/test_rdma_readme.py keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kvscope.parsers.eadm import OOT_COUNTERS
from kvscope.parsers.rdma_sysfs import Port
from kvscope.render.families import Family


@dataclass(frozen=True)
class Spec:
    """One family: its name, its type (gauge, counter, info) and its HELP text."""

    name: str
    kind: str
    help: str

    def new(self) -> Family:
        return Family(self.name, self.help, self.kind)


# ---- static tier: identity, limits, profile verdicts ----------------------------------------

DEVICE_INFO = Spec(
    "kvscope_rdma_device_info",
    "info",
    "RDMA device attributes from /sys/class/infiniband/<device> (fw_ver, hca_type, board_id, "
    "node_guid, device/driver, device/net, device/numa_node); value 1.",
)
VERBS_AVAILABLE = Spec(
    "kvscope_rdma_verbs_available",
    "gauge",
    "1 when pyverbs opened the RDMA devices (limits and probe work); 0 when pyverbs is missing "
    "or finds no device.",
)
ERDMA_COMPAT_MODE = Spec(
    "kvscope_erdma_compat_mode",
    "gauge",
    "1 when Alibaba's erdma driver runs with compat_mode=Y, 0 with N (sysfs "
    "module/erdma/parameters/compat_mode; absent for drivers without it). Engines that exchange "
    "QP numbers out of band (over TCP, not RDMA CM) need it on.",
)
LIMIT_FIELDS = (
    ("max_qp", "queue pairs"),
    ("max_qp_wr", "work requests per queue"),
    ("max_sge", "scatter/gather entries per work request (min of send and receive)"),
    ("max_cq", "completion queues"),
    ("max_cqe", "entries per completion queue"),
    ("max_mr", "memory regions"),
    ("max_pd", "protection domains"),
    ("max_qp_rd_atom", "outstanding RDMA reads/atomics per QP as target"),
)
LIMITS: tuple[tuple[str, Spec], ...] = tuple(
    (
        field,
        Spec(
            f"kvscope_rdma_device_{field}",
            "gauge",
            f"Device limit {field}: {what}. pyverbs Context.query_device() (ibv_query_device).",
        ),
    )
    for field, what in LIMIT_FIELDS
)
ACTIVE_MTU = Spec(
    "kvscope_rdma_port_active_mtu_bytes",
    "gauge",
    "Active MTU of the port in bytes. pyverbs Context.query_port().",
)
PROFILE_FITS = Spec(
    "kvscope_rdma_qp_profile_fits",
    "gauge",
    "1 when the QP profile's caps (SGEs, work requests, inline data) fit the device's limits "
    "from ibv_query_device (and eRDMA's known per-direction limits: 6 send SGEs, 1 receive SGE, "
    "96 B inline); 0 = QP creation will fail.",
)

# ---- fast tier: ports ------------------------------------------------------------------------

PORT_INFO = Spec(
    "kvscope_rdma_port_info",
    "info",
    "Port attributes from sysfs: link_layer, and width and speed from the rate string "
    '("200 Gb/sec (4X HDR)"); value 1.',
)
PortValue = Callable[[Port], float | None]
PortValues = Callable[[Port], Mapping[str, int]]

# One series per port, in exposition order; a value of None leaves the port's series out.
PORT_VALUES: tuple[tuple[Spec, PortValue], ...] = (
    (
        Spec(
            "kvscope_rdma_port_state",
            "gauge",
            "Logical port state, sysfs ports/<n>/state: 1 DOWN, 2 INIT, 3 ARMED, 4 ACTIVE, "
            "5 ACTIVE_DEFER.",
        ),
        lambda p: p.state.value if p.state is not None else None,
    ),
    (
        Spec(
            "kvscope_rdma_port_physical_state",
            "gauge",
            "Physical port state, sysfs ports/<n>/phys_state: 1 Sleep, 2 Polling, 3 Disabled, "
            "4 PortConfigurationTraining, 5 LinkUp, 6 LinkErrorRecovery, 7 Phy Test.",
        ),
        lambda p: p.phys_state.value if p.phys_state is not None else None,
    ),
    (
        Spec(
            "kvscope_rdma_port_rate_bytes_per_second",
            "gauge",
            "Port rate from sysfs ports/<n>/rate (Gb/s x 125000000). On eRDMA this is the vNIC "
            "speed, not the instance's bandwidth quota.",
        ),
        lambda p: p.rate.bytes_per_second if p.rate is not None else None,
    ),
    (
        Spec(
            "kvscope_rdma_port_transmit_bytes_total",
            "counter",
            "Bytes sent: PMA port_xmit_data(_64) x 4 (it counts 4-byte words) on IB/RoCE; without "
            "PMA, hw_counters bytes: erdma (hw_)tx_bytes_cnt, irdma ip4OutOctets+ip6OutOctets, "
            "bnxt_re/EFA tx_bytes.",
        ),
        lambda p: p.traffic.tx_bytes,
    ),
    (
        Spec(
            "kvscope_rdma_port_receive_bytes_total",
            "counter",
            "Bytes received: PMA port_rcv_data(_64) x 4 on IB/RoCE; without PMA, hw_counters "
            "bytes: erdma (hw_)rx_bytes_cnt, irdma ip4InOctets+ip6InOctets, bnxt_re/EFA rx_bytes.",
        ),
        lambda p: p.traffic.rx_bytes,
    ),
    (
        Spec(
            "kvscope_rdma_port_transmit_packets_total",
            "counter",
            "Packets sent: PMA port_xmit_packets(_64); without PMA, erdma (hw_)tx_packets_cnt, "
            "irdma ip4OutPkts+ip6OutPkts, bnxt_re/EFA tx_pkts.",
        ),
        lambda p: p.traffic.tx_packets,
    ),
    (
        Spec(
            "kvscope_rdma_port_receive_packets_total",
            "counter",
            "Packets received: PMA port_rcv_packets(_64); without PMA, erdma (hw_)rx_packets_cnt, "
            "irdma ip4InPkts+ip6InPkts, bnxt_re/EFA rx_pkts.",
        ),
        lambda p: p.traffic.rx_packets,
    ),
    (
        Spec(
            "kvscope_rdma_port_saturated_counters",
            "gauge",
            "PMA counters of the port pinned at their maximum (2^width-1): the legacy 32-bit table "
            "saturates instead of wrapping, so their rates read 0.",
        ),
        lambda p: len(p.saturated) if p.counters else None,
    ),
)

# One series per port and file (label `counter`), in exposition order.
PORT_FILES: tuple[tuple[Spec, PortValues], ...] = (
    (
        Spec(
            "kvscope_rdma_port_counter_total",
            "counter",
            "Every PMA counter in sysfs ports/<n>/counters/, raw (port_xmit_data and port_rcv_data "
            "in 4-byte words; legacy counters saturate, see kvscope_rdma_port_saturated_counters).",
        ),
        lambda p: {**dict(sorted(p.counters.items())), **dict(sorted(p.counters_ext.items()))},
    ),
    (
        Spec(
            "kvscope_rdma_hw_counter_total",
            "counter",
            "Every driver counter in sysfs ports/<n>/hw_counters/ (mlx5 Q and congestion counters, "
            "both eRDMA drivers' counters, irdma, bnxt_re, EFA), raw; lifespan and current levels "
            "(kvscope_rdma_hw_level) excluded. mlx5 Q counters are 32-bit and wrap.",
        ),
        lambda p: dict(sorted(p.hw_counters.items())),
    ),
    (
        Spec(
            "kvscope_rdma_hw_level",
            "gauge",
            "Driver hw_counters/ files that hold a current level, not a count: bnxt_re active_* "
            "(resources in use), watermark_* (high-water marks since driver load), "
            "db_fifo_register; raw.",
        ),
        lambda p: dict(sorted(p.hw_gauges.items())),
    ),
)

# Reasons of the RDMA collector in kvscope_collector_errors_total (each sets its tier's _up to 0),
# and the reasons of SYSFS_READ_ERRORS. The README's RDMA section names every one.
ERROR_REASONS = (
    "sysfs_timeout",
    "eadm_timeout",
    "eadm_too_large",
    "eadm_failed",
    "eadm_parse",
    "rdma_tool_timeout",
    "rdma_tool_too_large",
)
READ_ERROR_REASONS = ("timeout", "vanished")

SYSFS_READ_ERRORS = Spec(
    "kvscope_rdma_sysfs_read_errors_total",
    "counter",
    "sysfs reads of an RDMA device that failed, by reason: timeout (the device's reads did not "
    "return within collectors.rdma.sysfs_timeout; its series are left out while it hangs) or "
    "vanished (a counter file listed in its directory was gone when opened; its previous value "
    "is kept for that poll).",
)
PARSE_ERRORS = Spec(
    "kvscope_rdma_parse_errors_total",
    "counter",
    "Values the RDMA collector could not parse, by source (sysfs, eadm, rdma_tool, verbs): a new "
    "driver or tool format.",
)

# ---- slow tier: eadm, rdma tool, probe, logs -------------------------------------------------

# The stem of the stable kvscope_erdma_<stem>_total family each OOT driver counter feeds. The
# stems are the shaowenchen/erdma-exporter names so its dashboards translate by prefix: "_cnt"
# dropped, a leading "erdma_" dropped (it would double the prefix), and the exporter's
# readability renames.
_EADM_RENAMES = {
    "accept_total_cnt": "accept",
    "connect_total_cnt": "connect",
    "reject_cnt": "reject",
    "cmdq_comp_cnt": "cmdq_completed",
    "hw_tx_reqs_cnt": "hw_tx_requests",
}
EADM_NAMES: Mapping[str, str] = {
    key: "kvscope_erdma_"
    f"{_EADM_RENAMES.get(key, key.removesuffix('_cnt').removeprefix('erdma_'))}_total"
    for key in OOT_COUNTERS
}
EADM_OTHER = Spec(
    "kvscope_erdma_eadm_counter_total",
    "counter",
    "eadm stat counters kvscope has no stable name for, passed through by their eadm key.",
)
DRIVER_INFO = Spec(
    "kvscope_erdma_driver_info", "info", "erdma kernel driver version from `eadm ver`; value 1."
)


def eadm_spec(key: str) -> Spec:
    """The family of one of the driver's counters (a key of EADM_NAMES)."""
    if "limit_drop" in key:
        text = (
            f"eadm stat {key}: packets dropped because the instance's eRDMA bandwidth (bps) "
            "or packet-rate (pps) quota was hit. The 25 Gb/s port rate hides this quota."
        )
    elif key == "verbs_create_qp_failed_cnt":
        text = (
            "eadm stat verbs_create_qp_failed_cnt: failed ibv_create_qp calls (caps above "
            "the device limits, e.g. more than 1 receive SGE, or out of QPNs)."
        )
    else:
        text = f"eadm stat {key} (Alibaba erdma driver counter, since driver load)."
    return Spec(EADM_NAMES[key], "counter", text)


RESOURCES = Spec(
    "kvscope_rdma_resources",
    "gauge",
    "RDMA resources in use per device, by type (qp, cq, mr, pd, ctx, cm_id, srq), from "
    '`rdma -j resource show`. Compare type="qp" with kvscope_rdma_device_max_qp.',
)
PROBE_SUCCESS = Spec(
    "kvscope_rdma_qp_probe_success",
    "gauge",
    "1 when an RC QP with the profile's caps was created (and destroyed) on the device; 0 with "
    "the reason (errno name, e.g. EINVAL) when creation failed. Opt-in "
    "(collectors.rdma.probe), slow tier.",
)
PROBE_DURATION = Spec(
    "kvscope_rdma_qp_probe_duration_seconds",
    "gauge",
    "Time the create-QP probe took (open, PD, CQ, QP, destroy).",
)
APP_QP_FAILURES = Spec(
    "kvscope_rdma_app_qp_failures_total",
    "counter",
    "QP create/modify failure lines seen in followed engine logs (Mooncake, DLSlime, UCX/NIXL, "
    "perftest), by kind, framework and the pod named by the log path. Counted since the agent "
    "started.",
)
