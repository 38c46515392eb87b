"""The normalization table and the collector's counter accumulation, on parsed payloads."""

from __future__ import annotations

import pytest

from engines_helpers import EXPECTED, P, fixture
from kvscope.collectors.engines import Accumulator
from kvscope.collectors.engines.schema import FAMILIES
from kvscope.parsers.engines import KEEP, Fact, Normalized, detect, normalize
from kvscope.parsers.exposition import Exposition, parse


def _norm(text: str, hint: str | None = None) -> Normalized:
    expo = parse(text, KEEP)
    assert isinstance(expo, Exposition)
    return normalize(expo, hint)


def _name(fact: Fact) -> str:
    """The exported name of a fact, without the common prefix (the collector's schema)."""
    return FAMILIES[fact].name.removeprefix(P)


def _values(norm: Normalized) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {(_name(v.family), v.labels): v.value for v in norm.values}
    for h in norm.histograms:
        fam = _name(h.family)
        for bound, n in h.buckets:
            le = "+Inf" if bound == float("inf") else repr(bound)
            out[(f"{fam}_bucket", (*h.labels, ("le", le)))] = n
        out[(f"{fam}_count", h.labels)] = h.count
        if h.sum is not None:
            out[(f"{fam}_sum", h.labels)] = h.sum
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_sample_normalizes(name: str) -> None:
    engine, role, model, expected, absent = EXPECTED[name]
    norm = _norm(fixture(name))
    assert norm.engines[0] == engine
    assert (norm.role or "both") == role
    assert (norm.model or "") == model
    got = _values(norm)
    for family, labels, value in expected:
        key = (family, tuple(sorted(labels.items())))
        assert key in got, f"{family}{labels} missing; have {sorted(got)}"
        assert got[key] == pytest.approx(value), family
    families = {k[0] for k in got}
    for family in absent:
        assert family not in families, f"{family} must be absent"


def test_tensor_parallel_ranks_take_the_max_not_the_sum() -> None:
    text = "".join(
        f'sglang:num_running_reqs{{engine_type="decode",model_name="m",tp_rank="{r}"}} 40\n'
        f'sglang:token_usage{{engine_type="decode",model_name="m",tp_rank="{r}"}} {0.5 + r / 100}\n'
        f'sglang:num_retracted_requests_total{{engine_type="decode",tp_rank="{r}"}} 7\n'
        for r in range(8))
    got = _values(_norm(text))
    assert got[("requests_running", ())] == 40
    assert got[("kv_cache_usage_ratio", ())] == pytest.approx(0.57)
    assert got[("preemptions_total", ())] == 7


def test_data_parallel_engines_are_summed() -> None:
    text = ('vllm:num_requests_running{engine="0",model_name="m"} 3\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 4\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2\n'
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.9\n'
            'vllm:time_to_first_token_seconds_bucket{engine="0",le="1.0",model_name="m"} 2\n'
            'vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 3\n'
            'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 3\n'
            'vllm:time_to_first_token_seconds_bucket{engine="1",le="1.0",model_name="m"} 5\n'
            'vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="m"} 5\n'
            'vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 5\n')
    got = _values(_norm(text))
    assert got[("requests_running", ())] == 7
    assert got[("kv_cache_usage_ratio", ())] == 0.9  # a ratio: the fullest rank
    assert got[("time_to_first_token_seconds_bucket", (("le", "1.0"),))] == 7
    assert got[("time_to_first_token_seconds_count", ())] == 8


def test_renamed_kv_usage_prefers_the_new_name() -> None:
    text = ('vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.3\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.3\n')
    norm = _norm(text)
    assert [v.value for v in norm.values if _name(v.family).endswith("usage_ratio")] == [0.3]


def test_sglang_type_change_gauge_then_histogram() -> None:
    gauge_era = _values(_norm(fixture("sglang_pd_prefill_gauge")))
    hist_era = _values(_norm(fixture("sglang_pd_prefill_histogram")))
    assert ("kv_transfer_last_seconds", ()) in gauge_era
    assert ("kv_transfer_seconds_total", ()) not in gauge_era
    assert ("kv_transfer_seconds_total", ()) in hist_era
    assert ("kv_transfer_last_seconds", ()) not in hist_era


def test_sglang_success_excludes_aborted() -> None:
    text = ('sglang:num_requests_total{model_name="m"} 100\n'
            'sglang:num_aborted_requests_total{model_name="m"} 4\n')
    got = _values(_norm(text))
    assert got[("requests_total", (("outcome", "success"),))] == 96
    assert got[("requests_total", (("outcome", "aborted"),))] == 4


def test_mooncake_dropped_zeros_read_as_zero_once_the_component_shows() -> None:
    got = _values(_norm("master_key_count 12\ntotal_get_nums_ 50\n"))
    assert got[("kv_store_hits_total", ())] == 0  # valid_get_nums_ not printed yet
    assert got[("kv_store_lookups_total", ())] == 50
    tent = _values(_norm('tent_read_bytes_total{transport="rdma"} 10\n'))
    assert tent[("kv_transfer_failures_total", (("kind", "transfer"),))] == 0


def test_empty_payload_counts_as_the_configured_engine_only() -> None:
    assert _norm("", "mooncake").engines == ("mooncake",)
    assert _norm("", None).engines == ()
    assert _norm("node_load1 0.5\n", "vllm").engines == ()  # not an engine at all


def test_detection_by_metric_names() -> None:
    names = {"vllm:num_requests_running", "lmcache:num_hit_tokens_total", "python_info"}
    assert detect(names) == ("vllm", "lmcache")
    assert detect({"go_goroutines"}) == ()


# ---- accumulation across engine restarts --------------------------------------------------

def _accumulated(acc: Accumulator, text: str) -> dict[str, float]:
    norm = _norm(text)
    return {_name(v.family) + str(dict(v.labels)):
            acc.counter(v.family, v.engine, v.labels, v.value, v.hold) for v in norm.values}


def test_counter_reset_is_added_not_subtracted() -> None:
    acc = Accumulator()
    line = 'vllm:prompt_tokens_total{engine="0",model_name="m"} %d\n'
    assert _accumulated(acc, line % 1000)["prompt_tokens_total{}"] == 1000
    assert _accumulated(acc, line % 1500)["prompt_tokens_total{}"] == 1500
    # the engine restarted: its counter starts again at 0 and has counted 200 since
    assert _accumulated(acc, line % 200)["prompt_tokens_total{}"] == 1700
    assert _accumulated(acc, line % 260)["prompt_tokens_total{}"] == 1760
    assert acc.resets == 1


def test_histogram_resets_as_a_whole() -> None:
    acc = Accumulator()

    def hist(b: int, n: int, s: float) -> str:
        name, labels = "vllm:e2e_request_latency_seconds", 'engine="0",model_name="m"'
        return (f'{name}_bucket{{{labels},le="1.0"}} {b}\n'
                f'{name}_bucket{{{labels},le="+Inf"}} {n}\n'
                f'{name}_count{{{labels}}} {n}\n{name}_sum{{{labels}}} {s}\n')

    for text in (hist(5, 10, 8.0), hist(0, 3, 9.5)):  # the sum alone did not drop
        h = acc.histogram(_norm(text).histograms[0])
    assert h.buckets == ((1.0, 5.0), (float("inf"), 13.0))
    assert h.count == 13 and h.sum == pytest.approx(17.5)
    assert acc.resets == 1


def test_difference_counter_holds_through_a_dip() -> None:
    acc = Accumulator()
    text = ('sglang:num_requests_total{model_name="m"} %d\n'
            'sglang:num_aborted_requests_total{model_name="m"} %d\n')
    key = "requests_total{'outcome': 'success'}"
    assert _accumulated(acc, text % (100, 4))[key] == 96
    # the abort was counted before the finished request: success dips by one, then recovers
    assert _accumulated(acc, text % (100, 5))[key] == 96
    assert _accumulated(acc, text % (102, 5))[key] == 97
    assert acc.resets == 0


def test_sglang_speed_histogram_bounds_scale_to_bytes_per_second() -> None:
    norm = _norm(fixture("sglang_pd_prefill_histogram"))
    (speed,) = [h for h in norm.histograms
                if _name(h.family) == "kv_transfer_speed_bytes_per_second"]
    # upstream bounds 0.1 ... 25 GiB/s (then +Inf), counts as printed
    assert speed.buckets[0] == (pytest.approx(0.1 * 2 ** 30), 0.0)
    assert dict(speed.buckets)[5.0 * 2 ** 30] == 6.0
    assert speed.buckets[-1] == (float("inf"), 50.0)


def test_priority_split_without_total_is_summed_with_total_read_alone() -> None:
    text = ('sglang:num_queue_reqs{priority="",tp_rank="0"} 5\n'
            'sglang:num_queue_reqs{priority="1",tp_rank="0"} 3\n'
            'sglang:num_queue_reqs{priority="2",tp_rank="0"} 2\n'
            'sglang:generation_tokens_total{model_name="m",priority=""} 40\n'
            'sglang:generation_tokens_total{model_name="m",priority="1"} 60\n')
    got = _values(_norm(text))
    assert got[("requests_waiting", ())] == 5
    assert got[("generation_tokens_total", ())] == 100
