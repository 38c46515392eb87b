"""`kvscope collect` with engine targets from a config file: every reference sample, end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from engines_helpers import EXPECTED, P, ThreadedServer, find, fixture_app, samples_of
from kvscope.cli import main


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(fixture_app) as srv:
        yield srv


def _collect(tmp_path: Path, targets: list[dict[str, str]],
             max_bytes: int = 16 << 20) -> tuple[int, str]:
    config = {"collectors": {"gpu": {"enabled": False},
                             "engines": {"discovery": False, "timeout": 2.0,
                                         "target_timeout": 0.5, "targets": targets,
                                         "max_response_bytes": max_bytes}}}
    path = tmp_path / "kvscope.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["collect", "--config", str(path)])
    return result.exit_code, result.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_collect_emits_normalized_series_for_each_sample(
        server: ThreadedServer, tmp_path: Path, name: str) -> None:
    engine, role, model, expected, absent = EXPECTED[name]
    code, out = _collect(tmp_path, [{"url": server.url(f"/{name}")}])
    assert code == 0, out
    samples = samples_of(out)
    assert find(samples, "kvscope_engine_up", engine=engine, reason="") == [1.0]
    for family, labels, value in expected:
        got = find(samples, P + family, engine=engine, role=role, model=model,
                   instance=f"127.0.0.1:{server.port}/{name}", **labels)
        assert got == [pytest.approx(value)], f"{family}{labels}: {got}"
    for family in absent:
        assert not find(samples, P + family), f"{family} must be absent"


def test_configured_role_and_model_win(server: ThreadedServer, tmp_path: Path) -> None:
    code, out = _collect(tmp_path, [{"url": server.url("/tgi_router"), "role": "decode",
                                     "model": "bigcode/starcoder2", "engine": "tgi"}])
    assert code == 0
    assert find(samples_of(out), P + "requests_waiting", role="decode",
                model="bigcode/starcoder2") == [4.0]


def test_dead_slow_and_garbage_targets_are_reported_not_fatal(
        server: ThreadedServer, tmp_path: Path) -> None:
    targets = [{"url": server.url("/slow?s=10")}, {"url": server.url("/garbage")},
               {"url": server.url("/reset")}, {"url": "http://127.0.0.1:9/metrics",
                                               "engine": "vllm"},
               {"url": server.url("/huge")}, {"url": server.url("/lmdeploy")}]
    code, out = _collect(tmp_path, targets, max_bytes=1_000_000)
    assert code == 0
    samples = samples_of(out)
    down = {lab["reason"] for n, lab, v in samples if n == "kvscope_engine_up" and v == 0}
    assert down == {"timeout", "parse", "reset", "connect", "too_large"}
    assert find(samples, "kvscope_engine_up", engine="vllm", instance="127.0.0.1:9") == [0.0]
    assert find(samples, "kvscope_collector_up", collector="engines") == [1.0]
    assert find(samples, P + "kv_cache_usage_ratio", engine="lmdeploy") == [0.37]


def test_bad_target_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("collectors:\n  engines:\n    targets:\n      - url: localhost:8000\n")
    result = CliRunner().invoke(main, ["collect", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "collectors.engines.targets.0.url" in result.stderr
