"""Does a transfer engine's QP request fit a device? The static verdict behind
kvscope_rdma_qp_profile_fits and the doctor's explanation.

Standard verbs give one `max_sge`, which the kernel reports as min(max_send_sge, max_recv_sge);
a request above it may still pass on drivers whose send limit is higher, so for drivers whose
per-direction limits are known from their source the check uses those instead:
eRDMA (upstream and Alibaba's driver) accepts 6 send SGEs, 1 receive SGE and 96 bytes of inline
data (ERDMA_MAX_SEND_SGE, ERDMA_MAX_RECV_SGE, ERDMA_MAX_INLINE) and reports max_sge 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvscope.config import QpProfile


@dataclass(frozen=True)
class DeviceLimits:
    """What ibv_query_device reports (pyverbs DeviceAttr), for one device."""

    device: str
    max_qp: int
    max_qp_wr: int
    max_sge: int
    max_cq: int = 0
    max_cqe: int = 0
    max_mr: int = 0
    max_pd: int = 0
    max_qp_rd_atom: int = 0


@dataclass(frozen=True)
class DirectionLimits:
    send_sge: int
    recv_sge: int
    inline_data: int | None  # None: unknown (not checked)


ERDMA_LIMITS = DirectionLimits(send_sge=6, recv_sge=1, inline_data=96)


def direction_limits(limits: DeviceLimits, erdma: bool) -> DirectionLimits:
    if erdma:
        return ERDMA_LIMITS
    return DirectionLimits(limits.max_sge, limits.max_sge, None)


def effective_request(profile: QpProfile, limits: DeviceLimits) -> QpProfile:
    """The caps the engine really asks for: clamping engines lower them to the device's."""
    if not profile.clamps_to_device:
        return profile
    return profile.model_copy(update={
        "send_sge": max(1, min(profile.send_sge, limits.max_sge)),
        "recv_sge": max(1, min(profile.recv_sge, limits.max_sge)),
        "send_wr": max(1, min(profile.send_wr, limits.max_qp_wr)),
        "recv_wr": max(1, min(profile.recv_wr, limits.max_qp_wr)),
    })


def misfits(profile: QpProfile, limits: DeviceLimits, *, erdma: bool) -> tuple[str, ...]:
    """Why `profile` cannot create a QP on the device; empty when it fits."""
    want = effective_request(profile, limits)
    have = direction_limits(limits, erdma)
    reasons = []
    if want.send_sge > have.send_sge:
        reasons.append(f"max_send_sge {want.send_sge} > {have.send_sge}")
    if want.recv_sge > have.recv_sge:
        reasons.append(f"max_recv_sge {want.recv_sge} > {have.recv_sge}")
    if want.send_wr > limits.max_qp_wr:
        reasons.append(f"max_send_wr {want.send_wr} > max_qp_wr {limits.max_qp_wr}")
    if want.recv_wr > limits.max_qp_wr:
        reasons.append(f"max_recv_wr {want.recv_wr} > max_qp_wr {limits.max_qp_wr}")
    if have.inline_data is not None and want.inline_data > have.inline_data:
        reasons.append(f"max_inline_data {want.inline_data} > {have.inline_data}")
    return tuple(reasons)
