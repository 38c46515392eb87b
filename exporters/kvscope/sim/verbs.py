"""A fake pyverbs with pyverbs' module, class and attribute names, driven by the simulated node.

Only what kvscope.sources.verbs calls is implemented: device.get_device_list, device.Context
(query_device, query_port, close), pd.PD, cq.CQ, qp.QPCap, qp.QPInitAttr, qp.QP, enums.IBV_QPT_RC
and pyverbs_error.PyverbsError / PyverbsRDMAError. QP creation applies the kernel's checks with
the device's real per-direction limits (eRDMA: 6 send SGEs, 1 receive SGE, 96 B inline), so a
profile that asks for 4 receive SGEs fails with EINVAL exactly as on the hardware.
"""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvscope.sim.rdma import SimRdma, SimRdmaDevice

IBV_QPT_RC = 2
IBV_LINK_LAYER_INFINIBAND = 1
IBV_LINK_LAYER_ETHERNET = 2


class PyverbsError(Exception):
    pass


class PyverbsRDMAError(PyverbsError):
    """Same message shape as pyverbs: '<msg>. Errno: <n>, <strerror>'."""

    def __init__(self, msg: str, error_code: int = -1) -> None:
        text = msg if error_code <= 0 else f"{msg}. Errno: {error_code}, {os.strerror(error_code)}"
        super().__init__(text)
        self._error_code = error_code

    @property
    def error_code(self) -> int:
        return self._error_code


class _Closable:
    closed = False

    def close(self) -> None:
        self.closed = True


def fake_pyverbs(model: SimRdma) -> SimpleNamespace:
    """A namespace shaped like `import pyverbs.{device,pd,cq,qp,enums,pyverbs_error}`."""

    def find(name: str) -> SimRdmaDevice:
        for dev in model.devices:
            if dev.name == name:
                return dev
        raise PyverbsRDMAError(f"Failed to find device {name}")

    def get_device_list() -> list[SimpleNamespace]:
        if not model.devices:
            raise PyverbsRDMAError("Failed to get devices list")
        return [SimpleNamespace(name=d.name.encode(), guid=0, node_type=1, transport_type=0)
                for d in model.devices]

    class Context(_Closable):
        def __init__(self, name: str = "", **_: Any) -> None:
            self.device = find(name)

        def __enter__(self) -> Context:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

        def query_device(self) -> SimpleNamespace:
            limits = dict(self.device.limits)
            return SimpleNamespace(phys_port_cnt=1, fw_version=self.device.fw_ver, **limits)

        def query_port(self, port: int) -> SimpleNamespace:
            state, phys, _, _, _ = model.port_now(self.device)
            layer = (IBV_LINK_LAYER_INFINIBAND if self.device.link_layer == "InfiniBand"
                     else IBV_LINK_LAYER_ETHERNET)
            return SimpleNamespace(state=state, phys_state=phys, active_mtu=5, max_mtu=5,
                                   link_layer=layer)

    class PD(_Closable):
        def __init__(self, ctx: Context) -> None:
            self.ctx = ctx

    class CQ(_Closable):
        def __init__(self, ctx: Context, cqe: int, *_: Any) -> None:
            if cqe > ctx.device.limits["max_cqe"]:
                raise PyverbsRDMAError("Failed to create CQ", errno.EINVAL)
            self.ctx = ctx

    class QPCap:
        def __init__(self, max_send_wr: int = 1, max_recv_wr: int = 10, max_send_sge: int = 1,
                     max_recv_sge: int = 1, max_inline_data: int = 0) -> None:
            self.max_send_wr, self.max_recv_wr = max_send_wr, max_recv_wr
            self.max_send_sge, self.max_recv_sge = max_send_sge, max_recv_sge
            self.max_inline_data = max_inline_data

    class QPInitAttr:
        def __init__(self, qp_type: int = IBV_QPT_RC, scq: Any = None, rcq: Any = None,
                     cap: QPCap | None = None, **_: Any) -> None:
            self.qp_type, self.scq, self.rcq = qp_type, scq, rcq
            self.cap = cap or QPCap()

    class QP(_Closable):
        def __init__(self, pd: PD, init_attr: QPInitAttr) -> None:
            dev = pd.ctx.device
            cap = init_attr.cap
            if model.qp_create_rejected(dev, cap):
                raise PyverbsRDMAError("Failed to create QP", errno.EINVAL)
            if dev.qps_in_use >= dev.limits["max_qp"]:
                raise PyverbsRDMAError("Failed to create QP", errno.ENOMEM)

    return SimpleNamespace(
        device=SimpleNamespace(get_device_list=get_device_list, Context=Context),
        pd=SimpleNamespace(PD=PD), cq=SimpleNamespace(CQ=CQ),
        qp=SimpleNamespace(QPCap=QPCap, QPInitAttr=QPInitAttr, QP=QP),
        enums=SimpleNamespace(IBV_QPT_RC=IBV_QPT_RC),
        pyverbs_error=SimpleNamespace(PyverbsError=PyverbsError,
                                      PyverbsRDMAError=PyverbsRDMAError),
    )
