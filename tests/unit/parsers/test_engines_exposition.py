"""The exposition parser: every reference sample, malformed input, OpenMetrics, fuzzing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines_helpers import fixture, fixture_names, samples_of
from kvscope.parsers.exposition import Exposition, ParseError, le_bound, parse


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_parses_like_prometheus_client(name: str) -> None:
    """Our fast parser returns exactly the samples prometheus_client's parser finds."""
    text = fixture(name)
    expo = parse(text)
    assert isinstance(expo, Exposition)
    assert expo.invalid_lines == 0
    ours = sorted((s.name.removesuffix("_total"), sorted(s.labels.items()), s.value)
                  for samples in expo.samples.values() for s in samples)
    # prometheus_client renames a counter sample written without `_total` (TGI, Mooncake) to
    # name_total; ours keeps the name as written. Compare without the suffix.
    theirs = sorted((n.removesuffix("_total"), sorted(lab.items()), v)
                    for n, lab, v in samples_of(text))
    assert ours == theirs


def test_keep_filters_samples_but_names_are_all_seen() -> None:
    expo = parse(fixture("vllm_v1_scrape"), keep={"vllm:num_requests_running"})
    assert isinstance(expo, Exposition)
    assert list(expo.samples) == ["vllm:num_requests_running"]
    assert "vllm:prefix_cache_hits_total" in expo.names
    assert expo.valid_lines == 8


def test_types_and_openmetrics_markers() -> None:
    text = ("# HELP x_seconds a histogram\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\n"
            'x_seconds_bucket{le="1.0"} 3 # {trace_id="abc"} 0.7 1700000000.000\n'
            'x_seconds_bucket{le="+Inf"} 4\nx_seconds_count 4\nx_seconds_sum 2.5\n# EOF\n')
    expo = parse(text)
    assert isinstance(expo, Exposition)
    assert expo.openmetrics and expo.types == {"x_seconds": "histogram"}
    assert [s.value for s in expo.get("x_seconds_bucket")] == [3.0, 4.0]
    assert math.isinf(le_bound(expo.get("x_seconds_bucket")[1].labels) or 0)


def test_escaped_and_odd_label_values() -> None:
    tgi = "tgi_batch_inference_duration_bucket"
    text = (f'{tgi}{{le="0.02",method="{{\'method\': \'prefill\'}}"}} 112.0\n'
            'x{path="a\\"b\\\\c\\nd",other="}{,="} 1\n'
            'y{a="1" , b="2" ,} 2 1700000000000\n')
    expo = parse(text)
    assert isinstance(expo, Exposition) and expo.invalid_lines == 0
    assert expo.get("tgi_batch_inference_duration_bucket")[0].labels["method"] == \
        "{'method': 'prefill'}"
    assert expo.get("x")[0].labels == {"path": 'a"b\\c\nd', "other": "}{,="}
    assert expo.get("y")[0].labels == {"a": "1", "b": "2"} and expo.get("y")[0].value == 2.0


def test_malformed_lines_are_skipped_and_counted() -> None:
    text = ("good 1\n"
            "no_value\n"
            'bad_labels{a=1} 2\n'
            'unterminated{a="1 3\n'
            "bad_value{} abc\n"
            "9starts_with_digit 1\n"
            "also_good{a=\"x\"} NaN\n")
    expo = parse(text)
    assert isinstance(expo, Exposition)
    assert expo.invalid_lines == 5
    assert set(expo.samples) == {"good", "also_good"}
    assert math.isnan(expo.get("also_good")[0].value)


@pytest.mark.parametrize("text", ["<html><body>502 Bad Gateway</body></html>",
                                  "{\"error\": \"not found\"}", "\x00\x01\x02binary"])
def test_garbage_is_an_error_value(text: str) -> None:
    result = parse(text)
    assert isinstance(result, ParseError)
    assert result.reason == "parse"


def test_empty_payload_is_valid_and_empty() -> None:
    expo = parse("")
    assert isinstance(expo, Exposition)
    assert not expo.samples and not expo.names


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_never_raises_on_arbitrary_text(text: str) -> None:
    result = parse(text)
    assert isinstance(result, Exposition | ParseError)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(fixture("sglang_pd_prefill_histogram").splitlines()
                                + fixture("tgi_router").splitlines()), max_size=40),
       st.integers(0, 200))
def test_truncated_and_shuffled_samples_never_raise(lines: list[str], cut: int) -> None:
    text = "\n".join(lines)
    result = parse(text[:cut] + text[cut + 3:])
    assert isinstance(result, Exposition | ParseError)
