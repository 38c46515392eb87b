"""doctor on the simulated node: engines, degraded links, pods over SYS; and the same findings
when the sections read the agent's parsed /metrics instead of the runtime."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from conftest import context_of, doctor_run, start_sim_services
from kvscope import doctor
from kvscope.app import build_runtime
from kvscope.config import load
from kvscope.doctor import Finding, Severity, Snapshot, local_snapshot
from kvscope.parsers.exposition import Exposition, parse


async def _snapshots(scenario: str) -> tuple[Snapshot, Snapshot]:
    """The local snapshot and one rebuilt from the same poll's exposition text."""
    ctx = context_of(load(None, {"scenario": scenario}), oneshot=True)
    async with AsyncExitStack() as stack:
        ctx = await start_sim_services(ctx, stack)
        runtime = build_runtime(ctx)
        try:
            await runtime.poll_all_once()
            local = local_snapshot(ctx, runtime)
            expo = parse(runtime.exposition().decode())
        finally:
            await runtime.stop()
    assert isinstance(expo, Exposition)
    rows = ((s.name, s.labels, s.value) for batch in expo.samples.values() for s in batch)
    return local, Snapshot.from_samples(ctx.config, "http://127.0.0.1:9447/metrics", rows)


async def _findings(snap: Snapshot) -> list[Finding]:
    from kvscope.doctor import sections as _registers  # noqa: F401

    return [f for build in doctor.SECTIONS for f in (await build(snap)).findings]


def _titles(findings: list[Finding], severity: Severity) -> list[str]:
    return [f.title for f in findings if f.severity is severity]


@pytest.mark.parametrize(("scenario", "needle"), [
    ("engine-down", "inference/sglang-decode-0 (decode) is down: connect"),
    ("kv-cache-full", "inference/sglang-decode-0 (decode): KV cache 99.0% full, 85 requests "
                      "waiting"),
    ("kv-transfer-slow", "KV transfer backlog: 60 in transfer on inference/sglang-decode-0"),
])
async def test_engine_incidents_are_critical(scenario: str, needle: str) -> None:
    local, _ = await _snapshots(scenario)
    critical = _titles(await _findings(local), Severity.CRITICAL)
    assert [t for t in critical if needle in t], critical
    text, code = await doctor.report(local)
    assert code == 1 and "== Inference engines and KV transfer ==" in text


async def test_transfer_backlog_names_the_path_between_the_pd_pods() -> None:
    local, _ = await _snapshots("kv-transfer-slow")
    (title,) = [t for t in _titles(await _findings(local), Severity.CRITICAL) if "backlog" in t]
    assert ("Likely path: sglang-prefill-0 (GPUs 0,1,2,3) -> sglang-decode-0 (GPUs 4,5,6,7) "
            "over NV18 on this node") in title


async def test_queue_backlog_warns_and_healthy_is_quiet() -> None:
    backlog, _ = await _snapshots("queue-backlog")
    warnings = _titles(await _findings(backlog), Severity.WARNING)
    assert any("380 requests waiting for 64 running" in t for t in warnings), warnings
    assert any("45 requests in the PD bootstrap queue" in t for t in warnings), warnings
    healthy, _ = await _snapshots("healthy")
    assert await _findings(healthy) == []


async def test_link_renegotiated_to_half_rate_is_reported() -> None:
    local, _ = await _snapshots("link-degraded")
    warnings = _titles(await _findings(local), Severity.WARNING)
    assert ["mlx5_1 port 1 runs at 100 Gb/s (4X EDR) while mlx5_0 port 1 (same MT4123 "
            "InfiniBand) runs at 200 Gb/s (4X HDR)" in t for t in warnings] == [True], warnings


async def test_pods_whose_gpus_meet_over_sys_are_reported() -> None:
    local, _ = await _snapshots("pcie-only-tp")
    warnings = _titles(await _findings(local), Severity.WARNING)
    assert any(t.startswith("inference/sglang-prefill-0: its GPUs 2,3,4,5 meet over SYS "
                            "(GPU2-GPU4, GPU2-GPU5, GPU3-GPU4, GPU3-GPU5)") for t in warnings)
    assert any(t.startswith("inference/sglang-decode-0: its GPUs 0,1,6,7 meet over SYS")
               for t in warnings)
    plain, _ = await _snapshots("pcie-only")  # packed per socket: PIX/NODE only, no warning
    assert not [t for t in _titles(await _findings(plain), Severity.WARNING) if "SYS" in t]


async def test_pods_mixing_nvlink_and_pcie_pairs_are_reported() -> None:
    """TP across NVLink bridges: pairs inside a bridge have NVLink, pairs across bridges only
    PCIe, so the pod's all-reduce runs at PCIe speed."""
    local, remote = await _snapshots("tp-over-pcie")
    for snap in (local, remote):
        warnings = _titles(await _findings(snap), Severity.WARNING)
        mixed = [t for t in warnings if "mix NVLink and PCIe" in t]
        assert len(mixed) == 2, warnings
        assert any(t.startswith("inference/sglang-decode-0: its GPUs 4,5,6,7 mix NVLink and PCIe: "
                                "GPU4-GPU6") for t in mixed), mixed
    healthy, _ = await _snapshots("healthy")  # NV18 everywhere: nothing to say
    assert not [t for t in _titles(await _findings(healthy), Severity.WARNING)
                if "mix NVLink" in t]


@pytest.mark.parametrize("scenario", ["engine-down", "kv-cache-full", "kv-transfer-slow",
                                      "queue-backlog", "link-degraded", "pcie-only-tp",
                                      "nvlink-bypass", "port-down", "oom-risk", "qp-failure"])
async def test_parsed_metrics_give_the_findings_of_the_runtime(scenario: str) -> None:
    local, remote = await _snapshots(scenario)
    here, there = await _findings(local), await _findings(remote)
    assert here, f"{scenario}: no findings at all"
    # The remote read has no container analysis: the PD pair findings are worded from the
    # exported pair series instead, so compare severities there and titles everywhere else.
    def key(f: Finding) -> tuple[Severity, str]:
        return (f.severity, "PD group" if f.title.startswith("PD group") else f.title)
    assert sorted(map(key, there)) == sorted(map(key, here))


async def test_a_second_engine_behind_one_target_does_not_add_to_the_first() -> None:
    from kvscope.doctor.engines import engines_section

    ident = {"instance": "127.0.0.1:8000", "role": "decode", "pod": "p", "namespace": "n"}
    rows = [("kvscope_engine_up", {**ident, "engine": "dynamo", "reason": ""}, 1.0),
            # Dynamo and the vLLM it passes through both report the same KV cache
            ("kvscope_engine_kv_cache_usage_ratio", {**ident, "engine": "dynamo"}, 0.93),
            ("kvscope_engine_kv_cache_usage_ratio", {**ident, "engine": "vllm"}, 0.93),
            ("kvscope_pod_gpu_info", {"pod": "p", "gpu": "not-a-number"}, 1.0)]
    section = await engines_section(Snapshot.from_samples(load(None, {}), "x", rows))
    (finding,) = section.findings
    assert finding.severity is Severity.WARNING
    assert finding.title.startswith("n/p (decode): KV cache 93.0% full")


async def test_window_turns_totals_into_the_current_transfer_speed() -> None:
    ctx = context_of(load(None, {"scenario": "kv-transfer-slow"}), oneshot=True)
    text, code = await doctor_run(ctx, window=1.0)
    assert code == 1
    # since start the transfers averaged ~8.7 GB/s; the fault's 0.25 GB/s shows only in a window
    assert "transfers ran at 0.25 GB/s (over the last 1 s)" in text
    assert "xfer 0.25 GB/s (over the last 1 s)" in text


def _failure_rows(failed: float) -> list[tuple[str, dict[str, str], float]]:
    ident = {"instance": "127.0.0.1:30000", "engine": "sglang", "role": "prefill", "pod": "p",
             "namespace": "n"}
    return [("kvscope_engine_up", {**ident, "reason": ""}, 1.0),
            ("kvscope_engine_kv_transfer_failures_total", {**ident, "kind": "transfer"}, failed)]


@pytest.mark.parametrize(("before", "after", "severity", "words"), [
    (3.0, 7.0, Severity.WARNING, "failed KV transfers in the last 5 s (transfer 4)"),
    (7.0, 7.0, Severity.INFO, "failed KV transfers since start, none in the last 5 s "
                              "(transfer 7)"),
])
async def test_failures_in_the_window_warn_and_old_ones_inform(
        before: float, after: float, severity: Severity, words: str) -> None:
    from kvscope.doctor import with_previous
    from kvscope.doctor.engines import engines_section

    config = load(None, {})
    first = Snapshot.from_samples(config, "x", _failure_rows(before))
    snap = with_previous(Snapshot.from_samples(config, "x", _failure_rows(after)), first, 5.0)
    (finding,) = (await engines_section(snap)).findings
    assert finding.severity is severity
    assert f"n/p (prefill): {words}" in finding.title


async def test_erdma_without_compat_mode_is_exported_and_reported() -> None:
    """The out-of-band QP setup incident: the module parameter is a series, and doctor warns,
    locally and from the parsed exposition; the healthy eRDMA node (compat_mode=Y) is quiet."""
    local, remote = await _snapshots("erdma-no-compat")
    assert [v for _, v in doctor.samples(remote, "kvscope_erdma_compat_mode")] == [0.0]
    for snap in (local, remote):
        warnings = _titles(await _findings(snap), Severity.WARNING)
        assert ("erdma driver runs without compat_mode (erdma_0): engines that exchange QP "
                "numbers out of band cannot connect") in warnings, warnings
    on, _ = await _snapshots("erdma")
    assert [v for _, v in doctor.samples(on, "kvscope_erdma_compat_mode")] == [1.0]
    assert not [t for t in _titles(await _findings(on), Severity.WARNING) if "compat_mode" in t]
    healthy, _ = await _snapshots("healthy")  # mlx5 only: no erdma module, no series
    assert not list(doctor.samples(healthy, "kvscope_erdma_compat_mode"))
