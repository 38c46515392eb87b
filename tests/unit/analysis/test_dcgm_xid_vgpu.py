"""err_msg as dcgm-exporter writes it, and DCGM_FI_DEV_VGPU_LICENSE_STATUS (issue 11, item 3)."""

from __future__ import annotations

from pathlib import Path

from conftest import parse, sim_context
from kvscope.analysis.xid import UNKNOWN_ERROR, XID_MESSAGES, dcgm_err_msg
from kvscope.app import build_runtime
from kvscope.sim.node import XidFault

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "dcgm"


def recorded_xid_messages() -> dict[int, str]:
    """tests/fixtures/dcgm/xid-messages.tsv: dcgm-exporter's xidErrCodeToText (see its header)."""
    out: dict[int, str] = {}
    for line in (FIXTURES / "xid-messages.tsv").read_text().splitlines():
        if line.startswith("#") or line.startswith("xid\t"):
            continue
        code, message, *_ = line.split("\t")
        out[int(code)] = message
    return out


def test_err_msg_matches_dcgm_exporter_for_every_code() -> None:
    recorded = recorded_xid_messages()
    assert len(recorded) == 173
    assert {code: dcgm_err_msg(code) for code in recorded} == recorded
    assert dcgm_err_msg(79) == "GPU has fallen off the bus"
    assert dcgm_err_msg(173) == dcgm_err_msg(9999) == dcgm_err_msg(-1) == UNKNOWN_ERROR
    assert set(XID_MESSAGES) == set(range(173))


async def _collect(ctx) -> dict[str, list[tuple[dict[str, str], float]]]:  # type: ignore[no-untyped-def]
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    body = runtime.exposition()
    await runtime.stop()
    return parse(body)


async def test_xid_series_carry_dcgm_err_msg() -> None:
    faults = [XidFault(after=0.0, gpu=1, xid=94), XidFault(after=0.0, gpu=2, xid=150)]
    metrics = await _collect(sim_context("healthy", xid_faults=faults))
    rows = {lb["gpu"]: (lb, v) for lb, v in metrics["DCGM_FI_DEV_XID_ERRORS"]}
    assert rows["1"][1] == 94 and rows["1"][0]["err_code"] == "94"
    assert rows["1"][0]["err_msg"] == recorded_xid_messages()[94]
    # 150 is one of the codes the old kvscope table called "See NVIDIA XID catalogue".
    assert rows["2"][0]["err_msg"] == recorded_xid_messages()[150]
    assert rows["0"][0]["err_code"] == "0" and rows["0"][0]["err_msg"] == "No Error"


async def test_vgpu_license_absent_on_bare_metal() -> None:
    ctx = sim_context("healthy")
    metrics = await _collect(ctx)
    assert "DCGM_FI_DEV_VGPU_LICENSE_STATUS" not in metrics
    assert ctx.nvml.calls["nvmlDeviceGetGridLicensableFeatures"] == 8  # asked once per GPU


async def test_vgpu_license_reported_in_a_vgpu_guest() -> None:
    ctx = sim_context("healthy")
    ctx.sim.gpus[0].vgpu_licensed = True
    ctx.sim.gpus[1].vgpu_licensed = False
    metrics = await _collect(ctx)
    values = {lb["gpu"]: v for lb, v in metrics["DCGM_FI_DEV_VGPU_LICENSE_STATUS"]}
    assert values == {"0": 1.0, "1": 0.0}  # the other six answer NOT_SUPPORTED: absent
