"""The simulator's scenarios for the alert rules (kvscope.sim.incidents), read back through the
production collectors: what each one must show for its alert to fire."""

from __future__ import annotations

from conftest import parse, two_poll_families
from kvscope.render.exposition import render_text
from kvscope.sim.scenarios import all_scenarios

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def collect(scenario: str) -> Samples:
    return parse(render_text(await two_poll_families(scenario)))


def test_the_incidents_are_listed() -> None:
    assert {"driver-skew", "pd-switch-types", "tp-over-pcie"} <= set(all_scenarios())


async def test_driver_skew_runs_another_driver_as_the_groups_second_replica() -> None:
    samples = await collect("driver-skew")
    drivers = {labels["DCGM_FI_DRIVER_VERSION"] for labels, _ in samples["kvscope_gpu_up"]}
    assert drivers == {"570.133.20"}
    pods = {(labels["pod"], labels["pd_group"]) for labels, _ in samples["kvscope_pod_gpu_info"]}
    assert pods == {("sglang-prefill-1", "qwen25-72b"), ("sglang-decode-1", "qwen25-72b")}
    engine_pods = {labels["pod"] for labels, value in samples["kvscope_engine_up"]
                   if labels["engine"] == "sglang" and value == 1}
    assert engine_pods == {"sglang-prefill-1", "sglang-decode-1"}


async def test_pd_switch_types_sits_under_an_ethernet_switch() -> None:
    samples = await collect("pd-switch-types")
    [(labels, _)] = samples["kvscope_node_network_info"]
    assert (labels["switch"], labels["switch_type"]) == ("roce-tor-03", "ethernet")
    healthy = await collect("healthy")
    [(labels, _)] = healthy["kvscope_node_network_info"]
    assert labels["switch_type"] == "infiniband"


async def test_tp_over_pcie_bridges_pairs_and_leaves_the_rest_to_pcie() -> None:
    samples = await collect("tp-over-pcie")
    links = {(labels["gpu"], labels["peer_gpu"]): labels["link_type"]
             for labels, _ in samples["kvscope_gpu_p2p_link_info"]}
    assert links[("0", "1")] == links[("2", "3")] == "NV12"
    assert links[("0", "2")] == "NODE" and links[("0", "4")] == "SYS"
    remotes = {labels["remote_type"] for labels, _ in samples["kvscope_nvlink_link_info"]}
    assert remotes == {"gpu"}  # bridges end at the peer GPU, not at an NVSwitch
    prefill = {labels["gpu"] for labels, _ in samples["kvscope_pod_gpu_info"]
               if labels["pod"] == "sglang-prefill-0"}
    assert prefill == {"0", "1", "2", "3"}  # a TP-4 pod across two bridges
