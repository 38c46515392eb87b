"""Grafana dashboards as one ConfigMap each, found by the sidecar's label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helm_chart import CHART, by_kind, chart_copy, render, template_text

pytestmark = pytest.mark.integration

SYNCED = sorted((CHART / "files" / "dashboards").glob("*.json"))


def _dashboard_maps(sets: tuple[str, ...] = (), chart: Path = CHART) -> list[dict[str, Any]]:
    return [c for c in by_kind(render(sets=sets, chart=chart), "ConfigMap")
            if "grafana_dashboard" in c["metadata"]["labels"]]


@pytest.mark.skipif(not SYNCED, reason="the chart carries no dashboards yet")
def test_one_labelled_config_map_per_dashboard_with_the_json_unchanged() -> None:
    maps = _dashboard_maps()
    assert len(maps) == len(SYNCED)
    by_key = {key: value for c in maps for key, value in c["data"].items()}
    assert set(by_key) == {p.name for p in SYNCED}
    for path in SYNCED:
        assert json.loads(by_key[path.name]) == json.loads(path.read_text())
        # Grafana's own templating survives: .Files.Get output is not template-rendered.
        if "${datasource}" in path.read_text():
            assert "${datasource}" in by_key[path.name]
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert len(config_map["metadata"]["name"]) <= 63


def test_label_namespace_and_folder_come_from_values(tmp_path: Path) -> None:
    chart = chart_copy(tmp_path, dashboards={"Fixture_Board.json": '{"uid": "fixture"}'})
    maps = _dashboard_maps(("dashboards.namespace=grafana", "dashboards.labelValue=kvscope",
                            "dashboards.annotations.grafana_folder=GPU"), chart=chart)
    assert len(maps) == 1
    meta = maps[0]["metadata"]
    assert meta["namespace"] == "grafana"
    assert meta["labels"]["grafana_dashboard"] == "kvscope"
    assert meta["annotations"] == {"grafana_folder": "GPU"}
    assert meta["name"] == "kvscope-dashboard-fixture-board"
    assert maps[0]["data"] == {"Fixture_Board.json": '{"uid": "fixture"}'}


def test_dashboards_can_be_turned_off() -> None:
    assert _dashboard_maps(("dashboards.enabled=false",)) == []


def test_no_dashboard_files_render_no_config_map(tmp_path: Path) -> None:
    assert _dashboard_maps(chart=chart_copy(tmp_path)) == []


def test_a_dashboard_too_large_for_a_config_map_is_refused(tmp_path: Path) -> None:
    big = json.dumps({"uid": "big", "panels": ["x" * 1_100_000]})
    chart = chart_copy(tmp_path, dashboards={"big.json": big})
    result = template_text(chart=chart, check=False)
    assert result.returncode != 0
    assert "files/dashboards/big.json is" in result.stderr
    assert "too large for one ConfigMap" in result.stderr
