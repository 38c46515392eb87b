"""The dashboards as Grafana will load them: fresh, self-contained, importable by the sidecar."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import dashboards_helpers as dh
from dashboards import build

DASHBOARDS = dh.generated()
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SIX = {"gpu-fleet", "gpu-node", "nvlink-topology", "rdma-fabric", "pd-serving", "kvscope-agent"}


def test_the_six_dashboards_are_generated_from_their_sources() -> None:
    assert set(DASHBOARDS) == SIX
    assert {source.slug for source in build.sources()} == SIX


def test_committed_json_is_fresh() -> None:
    """What CI runs: the generator's --check against the committed files."""
    result = subprocess.run([sys.executable, "-m", "dashboards.build", "--check"],
                            cwd=build.HERE.parent, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_check_reports_a_stale_a_missing_and_an_orphan_file() -> None:
    rendered = {build.GENERATED / "gpu-fleet.json": "{}\n",
                build.GENERATED / "not-there.json": "{}\n"}
    problems = build.stale(rendered)
    assert "gpu-fleet.json: differs from its .dashboard.py" in problems
    assert "not-there.json: missing" in problems
    # Every committed file the rendering above did not produce has no source.
    assert "gpu-node.json: no gpu-node.dashboard.py generates it" in problems


def test_rendering_is_deterministic() -> None:
    for source in build.sources():
        assert build.render(build.load(source)) == build.render(build.load(source))


@pytest.mark.parametrize("slug", sorted(SIX))
def test_sidecar_ready(slug: str) -> None:
    """No __inputs (the sidecar cannot resolve them), a fixed uid, the datasource variable."""
    dashboard = DASHBOARDS[slug]
    assert "__inputs" not in dashboard
    assert dashboard["uid"] == f"kvscope-{slug}".replace("kvscope-kvscope-", "kvscope-")
    assert "kvscope" in dashboard["tags"]
    first = dh.variables(dashboard)[0]
    assert (first["name"], first["type"], first["query"]) == ("datasource", "datasource",
                                                              "prometheus")
    for variable in dh.variables(dashboard)[1:]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    for annotation in dashboard["annotations"]["list"]:
        assert annotation["datasource"] == DATASOURCE
        assert annotation["expr"].startswith('ALERTS{alertstate="firing"')


@pytest.mark.parametrize("slug", sorted(SIX))
def test_every_panel_queries_the_datasource_variable(slug: str) -> None:
    dashboard = DASHBOARDS[slug]
    titles = [panel["title"] for panel in dh.panels(dashboard)]
    assert len(titles) == len(set(titles)), "panel titles repeat"
    for panel in dh.panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["description"], f"{panel['title']}: no description"
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize("slug", sorted(SIX))
def test_panels_tile_the_grid_without_overlap(slug: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in DASHBOARDS[slug]["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_variable_in_a_query_is_defined() -> None:
    for dashboard in DASHBOARDS.values():
        names = {variable["name"]: "x" for variable in dh.variables(dashboard)}
        for query in dh.queries(dashboard):
            dh.substitute(query.expr, names)   # raises on an unknown $variable


def test_drill_down_links_point_at_our_dashboards() -> None:
    uids = {dashboard["uid"] for dashboard in DASHBOARDS.values()}
    urls: list[str] = []
    for dashboard in DASHBOARDS.values():
        for panel in dh.panels(dashboard):
            urls += [link["url"] for link in panel["fieldConfig"]["defaults"].get("links", [])]
    assert urls, "no drill-down links"
    for url in urls:
        match = re.match(r"^/d/([\w-]+)\?\$\{__url_time_range\}&var-datasource=\$\{datasource\}",
                         url)
        assert match is not None and match.group(1) in uids, url
    linked = {re.match(r"^/d/([\w-]+)", url).group(1) for url in urls}  # type: ignore[union-attr]
    # Fleet -> node -> NVLink, and node or topology -> PD group.
    assert {"kvscope-gpu-node", "kvscope-nvlink-topology", "kvscope-pd-serving"} <= linked


def test_incident_only_panels_exist_and_say_so() -> None:
    listed = dh.incident_only()
    assert sum(len(v) for v in listed.values()) > 0
    by_uid = {dashboard["uid"]: dashboard for dashboard in DASHBOARDS.values()}
    for uid, scenarios in listed.items():
        descriptions = {p["title"]: p["description"] for p in dh.panels(by_uid[uid])}
        for title in scenarios:
            assert title in descriptions, f"{uid}: no panel {title!r}"
            assert "Empty while healthy" in descriptions[title]


def test_gpu_panels_use_dcgm_names() -> None:
    """GPU panels stay on dcgm-exporter's names, so they work where dcgm-exporter runs."""
    fleet = " ".join(q.expr for q in dh.queries(DASHBOARDS["gpu-fleet"]))
    node = " ".join(q.expr for q in dh.queries(DASHBOARDS["gpu-node"]))
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_TOTAL",
                 "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP"):
        assert name in fleet and name in node
    for name in ("DCGM_FI_PROF_SM_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
                 "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_PROF_PCIE_TX_BYTES"):
        assert name in node


def test_readme_lists_the_dashboards_and_every_incident_only_panel() -> None:
    readme = (build.HERE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Dashboards\n", 1)[1].split("\n## ", 1)[0]
    for dashboard in DASHBOARDS.values():
        assert f"(`{dashboard['uid']}`)" in section
    rows = {tuple(cell.strip(" `") for cell in line.strip("|").split("|"))
            for line in section.splitlines() if line.startswith("| ")}
    listed = {(title, scenario) for row in rows if len(row) == 4 for title, scenario in
              [(row[1], row[3])]}
    for scenarios in dh.incident_only().values():
        for title, scenario in scenarios.items():
            assert (title, scenario) in listed, f"README lacks incident-only panel {title!r}"
