"""The simulated engines, the scenarios and pod discovery, through the production collector."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.core import Metric

from conftest import sim_context_for, start_sim_services
from engines_helpers import P, find, samples_of
from kvscope.cli import main
from kvscope.collectors.base import Tier
from kvscope.collectors.engines import EnginesCollector, targets_from_pods
from kvscope.config import EnginesConfig, PdSettings, load
from kvscope.context import NodeContext
from kvscope.parsers.exposition import Exposition, parse
from kvscope.parsers.kube import Pod, parse_pod
from kvscope.render.exposition import render_text
from kvscope.runtime import BlockingPool
from kvscope.sim import engines as sim_engines
from kvscope.sim.engines import RENDERERS, Load, SimEngine, render, start_engine
from kvscope.sim.node import SimNode
from kvscope.sim.scenarios import SimOptions, all_scenarios, build_scenario


def test_healthy_demo_shows_the_pd_pair_and_vllm() -> None:
    result = CliRunner().invoke(main, ["collect", "--scenario", "healthy"])
    assert result.exit_code == 0, result.output
    samples = samples_of(result.stdout)
    for role, pod in (("prefill", "sglang-prefill-0"), ("decode", "sglang-decode-0")):
        assert find(samples, "kvscope_engine_up", engine="sglang", role=role, pod=pod,
                    namespace="inference") == [1.0]
        assert find(samples, P + "kv_cache_usage_ratio", role=role, pod=pod)
        assert find(samples, P + "requests_running", role=role, pod=pod)
    assert find(samples, P + "pd_queue_requests", role="prefill", stage="bootstrap")
    assert find(samples, P + "pd_queue_requests", role="decode", stage="transfer")
    assert find(samples, P + "kv_transfer_bytes_total", role="prefill")[0] > 0
    assert find(samples, "kvscope_engine_up", engine="vllm", pod="") == [1.0]
    assert find(samples, P + "prefix_cache_hit_tokens_total", engine="lmcache")
    assert find(samples, "kvscope_engine_targets", source="discovered") == [2.0]
    # TP=4 ranks repeat the scheduler gauges: the decode instance runs 96, not 384
    assert find(samples, P + "requests_running", role="decode") == [96.0]


def test_scenarios_are_registered() -> None:
    names = set(all_scenarios())
    assert {"kv-cache-full", "prefix-hit-low", "queue-backlog", "kv-transfer-slow",
            "engine-down"} <= names


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def families_of(collector: EnginesCollector, pool: str) -> Sequence[Metric]:
    return (await collector.poll(Tier.FAST, BlockingPool(pool))).families


async def _two_polls(scenario: str, gap: float = 60.0) -> tuple[list[Any], list[Any]]:
    """Poll a scenario's engines at fault time and `gap` seconds later (a frozen sim clock)."""
    clock = Clock()
    node = build_scenario(scenario, SimOptions(fault_delay=0.0, clock=clock, latency_scale=0))
    config = load(None, {"scenario": scenario, "node_name": "sim-node-0"})
    ctx = sim_context_for(config, node, oneshot=False)
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        collector = EnginesCollector(ctx)
        first = samples_of(render_text(await families_of(collector, "a"))
                           .decode())
        clock.t += gap
        second = samples_of(render_text(await families_of(collector, "b"))
                            .decode())
        await collector.close()
    return first, second


def _rate(a: list[Any], b: list[Any], name: str, **labels: str) -> float:
    return (find(b, name, **labels)[0] - find(a, name, **labels)[0]) / 60.0


async def test_prefix_hit_low_shows_in_the_counter_rates() -> None:
    healthy = await _two_polls("healthy")
    low = await _two_polls("prefix-hit-low")

    def ratio(pair: tuple[list[Any], list[Any]]) -> float:
        kw = {"engine": "sglang", "role": "prefill"}
        return _rate(*pair, P + "prefix_cache_hit_tokens_total", **kw) / \
            _rate(*pair, P + "prefix_cache_query_tokens_total", **kw)

    assert ratio(healthy) == pytest.approx(0.6, abs=0.01)
    assert ratio(low) == pytest.approx(0.04, abs=0.01)


async def test_kv_transfer_slow_shows_in_bytes_per_second() -> None:
    def speed(pair: tuple[list[Any], list[Any]]) -> float:
        kw = {"engine": "sglang", "role": "prefill"}
        return _rate(*pair, P + "kv_transfer_bytes_total", **kw) / \
            _rate(*pair, P + "kv_transfer_seconds_total", **kw)

    healthy, slow = speed(await _two_polls("healthy")), speed(await _two_polls("kv-transfer-slow"))
    assert healthy > 5e9 and slow < 0.5e9
    first, _ = await _two_polls("kv-transfer-slow")
    assert find(first, P + "pd_queue_requests", role="decode", stage="transfer") == [60.0]


async def test_gauge_scenarios() -> None:
    full, _ = await _two_polls("kv-cache-full")
    assert find(full, P + "kv_cache_usage_ratio", role="decode") == [0.99]  # SGLang rounds
    backlog, _ = await _two_polls("queue-backlog")
    assert find(backlog, P + "requests_waiting", role="prefill") == [380.0]
    assert find(backlog, P + "pd_queue_requests", role="prefill", stage="bootstrap") == [45.0]


async def test_engine_down_is_reported_with_a_reason() -> None:
    first, _ = await _two_polls("engine-down")
    assert find(first, "kvscope_engine_up", pod="sglang-decode-0", reason="connect",
                role="decode") == [0.0]
    assert not find(first, P + "requests_running", role="decode")
    assert find(first, "kvscope_engine_up", pod="sglang-prefill-0", reason="") == [1.0]


@pytest.mark.parametrize("variant", sorted(RENDERERS))
async def test_every_fake_engine_variant_is_read(variant: str) -> None:
    engine_name = RENDERERS[variant][0]
    node = SimNode()
    role = "prefill" if variant.startswith("sglang") else "both"
    fake = SimEngine(f"{variant}-0", variant, role=role, tp=2, load=Load(xfer_fail_rate=0.01),
                     features=frozenset({"nixl", "lmcache"}))
    config = load(None, {"collectors.engines.discovery": False})
    ctx = NodeContext(config=config)
    async with AsyncExitStack() as stack:
        url = await start_engine(fake, node, stack)
        ctx = NodeContext(config=load(None, {"collectors.engines.discovery": False,
                                             "collectors.engines.targets": [{"url": url}]}))
        collector = EnginesCollector(ctx)
        samples = samples_of(render_text(await families_of(collector, "v"))
                             .decode())
        await collector.close()
    assert find(samples, "kvscope_engine_up", reason="") == [1.0]
    assert find(samples, "kvscope_engine_info", engine=engine_name)
    normalized = {n for n, _, _ in samples if n.startswith(P) and not n.startswith(
        (P + "up", P + "info", P + "scrape", P + "targets", P + "exposition"))}
    assert normalized, f"{variant}: no normalized series"


@pytest.mark.parametrize("variant", sorted(RENDERERS))
def test_fake_counters_only_grow(variant: str) -> None:
    fake = SimEngine("e", variant, role="prefill", tp=2, fault={"req_rate": 9.0, "kv_usage": 0.9},
                     fault_at=30.0, features=frozenset({"nixl", "lmcache"}))
    before, after = parse(render(fake, 10.0)), parse(render(fake, 90.0))
    assert isinstance(before, Exposition) and isinstance(after, Exposition)
    assert before.invalid_lines == 0 and after.invalid_lines == 0
    grew = 0
    for name, samples in after.samples.items():
        kind = before.types.get(name.removesuffix("_total")) or before.types.get(name)
        cumulative = name.endswith(("_total", "_bucket", "_count", "_sum", "_nums_")) or \
            kind == "counter"
        if not cumulative or name.endswith("_created"):
            continue
        old = {tuple(s.labels.items()): s.value for s in before.get(name)}
        for s in samples:
            assert s.value >= old.get(tuple(s.labels.items()), 0.0), (name, s.labels)
            grew += s.value > old.get(tuple(s.labels.items()), 0.0)
    assert grew > 0


# ---- discovery ---------------------------------------------------------------------------

NODE = "sim-node-0"


def _pod(name: str, ann: dict[str, str], labels: dict[str, str] | None = None, *,
         phase: str = "Running", ports: list[dict[str, Any]] | None = None,
         node: str = NODE, ip: str = "127.0.0.23") -> Pod:
    pod = parse_pod({"metadata": {"name": name, "namespace": "ns", "annotations": ann,
                                  "labels": labels or {}},
                     "spec": {"nodeName": node, "containers": [{"name": "c",
                                                                "ports": ports or []}]},
                     "status": {"phase": phase, "podIP": ip}})
    assert pod is not None
    return pod


def test_targets_from_pod_annotations_and_pd_labels() -> None:
    cfg, pd = EnginesConfig(), PdSettings()
    pods = [
        _pod("annotated", {"kvscope.io/scrape": "true", "kvscope.io/port": "30000",
                           "kvscope.io/path": "stats", "kvscope.io/engine": "sglang",
                           "kvscope.io/role": "p", "kvscope.io/model": "glm"}),
        _pod("by-label", {}, {"kvscope.io/pd-role": "decode"},
             ports=[{"name": "grpc", "containerPort": 9000},
                    {"name": "http", "containerPort": 8000}]),
        _pod("opted-out", {"kvscope.io/scrape": "false", "kvscope.io/port": "1"},
             {"pd-role": "prefill"}),
        _pod("pending", {"kvscope.io/scrape": "true", "kvscope.io/port": "1"}, phase="Pending"),
        _pod("no-port", {"kvscope.io/scrape": "true"}),
        _pod("plain", {}),
        _pod("odd-engine", {"kvscope.io/scrape": "true", "kvscope.io/port": "8080",
                            "kvscope.io/engine": "triton"}),
    ]
    found = targets_from_pods(pods, cfg, pd, NODE)
    targets = {t.pod: t for t in found.targets}
    assert set(targets) == {"annotated", "by-label", "odd-engine"}
    assert found.refused == {"port": 1}  # no-port
    a = targets["annotated"]
    assert (a.url, a.engine, a.role, a.model, a.namespace) == \
        ("http://127.0.0.23:30000/stats", "sglang", "prefill", "glm", "ns")
    b = targets["by-label"]
    assert (b.url, b.role, b.engine) == ("http://127.0.0.23:8000/metrics", "decode", None)
    assert targets["odd-engine"].engine is None  # unknown names fall back to detection


async def test_without_a_kubernetes_api_only_static_targets_are_scraped(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    caplog.set_level(logging.INFO, logger="kvscope.collectors.engines")
    ctx = NodeContext(config=load(None, {"collectors.engines.targets": [
        {"url": "http://127.0.0.1:9/metrics"}]}))
    collector = EnginesCollector(ctx)
    for _ in range(3):
        families = (await collector.poll(Tier.FAST, BlockingPool("k"))).families
    await collector.close()
    said = [r.getMessage() for r in caplog.records if "no Kubernetes API" in r.getMessage()]
    assert len(said) == 1
    assert not any(f.name == "kvscope_engine_discovery_up" for f in families)
    targets = next(f for f in families if f.name == "kvscope_engine_targets")
    assert {s.labels["source"]: s.value for s in targets.samples} == \
        {"static": 1.0, "discovered": 0.0}


async def test_discovery_failure_keeps_known_targets() -> None:
    clock = Clock()
    node = build_scenario("healthy", SimOptions(clock=clock, latency_scale=0))
    ctx = sim_context_for(load(None, {"scenario": "healthy", "node_name": "sim-node-0",
                                      "collectors.engines.discovery_interval": 1.0}), node,
                          oneshot=False)
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        collector = EnginesCollector(ctx)
        await collector.poll(Tier.FAST, BlockingPool("d"))
        kube = collector._discovery._kube
        assert kube is not None
        await kube.close()
        kube.api_url = "http://127.0.0.1:9"  # the API server goes away
        collector._discovery._at = -1e9
        families = (await collector.poll(Tier.FAST, BlockingPool("d"))).families
        await collector.close()
    samples = samples_of(render_text(families).decode())
    assert find(samples, "kvscope_engine_discovery_up") == [0.0]
    assert find(samples, "kvscope_engine_up", role="decode", reason="") == [1.0]


def test_the_catalogue_lists_the_engines_starter_and_equipment() -> None:
    from kvscope.sim.catalogue import EQUIPMENT, STARTERS

    assert sim_engines.start_engines in STARTERS
    assert sim_engines.equip_engines in EQUIPMENT


def test_promtool_accepts_the_engine_families() -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool comes with Debian's prometheus (tests/run.sh)"
    result = CliRunner().invoke(main, ["collect", "--scenario", "kv-transfer-slow"])
    engine_text = "".join(
        line + "\n" for line in result.stdout.splitlines()
        if "kvscope_engine_" in line)
    lint = subprocess.run([promtool, "check", "metrics"], input=engine_text, text=True,
                          capture_output=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "kvscope_engine_kv_transfer_seconds_total" in engine_text


SCRAPE = {"kvscope.io/scrape": "true", "kvscope.io/port": "8000"}
# The cloud metadata address, built so that no copyable link-local address sits in the source.
METADATA = str(ipaddress.ip_address(0xA9FEA9FE))


def test_discovery_only_targets_this_nodes_pod_ips_on_plain_paths() -> None:
    """A pod object can only point the agent at its own IP on this node: the ways around that
    (another node's pod, a metadata or garbage IP, a port or path that is more than one) are
    refused and counted."""
    pods = [
        _pod("good", SCRAPE),
        _pod("elsewhere", SCRAPE, node="sim-node-1"),
        _pod("no-node", SCRAPE, node=""),
        _pod("metadata-ip", SCRAPE, ip=METADATA),
        _pod("metadata-v6", SCRAPE, ip="fe80::1"),
        _pod("hostname-ip", SCRAPE, ip="metadata.internal"),
        _pod("bad-port", {**SCRAPE, "kvscope.io/port": f"80@{METADATA}"}),
        _pod("query", {**SCRAPE, "kvscope.io/path": "/metrics?redirect=x"}),
        _pod("dotdot", {**SCRAPE, "kvscope.io/path": "/../latest/meta-data"}),
        _pod("authority", {**SCRAPE, "kvscope.io/path": f"//{METADATA}/latest"}),
        _pod("at-sign", {**SCRAPE, "kvscope.io/path": f"@{METADATA}/x"}),
        _pod("by-label-elsewhere", {}, {"kvscope.io/pd-role": "decode"}, node="sim-node-1",
             ports=[{"name": "http", "containerPort": 8000}]),
    ]
    found = targets_from_pods(pods, EnginesConfig(), PdSettings(), NODE)
    assert [t.url for t in found.targets] == ["http://127.0.0.23:8000/metrics"]
    assert found.refused == {"other_node": 3, "pod_ip": 3, "port": 1, "path": 4}
    assert ("ns/metadata-ip", "pod_ip") in found.refused_pods


async def test_refused_pods_are_exported_and_not_scraped(
        caplog: pytest.LogCaptureFixture) -> None:
    from kvscope.sim.node import SimPod

    clock = Clock()
    node = build_scenario("healthy", SimOptions(clock=clock, latency_scale=0))
    node.pods.append(SimPod(name="forged", namespace="inference", container="c",
                            annotations=dict(SCRAPE), pod_ip=METADATA))
    ctx = sim_context_for(load(None, {"scenario": "healthy", "node_name": node.hostname,
                                      "collectors.engines.discovery_interval": 1e-3}), node,
                          oneshot=False)
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        collector = EnginesCollector(ctx)
        families = await families_of(collector, "r")
        await families_of(collector, "r")
        await collector.close()
    samples = samples_of(render_text(families).decode())
    assert find(samples, "kvscope_engine_discovery_refused_pods", reason="pod_ip") == [1.0]
    assert find(samples, "kvscope_engine_discovery_refused_pods", reason="port") == [0.0]
    assert not find(samples, "kvscope_engine_up", pod="forged")
    assert find(samples, "kvscope_engine_targets", source="discovered") == [2.0]
    said = [r for r in caplog.records if "inference/forged" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING  # once, not every poll


async def test_a_fake_engine_that_goes_down_refuses_and_comes_back() -> None:
    """The decode engine dies at t=10 and is back at t=20 (node clock): the poll after its
    death sees `connect` at once (its kept-alive connection is closed, not left to hang into a
    timeout), and the one after its return sees it up on the same URL."""
    import asyncio

    clock = Clock()
    node = build_scenario("healthy", SimOptions(clock=clock, latency_scale=0))
    decode = sim_engines.engine(node, sim_engines.DECODE)
    decode.down_at, decode.up_at = 10.0, 20.0
    ctx = sim_context_for(load(None, {"scenario": "healthy", "node_name": node.hostname}), node,
                          oneshot=False)

    async def decode_up() -> tuple[float, str]:
        samples = samples_of(render_text(await families_of(collector, "u")).decode())
        up = [(v, lab["reason"]) for n, lab, v in samples
              if n == "kvscope_engine_up" and lab["pod"] == sim_engines.DECODE]
        assert len(up) == 1
        return up[0]

    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        url = decode.url
        collector = EnginesCollector(ctx)
        seen = [await decode_up()]
        clock.t = 12.0
        await asyncio.sleep(sim_engines.WATCH_INTERVAL * 4)
        seen.append(await decode_up())
        clock.t = 21.0
        await asyncio.sleep(sim_engines.WATCH_INTERVAL * 4)
        seen.append(await decode_up())
        await collector.close()
    assert seen == [(1.0, ""), (0.0, "connect"), (1.0, "")]
    assert decode.url == url
