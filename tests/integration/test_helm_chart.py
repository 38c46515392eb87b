"""helm lint and helm template for every ci/*-values.yaml scenario, and every rendered manifest
validated against the Kubernetes API schemas of each release the chart supports."""

from __future__ import annotations

import subprocess
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1, v1alpha1
from pydantic import BaseModel, ValidationError

from helm_chart import (
    CHART,
    OPERATOR_APIS,
    SCENARIOS,
    by_kind,
    helm_binary,
    lint,
    one,
    render,
    template_text,
)

pytestmark = pytest.mark.integration

# Chart.yaml's kubeVersion floor up to the newest client helm v4.1 was built with (1.35).
KUBERNETES_VERSIONS = tuple(f"1.{minor}.0" for minor in range(29, 36))
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "AlertmanagerConfig"}
EXPECTED_SCENARIOS = {"default-values.yaml", "minimal-values.yaml", "everything-values.yaml",
                      "tls-auth-values.yaml", "no-operator-values.yaml"}


def test_every_required_scenario_exists() -> None:
    assert set(SCENARIOS) >= EXPECTED_SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(scenario: str) -> None:
    result = lint(scenario)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_manifests_validate_for_every_supported_kubernetes(scenario: str) -> None:
    docs = render(scenario, api_versions=OPERATOR_APIS)
    core = [doc for doc in docs if doc["kind"] not in OPERATOR_KINDS]
    assert any(doc["kind"] == "DaemonSet" for doc in core)
    failures = []
    for version in KUBERNETES_VERSIONS:
        for doc in core:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                failures.append(f"{version} {doc['kind']}/{doc['metadata']['name']}: "
                                f"{err.message} at {list(err.path)}")
    assert not failures, "\n".join(failures)


OPERATOR_MODELS: dict[str, type[BaseModel]] = {
    "ServiceMonitor": v1.ServiceMonitor, "PodMonitor": v1.PodMonitor,
    "PrometheusRule": v1.PrometheusRule, "AlertmanagerConfig": v1alpha1.AlertmanagerConfig,
}


def _operator_problem(doc: dict[str, Any]) -> str | None:
    """Validate against the operator's CRD schema; unknown fields fail too (the models ignore
    them, so a round trip that loses a field means the CRD has no such field)."""
    try:
        model = OPERATOR_MODELS[doc["kind"]].model_validate(doc)
    except ValidationError as err:
        return str(err)
    again = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if again != doc:
        return f"fields the CRD does not know: {yaml.safe_dump(doc)} became {yaml.safe_dump(again)}"
    return None


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_operator_objects_validate_against_their_crds(scenario: str) -> None:
    docs = [d for d in render(scenario, api_versions=OPERATOR_APIS) if d["kind"] in OPERATOR_KINDS]
    problems = [f"{d['kind']}: {p}" for d in docs if (p := _operator_problem(d)) is not None]
    assert not problems, "\n".join(problems)


def test_crd_validation_catches_unknown_fields_and_bad_values() -> None:
    monitor = one(render(api_versions=OPERATOR_APIS), "ServiceMonitor")
    assert _operator_problem(monitor) is None
    monitor["spec"]["endpoints"][0]["honorLabelz"] = True
    assert _operator_problem(monitor) is not None
    del monitor["spec"]["endpoints"][0]["honorLabelz"]
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert _operator_problem(monitor) is not None


def test_validation_catches_a_broken_manifest() -> None:
    # The validator is strict: an unknown field fails (so the test above can fail).
    daemonset = one(render("default-values.yaml"), "DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[-1], strict=True)


def _kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {doc["kind"] for doc in docs}


def test_operator_objects_are_skipped_when_their_crds_are_absent() -> None:
    docs = render("default-values.yaml")
    assert not _kinds(docs) & OPERATOR_KINDS


def test_notes_say_which_objects_were_skipped() -> None:
    # helm template prints no NOTES; a client-side dry-run install does, as a real install would.
    result = subprocess.run([helm_binary(), "install", "kvscope", str(CHART), "--dry-run=client",
                             "--namespace", "gpu-monitoring"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "prometheus.monitor (monitoring.coreos.com/v1/ServiceMonitor)" in notes
    assert "prometheus.podMonitor" not in notes  # not asked for, so not "skipped"


def test_operator_objects_render_when_the_crds_are_served() -> None:
    docs = render("default-values.yaml", api_versions=OPERATOR_APIS)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kvscope", "app.kubernetes.io/instance": "kvscope"}
    assert not by_kind(docs, "PodMonitor")  # off by default
    assert not by_kind(docs, "AlertmanagerConfig")  # an example, off by default


def test_force_crds_renders_without_the_api_server() -> None:
    docs = render("everything-values.yaml")
    assert {"ServiceMonitor", "PodMonitor", "AlertmanagerConfig"} <= _kinds(docs)


def test_no_operator_scenario_renders_no_operator_object_even_when_asked() -> None:
    docs = render("no-operator-values.yaml")
    assert not _kinds(docs) & OPERATOR_KINDS
    annotations = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9447"


def test_service_monitor_matches_the_service() -> None:
    docs = render("default-values.yaml", api_versions=OPERATOR_APIS)
    service, monitor = one(docs, "Service"), one(docs, "ServiceMonitor")
    labels = service["metadata"]["labels"]
    assert all(labels[k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["gpu-monitoring"]
    pod_labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())


def test_selector_never_carries_the_chart_version() -> None:
    daemonset = one(render("default-values.yaml"), "DaemonSet")
    selector = daemonset["spec"]["selector"]["matchLabels"]
    assert "helm.sh/chart" not in selector
    assert "app.kubernetes.io/version" not in selector


def test_tls_scenario_scrapes_https_with_credentials() -> None:
    docs = render("tls-auth-values.yaml")
    endpoint = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["basicAuth"]["password"] == {"name": "kvscope-scrape", "key": "password"}
    assert endpoint["tlsConfig"]["ca"]["secret"]["name"] == "kvscope-tls"


@pytest.mark.parametrize(("setting", "message"), [
    ("web.prot=9448", "additional properties 'prot' not allowed"),
    ("logLevel=verbose", "logLevel"),
    ("updateStrategy.rollingUpdate.maxUnavailable=100%", "maxUnavailable"),
    ("collectors.gpu=maybe", "collectors/gpu"),
    ("web.basicAuth.users.prometheus=plaintext", "basicAuth/users/prometheus"),
])
def test_schema_refuses_mistakes_at_install_time(setting: str, message: str) -> None:
    result = template_text(sets=[setting], check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_tls_without_a_secret_is_refused() -> None:
    result = template_text(sets=["web.tls.enabled=true"], check=False)
    assert result.returncode != 0
    assert "web.tls.secretName is required" in result.stderr


def test_alertmanager_config_needs_a_receiver() -> None:
    result = template_text(sets=["alertmanagerConfig.enabled=true", "prometheus.forceCRDs=true"],
                           check=False)
    assert result.returncode != 0
    assert "alertmanagerConfig.webhookUrl is required" in result.stderr


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_scrape_labels_match_what_the_rules_expect(kind: str) -> None:
    docs = render("everything-values.yaml")
    monitor = one(docs, kind)
    key = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
    endpoint = monitor["spec"][key][0]
    assert endpoint["honorLabels"] is True
    assert endpoint["relabelings"][:2] == [
        {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"},
        {"action": "labeldrop", "regex": "(pod|namespace|container)"}]
    kept = one(render("everything-values.yaml",
                      sets=[f"prometheus.{'monitor' if kind == 'ServiceMonitor' else 'podMonitor'}"
                            ".keepAgentPodLabels=true"]), kind)
    assert {"action": "labeldrop", "regex": "(pod|namespace|container)"} not in \
        kept["spec"][key][0]["relabelings"]


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    with (CHART.parents[1] / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert chart["appVersion"] == version


def test_pod_monitor_selects_the_agent_pods() -> None:
    docs = render("everything-values.yaml")
    selector = one(docs, "PodMonitor")["spec"]["selector"]["matchLabels"]
    pod = one(docs, "DaemonSet")["spec"]["template"]
    assert all(pod["metadata"]["labels"][k] == v for k, v in selector.items())
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] in ports
