"""Doctor section: RDMA devices, ports, limits, QP profiles that do not fit, and what to do.

Critical: a QP profile that does not fit a device (the engine's first transfer will fail with
"Failed to create QP"), or a down port on a device that carries KV transfer
(collectors.rdma.kv_transfer_devices; empty = every RDMA device).
"""

from __future__ import annotations

from collections import defaultdict

from kvscope.analysis.qp_profiles import DeviceLimits, misfits
from kvscope.doctor import SECTIONS, Finding, Labels, Section, Severity, Snapshot, samples

QP_USAGE_WARN = 0.85
PORT_ACTIVE = 4

ERDMA_SGE_FIX = (
    "eRDMA takes 1 receive SGE (6 send SGEs, 96 B inline) and reports max_sge 1: configure the "
    "engine to ask for max_recv_sge 1 (DLSlime >= 0.0.1.post8 does; Mooncake clamps to max_sge "
    "by itself). Load the erdma driver in compat mode (module parameter compat_mode=Y) when the "
    "engine sets up connections out of band (TCP exchange of QP numbers) instead of RDMA CM.")
GENERIC_SGE_FIX = ("lower the engine's QP caps to the device limits shown above, or use an engine "
                   "build that clamps them to ibv_query_device's max_sge and max_qp_wr")
THROTTLE_FIX = (
    "the eRDMA port's 25 Gb/s is the vNIC's nominal speed, not the instance's bandwidth quota: "
    "the quota is throttling KV transfer. Compare kvscope_rdma_port_transmit_bytes_total's rate "
    "with the instance type's documented eRDMA bandwidth; use a larger instance, spread transfers "
    "over more devices, or shrink KV transfers (e.g. fewer, larger batches)")


def _by(snap: Snapshot, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(labels.get(k, "") for k in keys): value
            for labels, value in samples(snap, name)}


async def rdma_section(snap: Snapshot) -> Section:
    section = Section("RDMA")
    devices = {labels["device"]: labels for labels, _ in samples(snap,
                                                                  "kvscope_rdma_device_info")}
    _collector_health(snap, section)
    if not devices:
        section.lines.append("no RDMA devices found")
        return section
    _device_lines(snap, devices, section)
    _port_findings(snap, devices, section)
    _rate_findings(snap, devices, section)
    _profile_findings(snap, devices, section)
    _counter_findings(snap, section)
    _compat_mode_finding(snap, devices, section)
    return section


COMPAT_FIX = (
    "if an engine on this node sets up its QPs out of band (QP numbers exchanged over TCP "
    "instead of RDMA CM), reload the driver with compat mode: `modprobe -r erdma && modprobe "
    "erdma compat_mode=Y`, and make it stick with `options erdma compat_mode=Y` in "
    "/etc/modprobe.d/ (drain the node first: every eRDMA QP goes with the module)")


def _compat_mode_finding(snap: Snapshot, devices: dict[str, Labels], section: Section) -> None:
    """Alibaba's erdma driver without compat_mode: RDMA-CM engines connect, engines that swap QP
    numbers over TCP do not (their QPs never reach RTR). A warning, since the agent cannot see
    which way an engine connects."""
    compat = [value for _, value in samples(snap, "kvscope_erdma_compat_mode")]
    erdma = sorted(d for d, lb in devices.items() if lb.get("driver") == "erdma")
    if compat == [0.0] and erdma:
        section.findings.append(Finding(
            Severity.WARNING, f"erdma driver runs without compat_mode ({', '.join(erdma)}): "
            "engines that exchange QP numbers out of band cannot connect", COMPAT_FIX))


def _collector_health(snap: Snapshot, section: Section) -> None:
    health = snap.health.get("rdma")
    if health is not None and not health["up"] and health["errors"]:
        errors = "; ".join(str(e) for e in health["errors"])
        section.findings.append(Finding(
            Severity.WARNING, f"RDMA collector partly down: {errors}",
            "check that eadm and rdma answer on this node (run them by hand), and for "
            "sysfs_timeout that reading the named device's files under "
            "/sys/class/infiniband/<device>/ports returns; a hung eadm or sysfs read usually "
            "means the driver or the NIC's firmware is wedged"))


def _device_lines(snap: Snapshot, devices: dict[str, Labels],
                  section: Section) -> None:
    rate = _by(snap, "kvscope_rdma_port_rate_bytes_per_second", "device", "port")
    state = _by(snap, "kvscope_rdma_port_state", "device", "port")
    layer = {(lb["device"], lb["port"]): lb.get("link_layer", "")
             for lb, _ in samples(snap, "kvscope_rdma_port_info")}
    max_qp = _by(snap, "kvscope_rdma_device_max_qp", "device")
    max_sge = _by(snap, "kvscope_rdma_device_max_sge", "device")
    max_wr = _by(snap, "kvscope_rdma_device_max_qp_wr", "device")
    qps = _by(snap, "kvscope_rdma_resources", "device", "type")
    section.lines.append(f"{'device':<10} {'driver':<10} {'port':<4} {'state':<6} {'Gb/s':>6} "
                         f"{'layer':<10} {'max_qp':>7} {'max_sge':>7} {'max_qp_wr':>9} "
                         f"{'QPs':>7}")
    for dev in sorted(devices):
        ports = sorted(p for d, p in state if d == dev) or ["-"]
        for port in ports:
            st = state.get((dev, port))
            gbps = rate.get((dev, port), 0.0) / 125e6
            section.lines.append(
                f"{dev:<10} {devices[dev].get('driver', ''):<10} {port:<4} "
                f"{'ACTIVE' if st == PORT_ACTIVE else 'DOWN' if st == 1 else st or '-'!s:<6} "
                f"{gbps:>6.0f} {layer.get((dev, port), ''):<10} "
                f"{_num(max_qp.get((dev,))):>7} {_num(max_sge.get((dev,))):>7} "
                f"{_num(max_wr.get((dev,))):>9} {_num(qps.get((dev, 'qp'))):>7}")
        in_use, limit = qps.get((dev, "qp")), max_qp.get((dev,))
        if in_use is not None and limit and in_use / limit >= QP_USAGE_WARN:
            section.findings.append(Finding(
                Severity.WARNING, f"{dev}: {in_use:.0f} QPs in use of max_qp {limit:.0f}: new "
                "connections will fail with ENOMEM",
                "look for a QP leak (engines that reconnect without destroying QPs); "
                "`rdma resource show qp link " + dev + "` lists them by process"))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _port_findings(snap: Snapshot, devices: dict[str, Labels],
                   section: Section) -> None:
    kv = set(snap.config.collectors.rdma.kv_transfer_devices) or set(devices)
    phys = _by(snap, "kvscope_rdma_port_physical_state", "device", "port")
    for (dev, port), st in sorted(_by(snap, "kvscope_rdma_port_state", "device",
                                      "port").items()):
        if st == PORT_ACTIVE or dev not in kv:
            continue
        section.findings.append(Finding(
            Severity.CRITICAL, f"{dev} port {port} is not ACTIVE (state {st:.0f}, phys_state "
            f"{phys.get((dev, port), 0):.0f}): KV transfer over it fails or falls back",
            "check the cable/transceiver and the switch port (ibstat, `ip link` for RoCE); "
            "drain the node's PD pods until the link is back"))
    saturated = _by(snap, "kvscope_rdma_port_saturated_counters", "device", "port")
    for (dev, port), n in sorted(saturated.items()):
        if n > 0:
            section.findings.append(Finding(
                Severity.WARNING, f"{dev} port {port}: {n:.0f} PMA counters pinned at their "
                "maximum (legacy 32-bit counters saturate): their rates read 0",
                "reset them (perfquery -R) or use a kernel/firmware with extended 64-bit PMA "
                "counters; kvscope_rdma_port_counter_total shows which"))


DEGRADED_RATE = 0.75  # below this share of its peers' rate a port has renegotiated down


def _rate_findings(snap: Snapshot, devices: dict[str, Labels], section: Section) -> None:
    """An active port slower than the other ports of the same adapter model on this node: the
    link trained at a lower speed or width (a bad cable, transceiver or switch port). sysfs
    gives the negotiated rate only, so the node's own peers are the measure of normal."""
    rates = _by(snap, "kvscope_rdma_port_rate_bytes_per_second", "device", "port")
    state = _by(snap, "kvscope_rdma_port_state", "device", "port")
    info: dict[tuple[str, ...], Labels] = {
        (lb["device"], lb["port"]): lb for lb, _ in samples(snap, "kvscope_rdma_port_info")}
    groups: dict[tuple[str, str], list[tuple[str, ...]]] = defaultdict(list)
    for key in rates:
        device = devices.get(key[0], {})
        model = device.get("hca_type") or device.get("board_id") or device.get("driver", "")
        groups[(model, info.get(key, {}).get("link_layer", ""))].append(key)
    for (model, layer), ports in sorted(groups.items()):
        normal = max(rates[p] for p in ports)
        for dev, port in sorted(ports):
            rate = rates[(dev, port)]
            if state.get((dev, port)) != PORT_ACTIVE or rate >= normal * DEGRADED_RATE:
                continue
            best = next(p for p in ports if rates[p] == normal)
            section.findings.append(Finding(
                Severity.WARNING, f"{dev} port {port} runs at {rate / 125e6:.0f} Gb/s"
                f"{_speed_text(info.get((dev, port)))} while {best[0]} port {best[1]} "
                f"(same {model or 'adapter'} {layer}) runs at {normal / 125e6:.0f} Gb/s"
                f"{_speed_text(info.get(best))}: the link renegotiated down, so KV transfer "
                "over it has a fraction of its bandwidth",
                "reseat or replace the cable/transceiver and check the switch port (ibstat "
                f"{dev} shows the rate; mlxlink -d {dev} the reason); until then steer KV "
                "transfer to the other NICs"))


def _speed_text(labels: Labels | None) -> str:
    if not labels or not labels.get("speed"):
        return ""
    return f" ({labels.get('width', '')} {labels['speed']})".replace("( ", "(")


def _limits(snap: Snapshot) -> dict[str, DeviceLimits]:
    fields = ("max_qp", "max_qp_wr", "max_sge")
    values: dict[str, dict[str, int]] = defaultdict(dict)
    for field in fields:
        for (dev,), value in _by(snap, f"kvscope_rdma_device_{field}", "device").items():
            values[dev][field] = int(value)
    return {dev: DeviceLimits(device=dev, **v) for dev, v in values.items()
            if len(v) == len(fields)}


def _profile_findings(snap: Snapshot, devices: dict[str, Labels],
                      section: Section) -> None:
    profiles = {p.name: p for p in snap.config.collectors.rdma.qp_profiles}
    limits = _limits(snap)
    probes = {(lb["device"], lb["profile"]): (value, lb.get("reason", ""))
              for lb, value in samples(snap, "kvscope_rdma_qp_probe_success")}
    fits = _by(snap, "kvscope_rdma_qp_profile_fits", "device", "profile")
    if not fits:
        section.lines.append("QP profiles: not checked (no device limits: pyverbs missing or no "
                             "device)")
    for (dev, name), ok in sorted(fits.items()):
        probe = probes.get((dev, name))
        if ok and (probe is None or probe[0]):
            continue
        erdma = devices.get(dev, {}).get("driver") == "erdma" or dev.startswith("erdma")
        profile, limit = profiles.get(name), limits.get(dev)
        why = ", ".join(misfits(profile, limit, erdma=erdma)) if profile and limit else ""
        probe_text = f"; probe: create QP failed with {probe[1]}" if probe and not probe[0] \
            else ""
        section.findings.append(Finding(
            Severity.CRITICAL, f"QP profile {name} does not fit {dev}"
            f"{': ' + why if why else ''}{probe_text}",
            ERDMA_SGE_FIX if erdma else GENERIC_SGE_FIX))


def _counter_findings(snap: Snapshot, section: Section) -> None:
    drops: dict[str, float] = defaultdict(float)
    for name in ("kvscope_erdma_hw_bps_limit_drop_total",
                 "kvscope_erdma_hw_rx_bps_limit_drop_total",
                 "kvscope_erdma_hw_pps_limit_drop_total",
                 "kvscope_erdma_hw_rx_pps_limit_drop_total"):
        for (dev,), value in _by(snap, name, "device").items():
            drops[dev] += value
    for dev, total in sorted(drops.items()):
        if total > 0:
            section.findings.append(Finding(
                Severity.WARNING, f"{dev}: {total:.0f} packets dropped by the instance's eRDMA "
                "bandwidth/packet-rate quota since the driver loaded", THROTTLE_FIX))
    for (dev,), failed in sorted(_by(snap, "kvscope_erdma_verbs_create_qp_failed_total",
                                     "device").items()):
        if failed > 0:
            section.findings.append(Finding(
                Severity.WARNING, f"{dev}: {failed:.0f} ibv_create_qp calls failed since the "
                "driver loaded (eadm verbs_create_qp_failed_cnt)", ERDMA_SGE_FIX))
    for labels, n in samples(snap, "kvscope_rdma_app_qp_failures_total"):
        where = f"{labels.get('namespace', '')}/{labels.get('pod', '')}".strip("/") or "a log"
        section.findings.append(Finding(
            Severity.WARNING, f"{n:.0f} QP {labels.get('kind', '')} failure lines from "
            f"{labels.get('framework', '')} in {where}",
            "compare the engine's QP caps with the device limits above; on eRDMA see the "
            "max_sge fix"))


SECTIONS.append(rdma_section)
