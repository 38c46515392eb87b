"""Examples, defaults and tests name only loopback addresses (or templates) in URLs, so nothing a
user copies, and nothing CI runs, dials a private, link-local or public address."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

from kvscope.config import Config, EngineTarget, KubernetesSettings

REPO = Path(__file__).resolve().parents[3]
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://(\[[0-9a-fA-F:]+\]|[^\s/:\"'`<>)\]},;\\]+)")
# Recorded upstream formats where an address is data, never a target (label values, log text).
# This file spells bad addresses on purpose, to test the guard.
DATA_FILES = ("tests/fixtures/", "tests/unit/repo/test_no_dialled_addresses.py")
BARE_PRIVATE = re.compile(r"\b(?:10(?:\.\d{1,3}){3}|172\.(?:1[6-9]|2\d|3[01])(?:\.\d{1,3}){2}|"
                          r"192\.168(?:\.\d{1,3}){2}|169\.254(?:\.\d{1,3}){2})\b")
DOC_HOSTS = {"github.com", "prometheus.io", "docs.nvidia.com", "kubernetes.io", "grafana.com",
             "developer.mozilla.org", "pkg.go.dev", "golang.org",
             "json-schema.org"}  # a JSON schema's $schema identifier, never fetched


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    out = []
    for name in names:
        path = REPO / name
        if path.is_file() and path.suffix not in (".png", ".gz", ".zip", ".pb"):
            out.append(path)
    return out


def _host_ok(host: str) -> bool:
    if "{" in host or host.startswith(("$", "%")) or host in ("localhost", "unix"):
        return True  # a template filled in at run time, or loopback by name
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host in DOC_HOSTS or host.endswith((".invalid", ".example", ".svc",
                                                   ".svc.cluster.local"))


def test_every_url_in_the_repository_is_loopback_or_a_template() -> None:
    bad = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(REPO).as_posix()
        for number, line in enumerate(text.splitlines(), 1):
            if rel.startswith(DATA_FILES):
                continue
            bad += [f"{rel}:{number}: {m.group(0)}" for m in URL.finditer(line)
                    if not _host_ok(m.group(1))]
            bad += [f"{rel}:{number}: {m.group(0)}" for m in BARE_PRIVATE.finditer(line)]
    assert not bad, "addresses a user could copy and the tool would dial:\n" + "\n".join(bad)


def test_defaults_dial_nothing_but_the_in_cluster_api() -> None:
    config = Config()
    assert config.collectors.engines.targets == ()
    assert config.kubernetes.api_url is None  # in-cluster service from the environment
    for description in (EngineTarget.model_fields["url"].description,
                        KubernetesSettings.model_fields["api_url"].description):
        hosts = [m.group(1) for m in URL.finditer(description or "")]
        assert hosts and all(_host_ok(h) for h in hosts), description


def test_the_guard_catches_what_it_should() -> None:
    assert not _host_ok("10.0.0.5") and not _host_ok("192.168.1.2") and not _host_ok("8.8.8.8")
    assert not _host_ok("169.254.169.254") and not _host_ok("engine.internal")
    assert _host_ok("127.0.0.1") and _host_ok("[::1]") and _host_ok("{host}")
    assert BARE_PRIVATE.search("pod_ip: 172.20.3.4") and not BARE_PRIVATE.search("v172.15.0.1")


def test_the_simulated_pods_discovery_dials_are_loopback() -> None:
    """Discovery dials each pod's podIP: every simulated pod of every scenario must be on
    loopback, where the simulator's fake engines listen."""
    from kvscope.sim.scenarios import SimOptions, all_scenarios, build_scenario

    seen = 0
    for name in all_scenarios():
        node = build_scenario(name, SimOptions(latency_scale=0.0))
        for pod in node.pods:
            assert ipaddress.ip_address(pod.pod_ip).is_loopback, (name, pod.name, pod.pod_ip)
            seen += 1
    assert seen > 0
