"""Shared defaults for every kvscope dashboard: one look, one way to query, one way to link.

Every `*.dashboard.py` builds its panels from these helpers, so that units, thresholds, colours,
the datasource variable, alert annotations and drill-down links are the same everywhere.

Decisions (see README, "Dashboards"):

- The datasource is a template variable (`$datasource`), never `__inputs`: the Grafana sidecar
  and file provisioning do not substitute `__inputs`, so a dashboard using them loads broken.
- A node is the scrape target's `instance` label. kvscope's RDMA, topology and self series carry
  no node label of their own, so `instance` is the one key every node-level series shares; the
  scrape configuration should set it to the node name (relabel `__meta_kubernetes_pod_node_name`
  to `instance`), as dcgm-exporter's and NVIDIA's dashboards also filter on `instance`.
- A PD group comes from `kvscope_pod_gpu_info{pd_group}`: engine series carry `namespace` and
  `pod`, and are joined to their group on those two labels (`in_pd_group`).
- Thresholds are read from alerts/thresholds.yaml, the alert rules' single source, so that a
  panel turns red where the alert fires (overrides made only in Helm values do not reach the
  committed dashboards).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attr
import yaml
from grafanalib import core as g

# One datasource reference used by every panel, target, variable and annotation.
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

TAGS = ["kvscope"]
REFRESH = "30s"

# Fixed dashboard uids: links and bookmarks survive re-imports.
UID_FLEET = "kvscope-gpu-fleet"
UID_NODE = "kvscope-gpu-node"
UID_NVLINK = "kvscope-nvlink-topology"
UID_RDMA = "kvscope-rdma-fabric"
UID_PD = "kvscope-pd-serving"
UID_AGENT = "kvscope-agent"

# Units (Grafana unit ids). DCGM names keep dcgm-exporter's units: % for utilisation, MiB for
# framebuffer, W, C, MHz; kvscope's own series are in base units.
PERCENT = "percent"          # 0-100
RATIO = "percentunit"        # 0-1
MIB = "mbytes"               # Grafana's mbytes is MiB (IEC)
BYTES = "bytes"
BYTES_PER_SECOND = "Bps"     # SI, as link rates are quoted
WATT = "watt"
CELSIUS = "celsius"
HERTZ = "hertz"               # DCGM clocks are MHz: panels multiply by 1e6
SECONDS = "s"
PER_SECOND = "ops"
SHORT = "short"
NONE = "none"
USD = "currencyUSD"

# Colours: one meaning each, on every dashboard.
GOOD = "green"
WARN = "orange"
BAD = "red"
NEUTRAL = "blue"
PREFILL_COLOUR = "blue"
DECODE_COLOUR = "purple"

# Thresholds, as Grafana steps.
Steps = list[dict[str, Any]]


def steps(*pairs: tuple[str, float | None]) -> Steps:
    """Threshold steps from (colour, lower bound) pairs; the first bound is None (base)."""
    return [{"color": colour, "value": value} for colour, value in pairs]


# alerts/thresholds.yaml is the one place every alert threshold lives; panels colour at the same
# lines, so a panel turns red when its alert would fire.
THRESHOLDS: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parent.parent / "alerts" / "thresholds.yaml").read_text("utf-8"))


def limit(name: str) -> float:
    return float(THRESHOLDS[name])


UTIL_STEPS = steps((NEUTRAL, None), (GOOD, limit("gpu_util_low_percent")), (WARN, 95))
IMBALANCE_STEPS = steps((GOOD, None), (BAD, limit("gpu_util_spread_points")))
STDDEV_STEPS = steps((GOOD, None), (WARN, limit("gpu_util_stddev_warning")),
                     (BAD, limit("gpu_util_stddev_critical")))
MEMORY_RATIO_STEPS = steps((GOOD, None), (WARN, limit("gpu_memory_used_warning_ratio")),
                           (BAD, limit("gpu_memory_used_critical_ratio")))
TEMP_STEPS = steps((GOOD, None), (WARN, limit("gpu_temperature_warning_celsius")),
                   (BAD, limit("gpu_temperature_critical_celsius")))
QP_USAGE_STEPS = steps((GOOD, None), (WARN, limit("rdma_qp_usage_warning_ratio")),
                       (BAD, limit("rdma_qp_usage_critical_ratio")))
KV_CACHE_STEPS = steps((GOOD, None), (WARN, limit("engine_kv_cache_warning_ratio")),
                       (BAD, limit("engine_kv_cache_critical_ratio")))
HIT_RATIO_STEPS = steps((BAD, None), (WARN, limit("engine_prefix_hit_critical_ratio")),
                        (GOOD, limit("engine_prefix_hit_warning_ratio")))   # low is bad
TTFT_STEPS = steps((GOOD, None), (WARN, limit("engine_ttft_p99_warning_seconds")),
                   (BAD, limit("engine_ttft_p99_critical_seconds")))
KV_SPEED_STEPS = steps((BAD, None), (GOOD, limit("kv_transfer_min_bytes_per_second")))
ZERO_GOOD_STEPS = steps((GOOD, None), (BAD, 1))                            # counts of bad things
UP_STEPS = steps((BAD, None), (GOOD, 1))                                   # 1 up, 0 down
RATE_OF_BAD_STEPS = steps((GOOD, None), (BAD, 0.001))                      # errors per second

UP_MAPPINGS = [{
    "type": "value",
    "options": {"0": {"text": "DOWN", "color": BAD, "index": 0},
                "1": {"text": "UP", "color": GOOD, "index": 1}},
}]


# ---------------------------------------------------------------------------------------------
# Template variables
# ---------------------------------------------------------------------------------------------

def datasource_variable() -> g.Template:
    return g.Template(name="datasource", label="Data source", type="datasource",
                      query="prometheus", default="default")


def query_variable(name: str, label: str, query: str, *, multi: bool = False,
                   include_all: bool = False) -> g.Template:
    """A variable filled from Prometheus; with `include_all`, All means the regex `.*`."""
    return g.Template(name=name, label=label, query=query, dataSource=DATASOURCE,
                      multi=multi, includeAll=include_all,
                      allValue=".*" if include_all else None,
                      refresh=g.REFRESH_ON_TIME_RANGE_CHANGE, sort=g.SORT_ALPHA_IGNORE_CASE_ASC,
                      default="$__all" if include_all else None)


def node_variable(source: str, *, multi: bool) -> g.Template:
    """Nodes that export `source`; `instance` is the node key (see module docstring)."""
    return query_variable("node", "Node", f"label_values({source}, instance)",
                          multi=multi, include_all=multi)


# dcgm-exporter and kvscope export DCGM_FI_DEV_XID_ERRORS for every GPU, and kvscope keeps it
# for a GPU NVML has lost, whose utilisation and memory series are gone: the variables list the
# lost GPU too, so its XID panels can still select it.
GPU_INVENTORY = "DCGM_FI_DEV_XID_ERRORS"


def gpu_variable() -> g.Template:
    return query_variable("gpu", "GPU",
                          f'label_values({GPU_INVENTORY}{{instance=~"$node"}}, gpu)',
                          multi=True, include_all=True)


def textbox_variable(name: str, label: str, default: str) -> g.Template:
    return g.Template(name=name, label=label, type="textbox", query=default, default=default)


def custom_variable(name: str, label: str, values: Sequence[str], default: str) -> g.Template:
    return g.Template(name=name, label=label, type="custom", query=",".join(values),
                      default=default)


# Label matchers, spelled once.
ON_NODE = 'instance=~"$node"'
ON_NODE_GPU = 'instance=~"$node", gpu=~"$gpu"'


def keyed(expr: str, *labels: str) -> str:
    """`expr` reduced to exactly `labels`: the targets of one merged table must share their
    label set, or Grafana's merge cannot line their rows up."""
    return f"max by ({', '.join(labels)}) (\n  {expr}\n)"


def in_pd_group(expr: str) -> str:
    """Keep only the engine series of the pods in `$pd_group`, and give them the `pd_group` label.

    Engine series carry `namespace` and `pod`; the topology collector knows each pod's PD group.
    """
    return (f"{expr}\n  * on (namespace, pod) group_left (pd_group)\n"
            '  group by (namespace, pod, pd_group) (kvscope_pod_gpu_info{pd_group=~"$pd_group"})')


# ---------------------------------------------------------------------------------------------
# Targets and panels
# ---------------------------------------------------------------------------------------------

def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False,
           ref: str = "") -> g.Target:
    return g.Target(expr=expr, legendFormat=legend, instant=instant or table,
                    format=g.TABLE_TARGET_FORMAT if table else g.TIME_SERIES_TARGET_FORMAT,
                    refId=ref, datasource=DATASOURCE)


def _with_ref_ids(targets: Sequence[g.Target]) -> list[g.Target]:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [t if t.refId else attr.evolve(t, refId=letters[i]) for i, t in enumerate(targets)]


def data_links(*links: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"title": title, "url": url, "targetBlank": False} for title, url in links]


def dashboard_url(uid: str, **variables: str) -> str:
    """A drill-down URL keeping the time range and datasource; values may use ${__...} macros."""
    pairs = {"datasource": "${datasource}", **variables}
    query = "&".join(f"var-{name}={value}" for name, value in pairs.items())
    return f"/d/{uid}?${{__url_time_range}}&{query}"


def _field_defaults(unit: str, *, thresholds: Steps | None = None,
                    mappings: list[dict[str, Any]] | None = None,
                    links: list[dict[str, Any]] | None = None, minimum: float | None = None,
                    maximum: float | None = None,
                    colour_by_thresholds: bool = False) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if thresholds is not None:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
    if colour_by_thresholds:
        defaults["color"] = {"mode": "thresholds"}
    if mappings:
        defaults["mappings"] = mappings
    if links:
        defaults["links"] = links
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return defaults


def role_overrides() -> list[dict[str, Any]]:
    """Prefill and decode keep their colours wherever a series name says which one it is."""
    return [
        {"matcher": {"id": "byRegexp", "options": f".*{role}.*"},
         "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}]}
        for role, colour in (("prefill", PREFILL_COLOUR), ("decode", DECODE_COLOUR))
    ]


@dataclass(frozen=True)
class Cell:
    """A panel and its size on the 24-column grid."""

    panel: g.Panel
    width: int = 12
    height: int = 8


@dataclass
class Row:
    title: str
    cells: list[Cell] = field(default_factory=list)


def timeseries(title: str, description: str, targets: Sequence[g.Target], *, unit: str,
               thresholds: Steps | None = None, links: list[dict[str, Any]] | None = None,
               minimum: float | None = None, maximum: float | None = None,
               stack: bool = False, show_thresholds: bool = False,
               overrides: list[dict[str, Any]] | None = None) -> g.TimeSeries:
    panel = g.TimeSeries(
        title=title, description=description, dataSource=DATASOURCE,
        targets=_with_ref_ids(targets), unit=unit, fillOpacity=10 if stack else 0,
        stacking={"mode": "normal", "group": "A"} if stack else {},
        legendDisplayMode="table", legendPlacement="right", legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi", tooltipSort="desc",
        thresholdsStyleMode="dashed" if show_thresholds else "off",
        overrides=overrides or [],
    )
    defaults = _field_defaults(unit, thresholds=thresholds, links=links, minimum=minimum,
                               maximum=maximum)
    return attr.evolve(panel, extraJson={"fieldConfig": {"defaults": defaults}})


def stat(title: str, description: str, targets: Sequence[g.Target], *, unit: str,
         thresholds: Steps, mappings: list[dict[str, Any]] | None = None,
         links: list[dict[str, Any]] | None = None, decimals: int | None = None) -> g.Stat:
    panel = g.Stat(title=title, description=description, dataSource=DATASOURCE,
                   targets=_with_ref_ids(targets), format=unit, reduceCalc="lastNotNull",
                   colorMode="background", graphMode="none", decimals=decimals,
                   mappings=mappings or [], thresholds=thresholds)
    defaults = _field_defaults(unit, thresholds=thresholds, mappings=mappings, links=links,
                               colour_by_thresholds=True)
    return attr.evolve(panel, extraJson={"fieldConfig": {"defaults": defaults}})


class BarGaugePanel(g.Panel):  # type: ignore[misc]
    """A bar gauge in Grafana's current shape. grafanalib's BarGauge writes Grafana 6's
    `options.fieldOptions`, which Grafana's migration copies over `fieldConfig` on load.
    (Panel's attrs fields and __init__ are inherited; no fields are added.)"""

    def to_json_data(self) -> dict[str, Any]:
        return dict(self.panel_json({
            "type": g.BARGAUGE_TYPE,
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                          "values": False},
                        "displayMode": "gradient", "orientation": "vertical",
                        "showUnfilled": True},
        }))


def bar_gauge(title: str, description: str, targets: Sequence[g.Target], *, unit: str,
              thresholds: Steps, minimum: float = 0, maximum: float | None = None,
              links: list[dict[str, Any]] | None = None) -> g.Panel:
    """Bars side by side, one per series: the GPU 0 syndrome reads at a glance."""
    defaults = _field_defaults(unit, thresholds=thresholds, links=links, minimum=minimum,
                               maximum=maximum, colour_by_thresholds=True)
    return BarGaugePanel(title=title, description=description, dataSource=DATASOURCE,
                         targets=_with_ref_ids(targets),
                         extraJson={"fieldConfig": {"defaults": defaults, "overrides": []}})


def table(title: str, description: str, targets: Sequence[g.Target], *, unit: str = NONE,
          thresholds: Steps | None = None, mappings: list[dict[str, Any]] | None = None,
          links: list[dict[str, Any]] | None = None, hide: Iterable[str] = (),
          rename: dict[str, str] | None = None,
          transformations: list[dict[str, Any]] | None = None,
          cell_colour: bool = False) -> g.Table:
    """An instant table: rows are series, columns their labels; `hide` drops noisy labels."""
    excluded = dict.fromkeys(("Time", "__name__", "job", *hide), True)
    steps_ = transformations if transformations is not None else [
        {"id": "merge", "options": {}},
    ]
    steps_ = [*steps_, {"id": "organize", "options": {
        "excludeByName": excluded, "renameByName": rename or {}, "indexByName": {}}}]
    panel = g.Table(title=title, description=description, dataSource=DATASOURCE,
                    targets=_with_ref_ids(targets), unit=unit, transformations=steps_,
                    displayMode="color-background" if cell_colour else "auto", filterable=True)
    defaults = _field_defaults(unit, thresholds=thresholds, mappings=mappings, links=links)
    defaults["custom"] = {"align": "auto", "filterable": True,
                          "displayMode": "color-background" if cell_colour else "auto"}
    return attr.evolve(panel, extraJson={"fieldConfig": {"defaults": defaults}})


def matrix_table(title: str, description: str, expr: str, *, rows: str, columns: str,
                 value: str, hide: Iterable[str] = ()) -> g.Table:
    """A label-valued matrix (topology, profile verdicts): Grafana's grouping-to-matrix."""
    return table(title, description, [target(expr, table=True)], hide=hide, transformations=[
        {"id": "groupingToMatrix", "options": {
            "rowField": rows, "columnField": columns, "valueField": value, "emptyValue": "null"}},
    ])


class HeatmapPanel(g.Panel):  # type: ignore[misc]
    """A heatmap in Grafana's current shape. grafanalib's Heatmap writes the legacy (Angular)
    keys (`heatmap`, `dataFormat`, `color`), which send Grafana through its heatmap migration
    and override `options` on load."""

    def to_json_data(self) -> dict[str, Any]:
        return dict(self.panel_json({"type": g.HEATMAP_TYPE}))


def heatmap(title: str, description: str, targets: Sequence[g.Target], *, unit: str,
            maximum: float, links: list[dict[str, Any]] | None = None) -> g.Panel:
    """One heatmap row per series (node/GPU), coloured by value: hot spots stand out."""
    defaults: dict[str, Any] = {"unit": unit}
    if links:
        defaults["links"] = links
    return HeatmapPanel(title=title, description=description, dataSource=DATASOURCE,
                        targets=_with_ref_ids(targets), extraJson={
        "fieldConfig": {"defaults": defaults, "overrides": []},
        # Series are the rows as they are (calculate: false): one row per legend.
        "options": {"calculate": False, "yAxis": {"axisPlacement": "left", "unit": SHORT},
                    "cellValues": {"unit": unit}, "cellGap": 1,
                    "color": {"mode": "scheme", "scheme": "Turbo", "fill": "dark-orange",
                              "scale": "linear", "min": 0, "max": maximum, "steps": 64,
                              "exponent": 0.5, "reverse": False},
                    "rowsFrame": {"layout": "auto"}, "legend": {"show": True},
                    "showValue": "never",
                    "tooltip": {"show": True, "yHistogram": False}}})


# ---------------------------------------------------------------------------------------------
# The dashboard
# ---------------------------------------------------------------------------------------------

def alert_annotation(alertnames: str) -> dict[str, Any]:
    """Firing alerts from Prometheus' own ALERTS series, as annotations on every graph."""
    return {
        "name": "Firing alerts",
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": BAD,
        "expr": f'ALERTS{{alertstate="firing", alertname=~"{alertnames}"}}',
        "step": "60s",
        "titleFormat": "{{alertname}}",
        "textFormat": "{{severity}}: {{alertname}}",
        "tagKeys": "severity,alertname",
        "useValueForTime": False,
    }


def navigation_links() -> list[g.DashboardLink]:
    """Every kvscope dashboard, one click away, keeping the time range and the variables."""
    return [g.DashboardLink(title="kvscope", type="dashboards", tags=TAGS, asDropdown=True,
                            includeVars=True, keepTime=True)]


def layout(rows: Sequence[Row]) -> list[g.Panel]:
    """Row headers and cells placed left to right, wrapping at 24 columns."""
    panels: list[g.Panel] = []
    y = 0
    for row in rows:
        panels.append(g.RowPanel(title=row.title, gridPos=g.GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        x = 0
        line_height = 0
        for cell in row.cells:
            if x + cell.width > 24:
                y += line_height
                x, line_height = 0, 0
            panels.append(attr.evolve(cell.panel,
                                      gridPos=g.GridPos(h=cell.height, w=cell.width, x=x, y=y)))
            x += cell.width
            line_height = max(line_height, cell.height)
        y += line_height
    return panels


def dashboard(*, uid: str, title: str, description: str, variables: Sequence[g.Template],
              rows: Sequence[Row], alertnames: str) -> g.Dashboard:
    return g.Dashboard(
        uid=uid, title=title, description=description, tags=TAGS, timezone="browser",
        refresh=REFRESH, time=g.Time("now-1h", "now"), editable=True,
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        templating=g.Templating(list=[datasource_variable(), *variables]),
        annotations=g.Annotations(list=[alert_annotation(alertnames)]),
        links=navigation_links(), panels=layout(rows),
    ).auto_panel_ids()


# ---------------------------------------------------------------------------------------------
# Panels that stay empty on a healthy node
# ---------------------------------------------------------------------------------------------

@dataclass
class IncidentOnly:
    """Panels that show data only during an incident (or on specific hardware or options).

    Each dashboard keeps one of these as `INCIDENT_ONLY`; the validation test checks that every
    listed panel returns data under its simulator scenario and none on the healthy node, and
    that every other panel returns data on the healthy node.
    """

    scenarios: dict[str, str] = field(default_factory=dict)

    def mark(self, panel: g.Panel, *, scenario: str, when: str) -> g.Panel:
        self.scenarios[panel.title] = scenario
        note = f"Empty while healthy: shows data when {when}."
        return attr.evolve(panel, description=f"{panel.description} {note}".strip())
