"""Simulated RDMA: NICs whose counters move with time, written as a real sysfs tree, a fake
`eadm` and a fake `rdma` program, engine logs, and the pyverbs fake (kvscope.sim.verbs).

The collector reads these through its production path: real files under a temporary sysfs root
(rewritten by a background task every REFRESH seconds, each file replaced atomically), real
subprocesses for eadm and rdma (small Python scripts that read the node model's state file), and
pyverbs' names for the limits and the probe.

Default node: 4 x ConnectX-6 InfiniBand HDR 200 Gb/s (mlx5_0..3). The eRDMA node model: one
Alibaba eRDMA device (erdma_0, out-of-tree driver counters, 25 Gb/s port, max_sge 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvscope.parsers.eadm import OOT_COUNTERS
from kvscope.sim import services
from kvscope.sim.node import SimNode
from kvscope.sim.scenarios import Scenario, SimOptions, _node
from kvscope.sim.verbs import fake_pyverbs

REFRESH = 2.5  # seconds between rewrites of the moving sysfs values (half the fast cadence)
MLX5_LIMITS = {"max_qp": 131072, "max_qp_wr": 32768, "max_sge": 30, "max_cq": 16777216,
               "max_cqe": 4194303, "max_mr": 16777216, "max_pd": 16777216, "max_qp_rd_atom": 16}
# erdma_query_device(): max_qp = 1024 * qblocks - 1, max_cq = 2 * max_qp - 1, max_mr = 2 * max_qp;
# max_sge = min(send 6, recv 1).
ERDMA_LIMITS = {"max_qp": 15359, "max_qp_wr": 8192, "max_sge": 1, "max_cq": 30719,
                "max_cqe": 4194304, "max_mr": 30720, "max_pd": 1048576, "max_qp_rd_atom": 128}
MLX5_HIDDEN = (30, 30, 220)  # send SGE, recv SGE, inline bytes
ERDMA_HIDDEN = (6, 1, 96)
MLX5_HW = ("duplicate_request", "implied_nak_seq_err", "local_ack_timeout_err", "out_of_buffer",
           "out_of_sequence", "packet_seq_err", "req_cqe_error", "req_cqe_flush_error",
           "req_remote_access_errors", "req_remote_invalid_request", "resp_cqe_error",
           "resp_cqe_flush_error", "resp_local_length_error", "resp_remote_access_errors",
           "rnr_nak_retry_err", "rx_atomic_requests", "rx_dct_connect", "rx_read_requests",
           "rx_write_requests")
PMA_ZERO = ("VL15_dropped", "excessive_buffer_overrun_errors", "link_downed",
            "link_error_recovery", "local_link_integrity_errors", "port_rcv_constraint_errors",
            "port_rcv_errors", "port_rcv_remote_physical_errors", "port_rcv_switch_relay_errors",
            "port_xmit_constraint_errors", "port_xmit_discards", "symbol_error")
STATE_NAMES = {1: "DOWN", 4: "ACTIVE"}
PHYS_NAMES = {3: "Disabled", 5: "LinkUp"}


@dataclass
class SimRdmaDevice:
    name: str
    driver: str  # mlx5_core | erdma
    pci: str  # sysfs path below devices/
    netdev: str
    numa_node: int
    fw_ver: str
    node_guid: str
    hca_type: str = ""
    board_id: str = ""
    node_type: str = "1: CA"
    link_layer: str = "InfiniBand"
    rate_gbps: float = 200.0
    width: str = "4X"
    speed: str = "HDR"
    tx_bytes_per_s: float = 6.0e9  # KV-transfer load around which traffic waves
    limits: dict[str, int] = field(default_factory=lambda: dict(MLX5_LIMITS))
    hidden: tuple[int, int, int] = MLX5_HIDDEN  # real send SGE, recv SGE, inline limits
    qps_in_use: int = 1536
    phase: float = 0.0
    # faults, as elapsed seconds (None: never)
    down_after: float | None = None
    degrade_after: float | None = None
    degraded: tuple[float, str, str] = (100.0, "4X", "EDR")
    throttle_after: float | None = None
    qp_fail_after: float | None = None

    @property
    def erdma(self) -> bool:
        return self.driver == "erdma"


@dataclass
class SimLog:
    """An engine container's log that gains QP-failure lines once the fault strikes."""

    namespace: str
    pod: str
    uid: str
    container: str
    after: float
    lines: tuple[str, ...]  # written at the fault, then one more every `every` seconds
    every: float = 10.0
    written: int = 0


@dataclass
class SimRdma:
    node: SimNode
    devices: list[SimRdmaDevice] = field(default_factory=list)
    eadm_mode: str = "ok"  # ok | hang | malformed | fail
    driver_version: str = "0.2.38"
    erdma_compat_mode: bool = True  # the erdma module's compat_mode parameter (Alibaba driver)
    logs: list[SimLog] = field(default_factory=list)

    def verbs(self) -> Any:
        return fake_pyverbs(self)

    # ---- the model -------------------------------------------------------------------------

    def _active(self, after: float | None) -> bool:
        return after is not None and self.node.elapsed() >= after

    def port_now(self, dev: SimRdmaDevice) -> tuple[int, int, float, str, str]:
        """(state, phys_state, rate Gb/s, width, speed) now."""
        if self._active(dev.down_after):
            return 1, 3, 10.0, "4X", ""  # a disabled HCA port reports SDR 4X
        if self._active(dev.degrade_after):
            gbps, width, speed = dev.degraded
            return 4, 5, gbps, width, speed
        return 4, 5, dev.rate_gbps, dev.width, dev.speed

    def _traffic_time(self, dev: SimRdmaDevice) -> float:
        """Seconds of traffic so far: a port that went down stops counting."""
        t = self.node.elapsed()
        return min(t, dev.down_after) if dev.down_after is not None else t

    def bytes_sent(self, dev: SimRdmaDevice, share: float = 1.0) -> int:
        t = self._traffic_time(dev)
        rate = dev.tx_bytes_per_s * share
        if dev.degrade_after is not None and t > dev.degrade_after:
            # Capped at 90% of the renegotiated link from the moment it degraded.
            capped = min(rate, 0.9 * dev.degraded[0] * 125e6)
            before = dev.degrade_after
            return int(1e12 + rate * before + capped * (t - before))
        wave = 0.1 * rate * 20 / (2 * math.pi) * (1 - math.cos(2 * math.pi * t / 20 + dev.phase))
        return int(1e12 + rate * t + wave)

    def limit_drops(self, dev: SimRdmaDevice) -> int:
        if dev.throttle_after is None or not self._active(dev.throttle_after):
            return 0
        # The quota starts dropping at once and keeps dropping ~850 packets a second.
        return 1200 + int(850 * (self.node.elapsed() - dev.throttle_after))

    def qp_failures(self, dev: SimRdmaDevice) -> int:
        if dev.qp_fail_after is None or not self._active(dev.qp_fail_after):
            return 0
        # DLSlime's init creates 8 QPs, all rejected; the engine restarts and retries every 10 s.
        return 8 * (1 + int((self.node.elapsed() - dev.qp_fail_after) / 10))

    def qp_create_rejected(self, dev: SimRdmaDevice, cap: Any) -> bool:
        """The kernel's cap check (erdma_qp_validate_cap) with the device's real limits."""
        max_send, max_recv, max_inline = dev.hidden
        wr = dev.limits["max_qp_wr"]
        return (cap.max_send_sge > max_send or cap.max_recv_sge > max_recv
                or cap.max_inline_data > max_inline or not 0 < cap.max_send_wr <= wr
                or not 0 < cap.max_recv_wr <= wr)

    def oot_counters(self, dev: SimRdmaDevice) -> dict[str, int]:
        t = self.node.elapsed()
        tx = self.bytes_sent(dev)
        rx = self.bytes_sent(dev, 0.93)
        failed = self.qp_failures(dev)
        drops = self.limit_drops(dev)
        values = dict.fromkeys(OOT_COUNTERS, 0)
        values.update({
            "listen_create_cnt": 2, "listen_success_cnt": 2, "accept_total_cnt": 16,
            "accept_success_cnt": 16, "connect_total_cnt": 16, "connect_success_cnt": 16,
            "cmdq_submitted_cnt": 4211 + int(t), "cmdq_comp_cnt": 4211 + int(t),
            "cmdq_eq_notify_cnt": 4211, "cmdq_eq_event_cnt": 4211, "cmdq_cq_armed_cnt": 4211,
            "verbs_alloc_pd_cnt": 8, "verbs_alloc_uctx_cnt": 8, "verbs_create_cq_cnt": 8,
            "verbs_create_qp_cnt": 40 + failed, "verbs_create_qp_failed_cnt": failed,
            "verbs_reg_usr_mr_cnt": 64, "hw_tx_reqs_cnt": tx // 65536,
            "hw_tx_packets_cnt": tx // 4096, "hw_tx_bytes_cnt": tx,
            "hw_bps_limit_drop_cnt": drops, "hw_rx_packets_cnt": rx // 4096,
            "hw_rx_bytes_cnt": rx, "hw_rx_bps_limit_drop_cnt": drops // 5,
        })
        return values

    # ---- files -----------------------------------------------------------------------------

    def write_static(self, root: Path) -> None:
        sysfs = root / "sys"
        for dev in self.devices:
            base = sysfs / "class" / "infiniband" / dev.name
            attrs = {"fw_ver": dev.fw_ver, "node_guid": dev.node_guid, "node_type": dev.node_type,
                     "hca_type": dev.hca_type, "board_id": dev.board_id}
            for name, value in attrs.items():
                if value:
                    _write(base / name, value + "\n")
            pci = sysfs / "devices" / dev.pci
            _write(pci / "numa_node", f"{dev.numa_node}\n")
            depth = len(Path(dev.pci).parts) + 1
            _symlink(pci / "driver", "../" * depth + f"bus/pci/drivers/{dev.driver}")
            if not dev.erdma:
                _write(pci / "net" / dev.netdev / "operstate", "up\n")
            _symlink(base / "device", "../../../devices/" + dev.pci)
        if any(dev.erdma for dev in self.devices):
            _write(sysfs / "module" / "erdma" / "parameters" / "compat_mode",
                   "Y\n" if self.erdma_compat_mode else "N\n")
        for script in ("eadm", "rdma"):
            path = root / "bin" / script
            _write(path, _SCRIPT.format(python=sys.executable, tool=script))
            path.chmod(0o755)

    def write_dynamic(self, root: Path) -> None:
        sysfs = root / "sys" / "class" / "infiniband"
        state: dict[str, Any] = {"eadm_mode": self.eadm_mode, "driver_version":
                                 self.driver_version, "eadm": {}, "resources": []}
        for index, dev in enumerate(self.devices):
            port = sysfs / dev.name / "ports" / "1"
            st, phys, gbps, width, speed = self.port_now(dev)
            rate = f"{gbps:g} Gb/sec ({width}{' ' + speed if speed else ''})"
            _write(port / "state", f"{st}: {STATE_NAMES[st]}\n")
            _write(port / "phys_state", f"{phys}: {PHYS_NAMES[phys]}\n")
            _write(port / "rate", rate + "\n")
            _write(port / "link_layer", dev.link_layer + "\n")
            _write(port / "hw_counters" / "lifespan", "10\n")
            if dev.erdma:
                _write(port / "gid_attrs" / "ndevs" / "0", dev.netdev + "\n")
                counters = self.oot_counters(dev)
                for name, value in counters.items():
                    _write(port / "hw_counters" / name, f"{value}\n")
                state["eadm"][dev.name] = counters
            else:
                self._write_mlx5_counters(dev, port)
            state["resources"].append({"ifindex": index, "ifname": dev.name, "pd": 4, "cq": 24,
                                       "qp": dev.qps_in_use, "cm_id": 0, "mr": 96, "ctx": 4,
                                       "srq": 0})
        _write(root / "bin" / "state.json", json.dumps(state))
        self._write_logs(root / "logs" / "pods")

    def _write_mlx5_counters(self, dev: SimRdmaDevice, port: Path) -> None:
        tx, rx = self.bytes_sent(dev), self.bytes_sent(dev, 0.97)
        values = {"port_xmit_data": tx // 4, "port_rcv_data": rx // 4,
                  "port_xmit_packets": tx // 4096, "port_rcv_packets": rx // 4096,
                  "unicast_xmit_packets": tx // 4096, "unicast_rcv_packets": rx // 4096,
                  "multicast_xmit_packets": 0, "multicast_rcv_packets": 12,
                  "port_xmit_wait": int(tx // 2**20)}
        values.update(dict.fromkeys(PMA_ZERO, 0))
        if dev.down_after is not None and self._active(dev.down_after):
            values["link_downed"] = 1
        for name, value in values.items():
            _write(port / "counters" / name, f"{value}\n")
        requests = int(self._traffic_time(dev) * dev.tx_bytes_per_s / 65536)
        for name in MLX5_HW:
            value = requests if name == "rx_write_requests" else 0
            _write(port / "hw_counters" / name, f"{value}\n")

    def _write_logs(self, pods: Path) -> None:
        t = self.node.elapsed()
        for entry in self.logs:
            path = pods / f"{entry.namespace}_{entry.pod}_{entry.uid}" / entry.container / "0.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            due = 0 if t < entry.after else len(entry.lines) + int((t - entry.after) / entry.every)
            with path.open("a", encoding="utf-8") as f:
                if entry.written == 0 and not path.stat().st_size:
                    f.write("2026-01-01T00:00:00.000000Z stdout F INFO: engine starting\n")
                while entry.written < due:
                    line = entry.lines[entry.written % len(entry.lines)]
                    f.write(f"2026-01-01T00:00:{entry.written % 60:02d}.000000Z stderr F {line}\n")
                    entry.written += 1


_SCRIPT = '''#!{python}
"""Fake `{tool}` of kvscope's simulated node: answers from the node model's state file."""
import json, pathlib, sys, time
state = json.loads((pathlib.Path(__file__).parent / "state.json").read_text())
args = sys.argv[1:]
if "{tool}" == "rdma":
    if args[:3] == ["-j", "resource", "show"]:
        print(json.dumps(state["resources"]))
        sys.exit(0)
    print("rdma: unsupported arguments", file=sys.stderr)
    sys.exit(1)
mode = state["eadm_mode"]
if mode == "hang":
    time.sleep(3600)
if mode == "fail":
    print("eadm: open /dev/erdma failed: Permission denied", file=sys.stderr)
    sys.exit(1)
if args[:1] == ["ver"]:
    print("Query kernel driver version: " + state["driver_version"])
    sys.exit(0)
if args[:1] == ["stat"]:
    devices = state["eadm"]
    dev = args[args.index("-d") + 1] if "-d" in args else next(iter(devices), "")
    if dev not in devices:
        print("eadm: " + dev + ": not an erdma device", file=sys.stderr)
        sys.exit(1)
    print("Device: " + dev)  # real eadm output may carry a header; parsers must skip it
    for key, value in devices[dev].items():
        if mode == "malformed" and key.startswith("connect"):
            print(key + " : N/A")
        elif mode == "malformed" and key.startswith("cmdq"):
            print(key + " : " + str(value) + " : stale")
        else:
            print(key + " : " + str(value))
    sys.exit(0)
print("usage: eadm {{ver|stat [-d dev]}}", file=sys.stderr)
sys.exit(2)
'''


def _write(path: Path, text: str) -> None:
    """Replace the file atomically: the collector never reads half a value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_symlink():
        path.symlink_to(target)


# ---- node models -----------------------------------------------------------------------------

# ConnectX-6 HDR HCAs next to the GPUs of an HGX board: two per CPU socket.
_MLX5_PCI = (("pci0000:15/0000:15:01.0/0000:1a:00.0", 0),
             ("pci0000:37/0000:37:01.0/0000:3c:00.0", 0),
             ("pci0000:97/0000:97:01.0/0000:9c:00.0", 1),
             ("pci0000:b7/0000:b7:01.0/0000:bc:00.0", 1))


def mlx5_ib_devices() -> list[SimRdmaDevice]:
    devices = []
    for i, (pci, numa) in enumerate(_MLX5_PCI):
        bus = int(pci.rsplit(":", 2)[-2], 16)
        devices.append(SimRdmaDevice(
            name=f"mlx5_{i}", driver="mlx5_core", pci=pci, netdev=f"ibp{bus}s0", numa_node=numa,
            fw_ver="20.39.1002", node_guid=f"b83f:d203:00a1:2c{40 + i:02x}", hca_type="MT4123",
            board_id="MT_0000000223", tx_bytes_per_s=6.0e9 + 0.5e9 * i, phase=0.8 * i))
    return devices


def erdma_devices() -> list[SimRdmaDevice]:
    """One Alibaba eRDMA device (ecs.ebmgn8v-class H20 instance), out-of-tree driver."""
    return [SimRdmaDevice(
        name="erdma_0", driver="erdma", pci="pci0000:00/0000:00:07.0", netdev="eth0",
        numa_node=0, fw_ver="0.2.0", node_guid="0216:3eff:fe50:30b3", node_type="4: RNIC",
        link_layer="Ethernet", rate_gbps=25.0, width="1X", speed="EDR", tx_bytes_per_s=2.2e9,
        limits=dict(ERDMA_LIMITS), hidden=ERDMA_HIDDEN, qps_in_use=40)]


def equip_rdma(node: SimNode, opts: SimOptions) -> None:
    node.rdma = SimRdma(node, devices=mlx5_ib_devices())


def place_on_topology(node: SimNode, rdma: SimRdma) -> None:
    """Put each NIC where the topology model's PCI tree has it, so GPU-NIC affinity and the RDMA
    device files agree. Done when the files are written, after every simulator equipped the
    node, whatever order their modules were imported in."""
    from kvscope.sim.topology import nic_pci_path

    for dev in rdma.devices:
        placed = nic_pci_path(node, dev.name)
        if placed is not None:
            dev.pci, dev.numa_node = placed


def use_erdma(node: SimNode) -> SimRdma:
    rdma: SimRdma = node.rdma
    rdma.devices = erdma_devices()
    return rdma



# ---- scenarios -------------------------------------------------------------------------------

_DLSLIME_LINE = ("\x1b[1;91m[Error]\x1b[m /tmp/build-via-sdist-u0f957qw/dlslime-0.0.1.post7/csrc/"
                 "engine/rdma/rdma_context.cpp: init: Line154: Failed to create QP")


def erdma_healthy(opts: SimOptions) -> SimNode:
    node = _node(opts)
    use_erdma(node)
    return node


def qp_failure(opts: SimOptions) -> SimNode:
    """LMDeploy PD on eRDMA: DLSlime asks for 4 receive SGEs where the device takes 1."""
    node = _node(opts)
    rdma = use_erdma(node)
    rdma.devices[0].qp_fail_after = opts.fault_delay
    rdma.logs.append(SimLog("inference", "lmdeploy-prefill-0",
                            "6f1c0d2e-0000-4000-8000-0000000000a0", "engine", opts.fault_delay,
                            (_DLSLIME_LINE, _DLSLIME_LINE)))
    return node


def erdma_throttle(opts: SimOptions) -> SimNode:
    """The instance's eRDMA bandwidth quota drops packets while the port still says 25 Gb/s."""
    node = _node(opts)
    rdma = use_erdma(node)
    rdma.devices[0].throttle_after = opts.fault_delay
    rdma.devices[0].tx_bytes_per_s = 2.9e9
    return node


def erdma_no_compat(opts: SimOptions) -> SimNode:
    """eRDMA driver loaded without compat_mode: an engine that sets up its QPs out of band (QP
    numbers over TCP instead of RDMA CM) cannot connect."""
    node = _node(opts)
    use_erdma(node).erdma_compat_mode = False
    return node


def link_degraded(opts: SimOptions) -> SimNode:
    node = _node(opts)
    node.rdma.devices[1].degrade_after = opts.fault_delay
    return node


def port_down(opts: SimOptions) -> SimNode:
    node = _node(opts)
    node.rdma.devices[2].down_after = opts.fault_delay
    return node


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("erdma", "eRDMA node (Alibaba driver, 25 Gb/s port, max_sge 1), healthy",
             erdma_healthy),
    Scenario("erdma-no-compat", "eRDMA driver without compat_mode: out-of-band QP setup "
             "(QP numbers over TCP) cannot connect", erdma_no_compat),
    Scenario("qp-failure", "eRDMA: DLSlime asks for 4 receive SGEs (max_sge 1): Failed to create "
             "QP, verbs_create_qp_failed_cnt climbing", qp_failure),
    Scenario("erdma-throttle", "eRDMA instance bandwidth quota hit: bps limit drops climbing "
             "while the port reports 25 Gb/s", erdma_throttle),
    Scenario("link-degraded", "mlx5_1 renegotiates from 200 to 100 Gb/s (4X EDR)", link_degraded),
    Scenario("port-down", "mlx5_2's port goes DOWN (phys_state Disabled)", port_down),
)


# ---- the starter: files, programs and config overrides ----------------------------------------

async def start_rdma(node: SimNode, stack: AsyncExitStack) -> dict[str, Any]:
    rdma: SimRdma | None = node.rdma
    if rdma is None:
        return {}
    place_on_topology(node, rdma)
    root = services.shared_root(node, stack)
    await asyncio.to_thread(rdma.write_static, root)
    await asyncio.to_thread(rdma.write_dynamic, root)

    async def refresh() -> None:
        while True:
            await asyncio.sleep(REFRESH)
            await asyncio.to_thread(rdma.write_dynamic, root)

    task = asyncio.create_task(refresh())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    return {"paths.sysfs": str(root / "sys"),
            "collectors.rdma.eadm_path": str(root / "bin" / "eadm"),
            "collectors.rdma.rdma_tool_path": str(root / "bin" / "rdma"),
            "collectors.rdma.probe": True,
            "collectors.rdma.log_follow": True,
            "collectors.rdma.log_paths": [str(root / "logs/pods/*/*/*.log")]}

