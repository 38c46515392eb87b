"""The chart drives the real agent: the rendered command line, configuration file and web config
are the agent's own (parsed by its CLI and loaders), a `kvscope serve` started with them answers
as the probes expect, and the `helm test` pod's check passes against it."""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from agent import Agent, free_port
from helm_chart import SCENARIOS, agent_container, by_kind, render, template_text
from kvscope.cli import _overrides, main
from kvscope.config import Config, load
from kvscope.web.webconfig import load_web_config

pytestmark = pytest.mark.integration

PASSWORD = "example-only"  # the password of ci/tls-auth-values.yaml's bcrypt hash


class Rendered:
    """One scenario's agent inputs, moved from the pod's paths to a temporary directory."""

    def __init__(self, scenario: str, tmp: Path, certs: dict[str, Path]) -> None:
        docs = render(scenario)
        self.docs = docs
        self.container = agent_container(docs)
        config_map = next(c for c in by_kind(docs, "ConfigMap")
                          if "kvscope.yml" in c.get("data", {}))
        self.config_file = tmp / "kvscope.yml"
        self.config_file.write_text(config_map["data"]["kvscope.yml"])
        self.web_file: Path | None = None
        secrets = [s for s in by_kind(docs, "Secret") if "web.yml" in s.get("stringData", {})]
        if secrets:
            text = secrets[0]["stringData"]["web.yml"]
            for name, path in certs.items():
                text = text.replace(f"/etc/kvscope/tls/{name}", str(path))
            self.web_file = tmp / "web.yml"
            self.web_file.write_text(text)

    def args(self, probe_address: str | None = None) -> list[str]:
        """The container's args with the mounted files' paths replaced (and the probe
        listener moved to `probe_address`, a free loopback port)."""
        out = []
        for arg in self.container["args"]:
            if arg.startswith("--web.probe-listen-address=") and probe_address is not None:
                out.append(f"--web.probe-listen-address={probe_address}")
            elif arg.startswith("--config="):
                out.append(f"--config={self.config_file}")
            elif arg.startswith("--web.config.file="):
                assert self.web_file is not None, "--web.config.file without a web config Secret"
                out.append(f"--web.config.file={self.web_file}")
            else:
                out.append(arg)
        return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "kvscope")
    paths = {"tls.crt": tmp / "tls.crt", "tls.key": tmp / "tls.key", "ca.crt": tmp / "ca.crt"}
    server.cert_chain_pems[0].write_to_path(str(paths["tls.crt"]))
    server.private_key_pem.write_to_path(str(paths["tls.key"]))
    ca.cert_pem.write_to_path(str(paths["ca.crt"]))
    return paths


def _parse_serve(args: list[str]) -> dict[str, Any]:
    """Parse args exactly as `kvscope` would, without running the command."""
    assert args[0] == "serve"
    parent = main.make_context("kvscope", list(args))
    _name, command, rest = main.resolve_command(parent, list(args))
    assert command is not None
    params: dict[str, Any] = command.make_context("serve", rest, parent=parent).params
    return params


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_flags_and_config_are_accepted_by_the_agent(
        scenario: str, tmp_path: Path, certs: dict[str, Path]) -> None:
    rendered = Rendered(scenario, tmp_path, certs)
    params = _parse_serve(rendered.args())
    config = load(params.pop("config_file"), _overrides(params))
    assert isinstance(config, Config)
    assert config.web.host_port()[1] == 9447
    assert str(config.paths.sysfs) == "/host/sys"
    if rendered.web_file is not None:
        assert config.web.config_file == rendered.web_file
        load_web_config(rendered.web_file)  # certificates load, hashes are bcrypt


def test_values_reach_the_agent_config(tmp_path: Path, certs: dict[str, Path]) -> None:
    rendered = Rendered("everything-values.yaml", tmp_path, certs)
    params = _parse_serve(rendered.args())
    config = load(params.pop("config_file"), _overrides(params))
    assert config.hostname_label == "hostname"  # from .Values.config
    assert config.collectors.nvlink.per_link is True
    assert config.collectors.rdma.probe is True
    assert config.collectors.rdma.log_follow is True
    assert config.collectors.rdma.log_paths == ("/var/log/pods/*/*/*.log",)
    assert config.collectors.rdma.eadm_path == "/usr/local/bin/eadm"  # from extraArgs
    assert config.collectors.topology.volcano_hypernodes is True
    assert config.log_level == "debug"


def test_minimal_values_turn_collectors_and_api_off(tmp_path: Path,
                                                    certs: dict[str, Path]) -> None:
    rendered = Rendered("minimal-values.yaml", tmp_path, certs)
    params = _parse_serve(rendered.args())
    config = load(params.pop("config_file"), _overrides(params))
    assert config.collectors.gpu.enabled is True
    assert not any(getattr(config.collectors, n).enabled
                   for n in ("nvlink", "topology", "rdma", "engines"))
    assert config.collectors.topology.kubernetes_api is False
    assert config.collectors.engines.discovery is False


def test_a_config_typo_in_values_is_refused_by_the_agent(tmp_path: Path) -> None:
    docs = render(sets=["config.collectors.gpu.cadnce.fast=1"])
    config_map = next(c for c in by_kind(docs, "ConfigMap") if "kvscope.yml" in c["data"])
    path = tmp_path / "kvscope.yml"
    path.write_text(config_map["data"]["kvscope.yml"])
    result = subprocess.run([sys.executable, "-m", "kvscope.cli", "collect", f"--config={path}",
                             "--scenario", "healthy"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "unknown key 'collectors.gpu.cadnce'" in result.stderr


def _wait_ready(agent: Agent, headers: dict[str, str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while agent.get("/readyz", headers)[0] != 200:
        assert time.monotonic() < deadline, "agent never became ready"
        time.sleep(0.2)


def _client_context(certs: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs["ca.crt"]))


def _probe_gets(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each probe's httpGet, with its named port resolved to the container port."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    gets = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(container[probe]) & {"httpGet", "tcpSocket", "exec"} == {"httpGet"}
        get = dict(container[probe]["httpGet"])
        get["port"] = ports[get["port"]]
        gets[probe] = get
    return gets


def _probe_listener_port(rendered: Rendered) -> int:
    (arg,) = [a for a in rendered.container["args"]
              if a.startswith("--web.probe-listen-address=")]
    return int(arg.rpartition(":")[2])


def _kubelet_probe(port: int, get: dict[str, Any]) -> int:
    """What the kubelet does: GET the path, scheme as given, no credentials, no certificate."""
    assert get["scheme"] == "HTTP"
    url = f"http://127.0.0.1:{port}{get['path']}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            if err.code != 503 or time.monotonic() > deadline:
                return int(err.code)
        except urllib.error.URLError:
            assert time.monotonic() < deadline, f"nothing answers {url}"
        time.sleep(0.2)


@pytest.mark.parametrize("scenario", ["default-values.yaml", "tls-auth-values.yaml"])
def test_the_probes_reach_an_endpoint_that_needs_no_credentials(
        scenario: str, tmp_path: Path, certs: dict[str, Path]) -> None:
    rendered = Rendered(scenario, tmp_path, certs)
    gets = _probe_gets(rendered.container)
    assert gets["startupProbe"]["path"] == gets["livenessProbe"]["path"] == "/healthz"
    assert gets["readinessProbe"]["path"] == "/readyz"
    # The probes target the probe listener, not the (maybe authenticated) metrics port.
    assert {g["port"] for g in gets.values()} == {_probe_listener_port(rendered)}
    assert _probe_listener_port(rendered) != 9447
    probe_port = free_port()
    tls = rendered.web_file is not None
    with Agent(*rendered.args(f"127.0.0.1:{probe_port}"), "--scenario", "healthy",
               scheme="https" if tls else "http",
               ssl_context=_client_context(certs) if tls else None) as agent:
        for get in gets.values():
            assert _kubelet_probe(probe_port, get) == 200
        if tls:
            # The metrics port still asks for credentials, /healthz included.
            assert agent.get("/healthz")[0] == 401
            auth = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
            status, body, _ = agent.get("/metrics", {"Authorization": auth})
            assert status == 200 and b"DCGM_FI_DEV_GPU_TEMP" in body


def test_a_probe_port_equal_to_the_metrics_port_is_refused() -> None:
    result = template_text(sets=["web.probePort=9447"], check=False)
    assert result.returncode != 0
    assert "web.probePort must differ from web.port" in result.stderr


def _test_pod_script(scenario: str) -> tuple[str, dict[str, Any]]:
    pods = [p for p in by_kind(render(scenario), "Pod")
            if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert len(pods) == 1
    container = pods[0]["spec"]["containers"][0]
    assert container["command"] == ["python3", "-c"]
    return container["args"][0], container


def _run_test_pod(script: str, url: str, extra: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "READYZ_URL": url, **(extra or {})}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=30, check=False)


def test_helm_test_pod_passes_against_a_ready_agent(tmp_path: Path,
                                                    certs: dict[str, Path]) -> None:
    script, container = _test_pod_script("default-values.yaml")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["READYZ_URL"] == "http://kvscope.gpu-monitoring.svc:9447/readyz"
    rendered = Rendered("default-values.yaml", tmp_path, certs)
    with Agent(*rendered.args(), "--scenario", "healthy") as agent:
        agent.wait_ready()
        result = _run_test_pod(script, f"{agent.base}/readyz")
    assert result.returncode == 0, result.stderr
    assert "200 ready" in result.stdout


def test_helm_test_pod_authenticates_over_tls(tmp_path: Path, certs: dict[str, Path]) -> None:
    script, container = _test_pod_script("tls-auth-values.yaml")
    env = {e["name"]: e for e in container["env"]}
    assert env["READYZ_URL"]["value"].startswith("https://")
    assert env["KVSCOPE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kvscope-scrape", "key": "password"}
    rendered = Rendered("tls-auth-values.yaml", tmp_path, certs)
    auth = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    with Agent(*rendered.args(), "--scenario", "healthy", scheme="https",
               ssl_context=_client_context(certs)) as agent:
        _wait_ready(agent, {"Authorization": auth})
        url = f"{agent.base}/readyz"
        ok = _run_test_pod(script, url, {"KVSCOPE_USER": "prometheus",
                                         "KVSCOPE_PASSWORD": PASSWORD})
        wrong = _run_test_pod(script, url, {"KVSCOPE_USER": "prometheus",
                                            "KVSCOPE_PASSWORD": "wrong"})
    assert ok.returncode == 0, ok.stderr
    assert wrong.returncode != 0
    assert "401" in wrong.stderr


def test_helm_test_pod_fails_when_no_agent_answers() -> None:
    script, _ = _test_pod_script("default-values.yaml")
    result = _run_test_pod(script, f"http://127.0.0.1:{free_port()}/readyz")
    assert result.returncode != 0
    assert "/readyz:" in result.stderr


def test_web_config_secret_holds_only_hashes() -> None:
    secret = next(s for s in by_kind(render("tls-auth-values.yaml"), "Secret")
                  if "web.yml" in s.get("stringData", {}))
    web = yaml.safe_load(secret["stringData"]["web.yml"])
    assert web["tls_server_config"]["client_auth_type"] == "VerifyClientCertIfGiven"
    assert web["tls_server_config"]["client_ca_file"] == "/etc/kvscope/tls/ca.crt"
    assert all(h.startswith("$2b$") for h in web["basic_auth_users"].values())
    assert PASSWORD not in secret["stringData"]["web.yml"]
