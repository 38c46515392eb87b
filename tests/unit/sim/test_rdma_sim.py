"""The simulated node's RDMA: the production collector reads the sim's real files, programs and
pyverbs fake. Scenarios qp-failure, erdma-throttle, link-degraded, port-down."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path

import kvscope.sim.rdma as sim_rdma
from conftest import context_of, doctor_run, start_sim_services
from kvscope.config import load
from kvscope.sources.verbs import VerbsSource
from rdma_helpers import Clock, cli, collector_up, node_for, scrape, value


async def test_default_node_has_four_hdr_ib_ports() -> None:
    found = await scrape(node_for("healthy", Clock()))
    ports = found["kvscope_rdma_port_state"]
    assert sorted(lb["device"] for lb, _ in ports) == ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"]
    assert all(v == 4 for _, v in ports)
    for dev in ("mlx5_0", "mlx5_3"):
        assert value(found, "kvscope_rdma_port_rate_bytes_per_second", device=dev) == 25e9
        assert value(found, "kvscope_rdma_qp_profile_fits", device=dev,
                     profile="dlslime-0.0.1") == 1
    numa = {lb["device"]: lb["numa_node"] for lb, _ in found["kvscope_rdma_device_info"]}
    assert numa == {"mlx5_0": "0", "mlx5_1": "0", "mlx5_2": "1", "mlx5_3": "1"}
    assert collector_up(found, "rdma") == 1


async def test_counters_advance_with_time() -> None:
    clock = Clock()
    node = node_for("healthy", clock)
    first = await scrape(node)
    clock.now += 10
    second = await scrape(node)
    key = {"device": "mlx5_0"}
    sent = (value(second, "kvscope_rdma_port_transmit_bytes_total", **key)
            - value(first, "kvscope_rdma_port_transmit_bytes_total", **key))
    assert 4e10 < sent < 9e10  # ~6 GB/s for 10 s, with the load wave


async def test_tree_is_rewritten_while_serving() -> None:
    clock = Clock()
    node = node_for("healthy", clock)
    ctx = context_of(load(None, {"collectors.gpu.enabled": False}), sim_node=node)
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        data = Path(ctx.config.paths.sysfs) / "class/infiniband/mlx5_0/ports/1/counters"
        before = int((data / "port_xmit_data").read_text())
        clock.now += 5
        await asyncio.sleep(sim_rdma.REFRESH + 0.3)
        assert int((data / "port_xmit_data").read_text()) > before
    assert not data.exists()  # the temporary tree is removed with the services


async def test_qp_failure_profile_probe_counters_and_logs() -> None:
    found = await scrape(node_for("qp-failure", Clock()))
    lb = {"device": "erdma_0", "profile": "dlslime-0.0.1"}
    assert value(found, "kvscope_rdma_device_max_sge", device="erdma_0") == 1
    assert value(found, "kvscope_rdma_qp_profile_fits", **lb) == 0
    assert value(found, "kvscope_rdma_qp_probe_success", **lb, reason="EINVAL") == 0
    assert value(found, "kvscope_rdma_qp_probe_success", device="erdma_0", profile="mooncake",
                 reason="") == 1
    assert value(found, "kvscope_erdma_verbs_create_qp_failed_total", device="erdma_0") == 8
    assert value(found, "kvscope_rdma_hw_counter_total", device="erdma_0",
                 counter="verbs_create_qp_failed_cnt") == 8
    assert value(found, "kvscope_rdma_app_qp_failures_total", framework="dlslime",
                 kind="create", pod="lmdeploy-prefill-0", namespace="inference") == 2
    assert value(found, "kvscope_erdma_driver_info", version="0.2.38") == 1
    assert value(found, "kvscope_rdma_resources", device="erdma_0", type="qp") == 40


def test_probe_failure_reason_from_the_pyverbs_fake() -> None:
    node = node_for("qp-failure", Clock())
    source = VerbsSource(node.rdma.verbs())
    profile = next(p for p in load(None).collectors.rdma.qp_profiles
                   if p.name == "dlslime-0.0.1")
    result = source.probe("erdma_0", profile)
    assert not result.success and result.reason == "EINVAL"
    assert result.message == "Failed to create QP. Errno: 22, Invalid argument"
    assert source.probe("erdma_0", profile.model_copy(update={"recv_sge": 1})).success


async def test_erdma_throttle_limit_drops_climb() -> None:
    clock = Clock()
    node = node_for("erdma-throttle", clock)
    first = await scrape(node)
    clock.now += 30
    second = await scrape(node)
    name = "kvscope_erdma_hw_bps_limit_drop_total"
    assert value(second, name, device="erdma_0") > value(first, name, device="erdma_0") > 0
    assert value(second, "kvscope_rdma_port_rate_bytes_per_second", device="erdma_0") == 3.125e9


async def test_link_degraded_after_the_fault() -> None:
    clock = Clock()
    node = node_for("link-degraded", clock, fault_delay=30)
    before = await scrape(node)
    assert value(before, "kvscope_rdma_port_rate_bytes_per_second", device="mlx5_1") == 25e9
    clock.now += 31
    after = await scrape(node)
    assert value(after, "kvscope_rdma_port_rate_bytes_per_second", device="mlx5_1") == 12.5e9
    assert value(after, "kvscope_rdma_port_rate_bytes_per_second", device="mlx5_0") == 25e9
    speeds = {lb["device"]: lb.get("speed") for lb, _ in after["kvscope_rdma_port_info"]}
    assert speeds["mlx5_1"] == "EDR" and speeds["mlx5_0"] == "HDR"


async def test_port_down_state_and_frozen_counters() -> None:
    clock = Clock()
    node = node_for("port-down", clock)
    first = await scrape(node)
    clock.now += 10
    second = await scrape(node)
    key = {"device": "mlx5_2"}
    assert value(second, "kvscope_rdma_port_state", **key) == 1
    assert value(second, "kvscope_rdma_port_physical_state", **key) == 3
    name = "kvscope_rdma_port_transmit_bytes_total"
    assert value(second, name, **key) == value(first, name, **key)
    assert value(second, name, device="mlx5_0") > value(first, name, device="mlx5_0")


async def test_hung_sim_eadm_marks_collector_down_only() -> None:
    node = node_for("erdma", Clock())
    node.rdma.eadm_mode = "hang"
    started = time.monotonic()
    found = await scrape(node, **{"collectors.rdma.eadm_timeout": 0.5})
    assert time.monotonic() - started < 3.0
    assert collector_up(found, "rdma") == 0
    assert value(found, "kvscope_collector_errors_total", collector="rdma",
                 reason="eadm_timeout") == 1
    assert value(found, "kvscope_rdma_port_state", device="erdma_0") == 4
    assert value(found, "kvscope_rdma_qp_profile_fits", device="erdma_0",
                 profile="dlslime-0.0.1") == 0


async def test_malformed_sim_eadm_is_counted() -> None:
    node = node_for("erdma", Clock())
    node.rdma.eadm_mode = "malformed"
    found = await scrape(node)
    assert collector_up(found, "rdma") == 1
    assert value(found, "kvscope_rdma_parse_errors_total", source="eadm") == 5  # connect_* N/A
    assert "kvscope_erdma_cmdq_submitted_total" not in found  # "a : b : c" lines skipped
    assert value(found, "kvscope_erdma_verbs_create_qp_total", device="erdma_0") == 40


async def test_doctor_on_qp_failure_is_critical_with_the_fix() -> None:
    node = node_for("qp-failure", Clock())
    ctx = context_of(load(None, {"collectors.gpu.enabled": False}), oneshot=True,
                        sim_node=node)
    report, code = await doctor_run(ctx)
    assert code == 1
    assert "[CRIT] QP profile dlslime-0.0.1 does not fit erdma_0: max_recv_sge 4 > 1; " \
           "probe: create QP failed with EINVAL" in report
    assert "compat_mode=Y" in report and "max_recv_sge 1" in report
    assert "8 ibv_create_qp calls failed" in report


async def test_doctor_on_throttle_explains_the_hidden_quota() -> None:
    node = node_for("erdma-throttle", Clock())
    config = load(None, {"collectors.gpu.enabled": False,
                         "collectors.rdma.qp_profiles": [
                             {"name": "mooncake", "send_sge": 4, "recv_sge": 4, "send_wr": 256,
                              "recv_wr": 256, "inline_data": 64, "clamps_to_device": True}]})
    report, code = await doctor_run(context_of(config, oneshot=True, sim_node=node))
    assert code == 0  # a warning, not a critical finding
    assert "dropped by the instance's eRDMA bandwidth/packet-rate quota" in report
    assert "25 Gb/s is the vNIC's nominal speed" in report


def test_doctor_port_down_through_the_cli() -> None:
    code, out = cli("doctor", "--scenario", "port-down", "--no-collector.gpu")
    assert code == 1
    assert "[CRIT] mlx5_2 port 1 is not ACTIVE (state 1, phys_state 3)" in out


def test_doctor_on_fixture_tree_flags_down_port_and_saturation() -> None:
    from rdma_helpers import FIXTURES

    code, out = cli("doctor", "--path.sysfs", str(FIXTURES / "mlx5-ib"), "--no-collector.gpu",
                    "--collector.rdma.eadm-path", "/nonexistent/eadm")
    assert code == 1
    assert "[CRIT] mlx5_1 port 1 is not ACTIVE" in out
    assert "mlx5_1 port 1: 3 PMA counters pinned at their maximum" in out
    assert "QP profiles: not checked" in out


def test_new_scenarios_are_listed() -> None:
    code, out = cli("scenarios")
    assert code == 0
    for name in ("qp-failure", "erdma-throttle", "link-degraded", "port-down", "erdma"):
        assert f"\n{name} " in "\n" + out
