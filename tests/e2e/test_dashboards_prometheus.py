"""Every panel of every dashboard returns data from a real Prometheus scraping `kvscope demo`.

One Prometheus (Debian's package) per simulator scenario, scraping one `kvscope demo` every
second and evaluating the recording and alert rules of alerts/rules/ every second (a temporary
copy of the committed files, with every alert's `for` cut to 1s so that a firing alert reaches
the annotations within the test; recording rules are unchanged). Template variables are
resolved the way Grafana resolves them (the label values API with the variable's own selector)
and substituted into every target; Grafana's built-ins get values that fit a one-second scrape.
Then:

- on the healthy node every target of every panel parses and returns data, except the panels a
  dashboard lists in INCIDENT_ONLY, which must parse and return nothing;
- under each listed panel's scenario, its every target returns data.

The scrape job keeps the agent's labels (`honor_labels: true`, as the README asks) and sets
`instance` to the node name, as the dashboards assume (dashboards/common.py).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import dashboards_helpers as dh
from agent import REPO, Agent, free_port
from kvscope.collectors import dcgm_compat
from kvscope.collectors.dcgm_compat import Compat

pytestmark = pytest.mark.integration

NODE = "e2e-node"          # tests/support/agent.py's NODE_NAME; the scrape sets instance to it
DEADLINE_S = 90            # from start-up, for every scenario's data to appear (a busy machine)
RULES = sorted((REPO / "alerts" / "rules").glob("*.yaml"))


@dataclass(frozen=True)
class Scenario:
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    fault_delay: float = 1.0
    # False: engine series' own `instance` becomes `exported_instance` (what alerts/ assumes);
    # the dashboards must work either way.
    honor_labels: bool = True
    key: str = ""

    @property
    def id(self) -> str:
        return self.key or self.name


# Every scenario an INCIDENT_ONLY entry names must be here; the healthy node runs the defaults.
SCENARIOS = {s.id: s for s in (
    Scenario("healthy"),
    Scenario("healthy", honor_labels=False, key="healthy, honor_labels false"),
    # The XID must strike after the agent registered GPU 3 for events (its first static poll,
    # which on a busy machine comes many seconds after the process starts): a GPU lost before
    # that reports no XID, as with real NVML.
    Scenario("xid-79", fault_delay=30.0),
    # Per-link series are opt-in: the per-link panels are tested with the opt-ins on.
    Scenario("nvlink-degraded",
             {"collectors": {"nvlink": {"per_link": True, "per_link_bytes": True}}}),
    Scenario("qp-failure"),
    Scenario("erdma-throttle"),
    Scenario("nvml-hang"),
    # Not incidents that empty panels fill, but the ones the dashboards must show at a glance.
    Scenario("gpu0-hotspot"),
    Scenario("oom-risk"),
    Scenario("kv-cache-full"),
    Scenario("queue-backlog"),
    Scenario("nvlink-bypass"),
    Scenario("engine-down"),
    # NVIDIA's own dashboard, renamed the way dcgm-exporter 4.10 renamed its fields.
    Scenario("healthy", {"dcgm": {"compat": "4.10"}}, key="healthy, dcgm 4.10"),
)}


def quick_alerts(rule_file: Path) -> str:
    """The rule file with every alert's `for` cut to 1s."""
    rules = yaml.safe_load(rule_file.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and "for" in rule:
                rule["for"] = "1s"
    return yaml.safe_dump(rules, sort_keys=False)


class Prometheus:
    """A real Prometheus on loopback, scraping one agent every second."""

    def __init__(self, workdir: Path, agent_port: int, *, honor_labels: bool) -> None:
        binary = shutil.which("prometheus")
        assert binary is not None, "prometheus comes with Debian's prometheus (tests/run.sh)"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        rules_dir = workdir / "rules"
        rules_dir.mkdir()
        for rule_file in RULES:
            (rules_dir / rule_file.name).write_text(quick_alerts(rule_file), encoding="utf-8")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(rules_dir / "*.yaml")],
            "scrape_configs": [{
                "job_name": "kvscope",
                "honor_labels": honor_labels,
                "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}],
                "relabel_configs": [{"target_label": "instance", "replacement": NODE}],
            }],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self._log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             # scrape_body_size_bytes, for the agent dashboard's exposition-size panel.
             "--enable-feature=extra-scrape-metrics", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir)
        self.log_path = workdir / "prometheus.log"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.base + "/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus never became ready")

    def api(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.base}/api/v1/{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def label_values(self, label: str, selector: str | None) -> list[str]:
        params: dict[str, str | list[str]] = {}
        if selector:
            params["match[]"] = [selector]
        return sorted(self.api(f"label/{label}/values", **params))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class QueryError(Exception):
    pass


@dataclass
class Stack:
    scenario: Scenario
    agent: Agent
    prometheus: Prometheus
    started: float


@pytest.fixture(scope="module")
def stacks() -> Iterator[dict[str, Stack]]:
    """Every scenario's agent and Prometheus, all launched before any is waited for, so their
    start-ups overlap (one after the other they cost a minute and more on a 2-core machine)."""
    with tempfile.TemporaryDirectory(prefix="kvscope-dashboards-") as tmp:
        started: dict[str, Stack] = {}
        try:
            for scenario in SCENARIOS.values():
                workdir = Path(tmp) / f"stack-{len(started)}"
                workdir.mkdir()
                args = ["demo", "--scenario", scenario.name, "--sim.fault-delay",
                        str(scenario.fault_delay)]
                if scenario.config:
                    (workdir / "kvscope.yml").write_text(yaml.safe_dump(scenario.config))
                    args += ["--config", str(workdir / "kvscope.yml")]
                agent = Agent(*args).start()
                prometheus = Prometheus(workdir, agent.port, honor_labels=scenario.honor_labels)
                started[scenario.id] = Stack(scenario, agent, prometheus, time.monotonic())
            for stack in started.values():
                stack.agent.wait_listening(timeout=DEADLINE_S)
            for stack in started.values():
                stack.prometheus.wait_ready(timeout=DEADLINE_S)
            yield started
        finally:
            for stack in started.values():
                stack.prometheus.stop()
                stack.agent.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------------
# Resolving variables and checking targets
# ---------------------------------------------------------------------------------------------

_REGEX_SPECIAL = set("\\.^$*+?()[]{}|")


def _regex_escape(value: str) -> str:
    """Escape a value for a =~ matcher inside a PromQL double-quoted string, as Grafana does."""
    return "".join(f"\\\\{ch}" if ch in _REGEX_SPECIAL else ch for ch in value)


def resolve_variables(prometheus: Prometheus, dashboard: dict[str, Any]) -> dict[str, str]:
    """Each variable's value as Grafana would fill it: query variables from their own query
    (earlier variables substituted), multi-value ones as the regex of every value."""
    values: dict[str, str] = {}
    for variable in dh.variables(dashboard):
        kind = variable["type"]
        if kind == "datasource":
            continue
        if kind == "query":
            selector, label = dh.parse_label_values(variable["query"])
            if selector is not None:
                selector = dh.substitute(selector, values)
            found = prometheus.label_values(label, selector)
            assert found, (f"{dashboard['uid']}: variable ${variable['name']} resolves to no "
                           f"value ({variable['query']})")
            if variable["multi"] or variable["includeAll"]:
                values[variable["name"]] = "|".join(_regex_escape(v) for v in found)
            else:
                values[variable["name"]] = _regex_escape(found[0])
        elif kind in {"custom", "textbox", "constant"}:
            values[variable["name"]] = str(variable["current"]["value"])
        else:
            raise AssertionError(f"{dashboard['uid']}: variable type {kind} is not validated")
    return values


def check(prometheus: Prometheus, expr: str) -> str | None:
    """None when the query parses and returns at least one sample; else what went wrong."""
    try:
        result = prometheus.query(expr)
    except QueryError as err:
        return f"query error: {err}"
    if not result:
        return "no data"
    if all(sample["value"][1] == "NaN" for sample in result):
        return "only NaN (0/0: the counters it divides did not move)"
    return None


def variables_when_ready(stack: Stack, uid: str) -> dict[str, str]:
    """The dashboard's variables, once the first scrapes give them values (or the deadline)."""
    dashboard = {d["uid"]: d for d in dh.generated().values()}[uid]
    while True:
        try:
            return resolve_variables(stack.prometheus, dashboard)
        except AssertionError:
            if time.monotonic() - stack.started > DEADLINE_S:
                raise
            time.sleep(1)


def failures(stack: Stack, selected: list[dh.Query]) -> dict[dh.Query, str]:
    """Re-check the failing targets until they all return data or the deadline passes."""
    variables = {uid: variables_when_ready(stack, uid) for uid in {q.dashboard for q in selected}}
    pending = dict.fromkeys(selected, "not checked")
    while True:
        pending = {q: problem for q in pending
                   if (problem := check(stack.prometheus,
                                        dh.substitute(q.expr, variables[q.dashboard])))}
        if not pending or time.monotonic() - stack.started > DEADLINE_S:
            return pending
        time.sleep(1)


def describe(problems: dict[dh.Query, str]) -> str:
    return "\n".join(f"{q.dashboard} / {q.panel} / {q.ref}: {why}\n    {q.expr}"
                     for q, why in sorted(problems.items(), key=lambda item: repr(item[0])))


def all_queries() -> list[dh.Query]:
    return [q for d in dh.generated().values() for q in dh.queries(d)]


def incident_queries() -> dict[str, list[dh.Query]]:
    """scenario -> the targets of the panels listed as incident-only under it."""
    listed = dh.incident_only()
    out: dict[str, list[dh.Query]] = {}
    for q in all_queries():
        scenario = listed.get(q.dashboard, {}).get(q.panel)
        if scenario is not None:
            out.setdefault(scenario, []).append(q)
    return out


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def test_incident_scenarios_are_run() -> None:
    assert set(incident_queries()) <= set(SCENARIOS)


@pytest.mark.parametrize("healthy", ["healthy", "healthy, honor_labels false"])
def test_every_panel_returns_data_on_the_healthy_node(stacks: dict[str, Stack],
                                                      healthy: str) -> None:
    incidents = {q for qs in incident_queries().values() for q in qs}
    selected = [q for q in all_queries() if q not in incidents]
    assert len(selected) > 100
    problems = failures(stacks[healthy], selected)
    assert not problems, f"targets without data ({healthy}):\n" + describe(problems)


def test_the_check_fails_on_a_bad_or_empty_query(stacks: dict[str, Stack]) -> None:
    variables_when_ready(stacks["healthy"], "kvscope-agent")   # the first scrapes are in
    prometheus = stacks["healthy"].prometheus
    assert (check(prometheus, "kvscope_gpu_up{") or "").startswith("query error")
    assert check(prometheus, "kvscope_no_such_series") == "no data"
    assert check(prometheus, "vector(0) / 0") is not None
    assert check(prometheus, "kvscope_build_info") is None


def test_variables_resolve_to_values(stacks: dict[str, Stack]) -> None:
    """Each variable's own query finds values, and the values are the node's."""
    for dashboard in dh.generated().values():
        values = variables_when_ready(stacks["healthy"], dashboard["uid"])
        if "node" in values:
            assert values["node"] == NODE, dashboard["uid"]
        if "gpu" in values:
            assert values["gpu"] == "0|1|2|3|4|5|6|7", dashboard["uid"]
    pd = variables_when_ready(stacks["healthy"], "kvscope-pd-serving")
    assert pd["pd_group"] == "qwen25-72b"


@pytest.mark.parametrize("scenario", sorted(incident_queries()))
def test_incident_only_panels_return_data_under_their_scenario(
        stacks: dict[str, Stack], scenario: str) -> None:
    problems = failures(stacks[scenario], incident_queries()[scenario])
    assert not problems, f"targets without data under {scenario}:\n" + describe(problems)


def test_incident_only_panels_are_empty_on_the_healthy_node(stacks: dict[str, Stack]) -> None:
    """A listed panel that shows data while healthy belongs on the healthy list instead; its
    queries must still parse."""
    healthy = stacks["healthy"]
    shown = []
    for queries in incident_queries().values():
        for q in queries:
            expr = dh.substitute(q.expr, variables_when_ready(healthy, q.dashboard))
            if series := healthy.prometheus.query(expr):   # raises QueryError on a parse error
                shown.append(f"{q.dashboard} / {q.panel} / {q.ref}: "
                             f"{[sample['metric'] for sample in series][:3]}")
    assert not shown, "incident-only panels with data on the healthy node:\n" + "\n".join(shown)


def test_recording_and_alert_rules_load_and_evaluate(stacks: dict[str, Stack]) -> None:
    """The rules the dashboards read are loaded, evaluate without error, and the alert
    annotation queries parse."""
    assert RULES, "alerts/rules/*.yaml is missing: the dashboards read its recording rules"
    healthy = stacks["healthy"]
    deadline = time.monotonic() + 20
    while True:
        groups = healthy.prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        evaluated = all(rule["health"] != "unknown" for rule in rules)
        if (rules and evaluated) or time.monotonic() > deadline:
            break
        time.sleep(1)
    broken = [f"{rule['name']}: {rule.get('lastError')}" for rule in rules
              if rule["health"] == "err"]
    assert rules and not broken, "\n".join(broken)
    recorded = {rule["name"] for rule in rules if rule["type"] == "recording"}
    used = {name for q in all_queries() for name in recorded if name in q.expr}
    assert used, "no dashboard reads a recording rule"
    for dashboard in dh.generated().values():
        for annotation in dashboard["annotations"]["list"]:
            healthy.prometheus.query(annotation["expr"])   # raises QueryError on a parse error


def test_alert_annotations_show_a_firing_alert(stacks: dict[str, Stack]) -> None:
    """Under xid-79 GPUXidError fires (after its shortened `for`); the GPU dashboards'
    annotation query shows it."""
    assert RULES, "alerts/rules/*.yaml is missing: the dashboards read its recording rules"
    stack = stacks["xid-79"]
    dashboards = dh.generated()
    for slug in ("gpu-fleet", "gpu-node"):
        (annotation,) = dashboards[slug]["annotations"]["list"]
        # GPULost may fire first: wait for the XID alert itself, not for any annotation.
        while not {s["metric"]["alertname"] for s in stack.prometheus.query(annotation["expr"])
                   } >= {"GPUXidError"}:
            assert time.monotonic() - stack.started < DEADLINE_S, (
                f"{slug}: no GPUXidError annotation")
            time.sleep(1)


_LINK_LABEL = re.compile(r"\$\{__(?:field\.labels|data\.fields)\.(\w+)\}")


def test_drill_down_links_find_their_labels(stacks: dict[str, Stack]) -> None:
    """A link that passes ${__field.labels.X} or ${__data.fields.X} on needs X in the panel's
    data: every such panel's series carry the label, and its table does not hide it."""
    healthy = stacks["healthy"]
    listed = dh.incident_only()
    checked = 0
    for dashboard in dh.generated().values():
        values = variables_when_ready(healthy, dashboard["uid"])
        for panel in dh.panels(dashboard):
            links = panel["fieldConfig"]["defaults"].get("links", [])
            labels = {name for link in links for name in _LINK_LABEL.findall(link["url"])}
            if not labels or panel["title"] in listed.get(dashboard["uid"], {}):
                continue
            hidden = {name for step in panel.get("transformations", [])
                      for name in step["options"].get("excludeByName", {})}
            assert not labels & hidden, f"{panel['title']}: link label hidden"
            for target in panel["targets"]:
                series = healthy.prometheus.query(dh.substitute(target["expr"], values))
                assert series, f"{panel['title']} / {target['refId']}: no data"
                missing = {name for sample in series for name in labels
                           if name not in sample["metric"]}
                assert not missing, f"{panel['title']} / {target['refId']}: no {missing}"
            checked += 1
    assert checked >= 8


def test_matrix_tables_find_their_fields(stacks: dict[str, Stack]) -> None:
    """Grouping to a matrix needs its row, column and value labels in every series."""
    healthy = stacks["healthy"]
    matrices = 0
    for dashboard in dh.generated().values():
        values = variables_when_ready(healthy, dashboard["uid"])
        for panel in dh.panels(dashboard):
            for step in panel.get("transformations", []):
                if step["id"] != "groupingToMatrix":
                    continue
                options = step["options"]
                fields = {options["rowField"], options["columnField"], options["valueField"]}
                fields.discard("Value")
                (target,) = panel["targets"]
                series = healthy.prometheus.query(dh.substitute(target["expr"], values))
                assert series, panel["title"]
                for sample in series:
                    assert fields <= set(sample["metric"]), (panel["title"], sample["metric"])
                matrices += 1
    assert matrices >= 4


@dataclass(frozen=True)
class Answer:
    """What the on-call must read on a panel under a scenario, and the check of its values."""

    scenario: str
    slug: str
    panel: str
    meaning: str
    holds: Callable[[list[float]], bool]


ANSWERS = [
    Answer("healthy", "gpu-fleet", "Nodes with GPU imbalance", "0 on the balanced node",
           lambda values: values == [0.0]),
    Answer("gpu0-hotspot", "gpu-fleet", "Nodes with GPU imbalance",
           "1: GPU 0 at 98%, GPU 7 at 48%", lambda values: values == [1.0]),
    Answer("gpu0-hotspot", "gpu-fleet", "Imbalance per node (max - min)", "a 40-60 point spread",
           lambda values: len(values) == 1 and 40 < values[0] <= 60),
    Answer("gpu0-hotspot", "gpu-node", "Utilisation per GPU", "GPU 0 is the busiest GPU",
           lambda values: len(values) == 8 and values[0] == max(values)),
    Answer("oom-risk", "gpu-fleet", "Fullest GPU per node (memory used / total)",
           "above the critical line", lambda values: len(values) == 1 and values[0] > 0.95),
    Answer("oom-risk", "gpu-node", "Memory used / total per GPU",
           "one GPU near full, its peers below",
           lambda values: len(values) == 8 and sum(v > 0.95 for v in values) == 1),
    Answer("healthy", "nvlink-topology", "PD pairs: path and IPC verdict", "IPC possible",
           lambda values: values == [1.0]),
    Answer("nvlink-bypass", "nvlink-topology", "PD pairs: path and IPC verdict",
           "IPC impossible: the KV cache cannot use NVLink", lambda values: values == [0.0]),
    Answer("kv-cache-full", "pd-serving", "KV cache usage", "an engine past the critical line",
           lambda values: bool(values) and max(values) > 0.98),
    Answer("healthy", "pd-serving", "KV cache usage", "every engine below the warning line",
           lambda values: bool(values) and max(values) < 0.9),
    Answer("queue-backlog", "pd-serving", "Requests waiting and running",
           "hundreds of requests waiting", lambda values: bool(values) and max(values) >= 300),
]


@pytest.mark.parametrize("answer", ANSWERS, ids=[f"{a.scenario}: {a.panel}" for a in ANSWERS])
def test_panels_answer_the_on_call(stacks: dict[str, Stack], answer: Answer) -> None:
    """The panel's values say what the scenario is about (ordered by GPU where per GPU)."""
    stack = stacks[answer.scenario]
    dashboard = dh.generated()[answer.slug]
    (panel,) = [p for p in dh.panels(dashboard) if p["title"] == answer.panel]
    expr = dh.substitute(panel["targets"][0]["expr"],
                         variables_when_ready(stack, dashboard["uid"]))
    while True:
        series = stack.prometheus.query(expr)
        values = [float(s["value"][1]) for s in
                  sorted(series, key=lambda s: int(s["metric"].get("gpu", "0")))]
        if answer.holds(values) or time.monotonic() - stack.started > DEADLINE_S:
            break
        time.sleep(1)
    assert answer.holds(values), (f"{answer.scenario} / {answer.panel}: expected "
                                  f"{answer.meaning}, got {values}")


# ---------------------------------------------------------------------------------------------
# NVIDIA's dcgm-exporter dashboard on kvscope (the drop-in claim)
# ---------------------------------------------------------------------------------------------

NVIDIA_QUERIES = [line for line in (REPO / "tests" / "fixtures" / "dcgm" /
                                    "nvidia-dashboard-queries.txt").read_text().splitlines()
                  if line and not line.startswith("#")]
_DCGM_NAME = re.compile(r"\bDCGM_FI_[A-Z0-9_]+")


def _renamed(expr: str, compat: Compat) -> str:
    """A 4.8 query with each DCGM name as `compat` exports it (dcgm_compat's table)."""
    names = {f.naming("4.8").name: f.naming(compat).name for f in dcgm_compat.FIELDS}
    return _DCGM_NAME.sub(lambda m: names.get(m.group(0), m.group(0)), expr)


@pytest.mark.parametrize(("key", "compat"), [("healthy", "4.8"),
                                             ("healthy, dcgm 4.10", "4.10")])
def test_nvidia_dashboard_panels_return_data(stacks: dict[str, Stack], key: str,
                                             compat: Compat) -> None:
    """Every panel of NVIDIA's dashboard returns data from kvscope: as shipped under 4.8, and
    with 4.10's names (NVIDIA's 4.10 dashboard itself is not in any source reachable here, so
    its queries are the shipped ones renamed as the 4.9/4.10 release notes rename the fields)."""
    stack = stacks[key]
    assert len(NVIDIA_QUERIES) == 8
    temp = _renamed("DCGM_FI_DEV_GPU_TEMP", compat)
    deadline = stack.started + DEADLINE_S
    while True:
        values = {"instance": "|".join(stack.prometheus.label_values("instance", temp)),
                  "gpu": "|".join(stack.prometheus.label_values("gpu", temp))}
        problems = {q: why for q in NVIDIA_QUERIES
                    if (why := check(stack.prometheus,
                                     dh.substitute(_renamed(q, compat), values))) is not None}
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert values["gpu"].count("|") == 7, values  # the simulated node's 8 GPUs
    assert not problems, problems
