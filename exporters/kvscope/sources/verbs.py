"""Device limits and the create-QP probe, through pyverbs (rdma-core's Python binding).

`lib` is a namespace with pyverbs' modules under their own names (`device`, `pd`, `cq`, `qp`,
`enums`, `pyverbs_error`): the real package, or kvscope.sim.verbs' fake. pyverbs raises
PyverbsRDMAError("Failed to get devices list") when the node has no RDMA device; that, and an
ImportError, mean "no hardware". Every call blocks (ioctl), so the collector runs these through
the runtime's thread pool.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from kvscope.analysis.qp_profiles import DeviceLimits
from kvscope.config import QpProfile


class VerbsUnavailableError(Exception):
    """pyverbs is not installed, or there is no RDMA device."""


def load_pyverbs() -> Any:
    try:
        import pyverbs.cq
        import pyverbs.device
        import pyverbs.enums
        import pyverbs.pd
        import pyverbs.pyverbs_error
        import pyverbs.qp
    except ImportError as exc:  # also raised when libibverbs.so.1 is missing
        raise VerbsUnavailableError(f"pyverbs not importable: {exc}") from None
    return SimpleNamespace(device=pyverbs.device, pd=pyverbs.pd, cq=pyverbs.cq, qp=pyverbs.qp,
                           enums=pyverbs.enums, pyverbs_error=pyverbs.pyverbs_error)


@dataclass(frozen=True)
class PortAttributes:
    device: str
    port: str
    state: int
    phys_state: int
    active_mtu_bytes: int | None
    link_layer: int


@dataclass(frozen=True)
class VerbsReport:
    limits: dict[str, DeviceLimits] = field(default_factory=dict)
    ports: tuple[PortAttributes, ...] = ()
    errors: tuple[str, ...] = ()  # per-device failures (device present but not queryable)


@dataclass(frozen=True)
class ProbeResult:
    device: str
    profile: str
    success: bool
    reason: str  # "" on success; errno name (EINVAL) or "<stage>_<errno>" otherwise
    message: str
    duration: float


def _mtu_bytes(enum_value: int) -> int | None:
    # IBV_MTU_256 = 1 ... IBV_MTU_4096 = 5
    return 128 << enum_value if 1 <= enum_value <= 5 else None


def errno_name(code: object) -> str:
    if isinstance(code, int) and code > 0:
        return errno.errorcode.get(code, f"errno_{code}")
    return "unknown"


class VerbsSource:
    def __init__(self, lib: Any, wanted: Callable[[str], bool] = lambda _name: True) -> None:
        self.lib = lib
        self._error = lib.pyverbs_error.PyverbsError
        self._wanted = wanted  # the device filter: devices it refuses are never opened

    def query(self) -> VerbsReport:
        try:
            devices = self.lib.device.get_device_list()
        except self._error as exc:
            raise VerbsUnavailableError(str(exc)) from None
        if not devices:
            raise VerbsUnavailableError("no RDMA device")
        limits: dict[str, DeviceLimits] = {}
        ports: list[PortAttributes] = []
        errors: list[str] = []
        for dev in devices:
            name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
            if not self._wanted(name):
                continue
            try:
                limit, attrs = self._query_device(name)
            except self._error as exc:
                errors.append(f"{name}: {exc}")
                continue
            limits[name] = limit
            ports.extend(attrs)
        return VerbsReport(limits, tuple(ports), tuple(errors))

    def _query_device(self, name: str) -> tuple[DeviceLimits, list[PortAttributes]]:
        ctx = self.lib.device.Context(name=name)
        try:
            a = ctx.query_device()
            limits = DeviceLimits(device=name, max_qp=a.max_qp, max_qp_wr=a.max_qp_wr,
                                  max_sge=a.max_sge, max_cq=a.max_cq, max_cqe=a.max_cqe,
                                  max_mr=a.max_mr, max_pd=a.max_pd,
                                  max_qp_rd_atom=a.max_qp_rd_atom)
            ports = []
            for port in range(1, int(a.phys_port_cnt) + 1):
                p = ctx.query_port(port)
                ports.append(PortAttributes(name, str(port), p.state, p.phys_state,
                                            _mtu_bytes(p.active_mtu), p.link_layer))
            return limits, ports
        finally:
            ctx.close()

    def probe(self, device: str, profile: QpProfile, max_cqe: int = 0) -> ProbeResult:
        """Create and destroy one RC QP with the profile's caps; report why it failed."""
        started = time.monotonic()
        lib = self.lib
        stage = "open"
        opened: list[Any] = []
        try:
            opened.append(lib.device.Context(name=device))
            stage = "pd"
            opened.append(lib.pd.PD(opened[0]))
            stage = "cq"
            cqe = profile.send_wr + profile.recv_wr
            cq = lib.cq.CQ(opened[0], min(cqe, max_cqe) if max_cqe else cqe)
            opened.append(cq)
            stage = "qp"
            cap = lib.qp.QPCap(max_send_wr=profile.send_wr, max_recv_wr=profile.recv_wr,
                               max_send_sge=profile.send_sge, max_recv_sge=profile.recv_sge,
                               max_inline_data=profile.inline_data)
            init = lib.qp.QPInitAttr(qp_type=lib.enums.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap)
            opened.append(lib.qp.QP(opened[1], init))
        except self._error as exc:
            name = errno_name(getattr(exc, "error_code", None))
            reason = name if stage == "qp" else f"{stage}_{name}"
            return ProbeResult(device, profile.name, False, reason, str(exc),
                               time.monotonic() - started)
        finally:
            for obj in reversed(opened):
                # A failed close is not the probe's verdict; closing the context frees the rest.
                with contextlib.suppress(self._error):
                    obj.close()
        return ProbeResult(device, profile.name, True, "", "", time.monotonic() - started)
