"""The probe listener (issue 15, item 13): plain HTTP, /healthz and /readyz only, no
credentials, while the main port keeps requiring TLS, a client certificate and basic auth."""

from __future__ import annotations

import base64
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import trustme

from agent import Agent, free_port, kvscope


def _wait_answering(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _plain_get(url)
            return
        except urllib.error.URLError:
            assert time.monotonic() < deadline, f"nothing answers {url}"
            time.sleep(0.2)


def _plain_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Server certificate, client CA, a client certificate and a web config requiring all of
    TLS, a verified client certificate and basic auth."""
    tmp = tmp_path_factory.mktemp("mtls")
    ca = trustme.CA()
    files = {"ca": tmp / "ca.pem", "cert": tmp / "server.pem", "key": tmp / "server.key",
             "client": tmp / "client.pem", "web": tmp / "web.yml"}
    ca.cert_pem.write_to_path(files["ca"])
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(files["cert"])
    leaf.private_key_pem.write_to_path(files["key"])
    ca.issue_cert("prometheus.example").private_key_and_cert_chain_pem.write_to_path(
        files["client"])
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    files["web"].write_text(
        f"tls_server_config:\n  cert_file: {files['cert']}\n  key_file: {files['key']}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {files['ca']}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    return files


def test_probes_answer_without_credentials_while_metrics_stay_protected(
        mtls: dict[str, Path]) -> None:
    probe = f"127.0.0.1:{free_port()}"
    client = ssl.create_default_context(cafile=str(mtls["ca"]))
    client.load_cert_chain(mtls["client"])
    token = base64.b64encode(b"prometheus:s3cret").decode()
    with Agent("demo", "--web.config.file", str(mtls["web"]),
               "--web.probe-listen-address", probe, scheme="https",
               ssl_context=client) as agent:
        _wait_answering(f"http://{probe}/healthz")
        assert _plain_get(f"http://{probe}/healthz") == (200, b"ok\n")
        deadline = time.monotonic() + 20
        while (status := _plain_get(f"http://{probe}/readyz"))[0] != 200:
            assert status[0] == 503 and time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status == (200, b"ready\n")
        # Only the probes: no metrics, no index page on the unauthenticated port.
        assert _plain_get(f"http://{probe}/metrics")[0] == 404
        assert _plain_get(f"http://{probe}/")[0] == 404
        # The main port is as strict as before, /healthz included.
        assert agent.get("/healthz")[0] == 401
        assert agent.get("/metrics", {"Authorization": f"Basic {token}"})[0] == 200
        no_cert = Agent.__new__(Agent)
        no_cert.base = agent.base
        no_cert.ssl_context = ssl.create_default_context(cafile=str(mtls["ca"]))
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            no_cert.get("/healthz")
        code, stderr = agent.terminate()
    assert code == 0, stderr
    assert f"probes (/healthz, /readyz, no auth) on http://{probe}/" in stderr


def test_the_probe_listener_is_off_by_default() -> None:
    with Agent("demo") as agent:
        code, stderr = agent.terminate()
    assert code == 0
    assert "probes (" not in stderr


def test_probe_listen_address_from_the_config_file(tmp_path: Path) -> None:
    probe = f"127.0.0.1:{free_port()}"
    config = tmp_path / "kvscope.yml"
    config.write_text(f"web:\n  probe_listen_address: '{probe}'\n")
    with Agent("demo", "--config", str(config)):
        _wait_answering(f"http://{probe}/healthz")
        assert _plain_get(f"http://{probe}/healthz")[0] == 200


def test_a_bad_or_busy_probe_address_is_one_line() -> None:
    result = kvscope("demo", "--web.probe-listen-address", "nowhere", "--web.listen-address",
                     "127.0.0.1:0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "probe_listen_address" in lines[0], result.stderr
    with Agent("demo") as agent:
        busy = kvscope("demo", "--web.listen-address", "127.0.0.1:0",
                       "--web.probe-listen-address", f"127.0.0.1:{agent.port}")
    assert busy.returncode == 2
    lines = busy.stderr.strip().splitlines()
    assert len(lines) == 1, busy.stderr
    assert lines[0].startswith(f"kvscope: error: cannot listen on 127.0.0.1:{agent.port}")
