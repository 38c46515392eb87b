"""exporter-toolkit web config keys: each one honoured (checked over a real TLS handshake with
the agent's own HTTP app) or refused with one line that names it."""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import trustme
from aiohttp import web
from click.testing import CliRunner, Result

from agent import kvscope
from conftest import sim_context
from kvscope.app import build_runtime
from kvscope.cli import main
from kvscope.config import ConfigError
from kvscope.web.server import build_app
from kvscope.web.webconfig import load_web_config, ssl_context

# A refused handshake reads as an SSL error or, when the server drops it, a reset connection.
REFUSED = (ssl.SSLError, ConnectionError)


@dataclass
class Pki:
    ca: trustme.CA
    dir: Path
    cert: Path
    key: Path
    ca_file: Path

    def client(self, *, cert_for: str | None = None, max_tls12: bool = False,
               ciphers: str | None = None, curve: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        if max_tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if ciphers:
            ctx.set_ciphers(ciphers)
        if curve:
            ctx.set_ecdh_curve(curve)
        if cert_for:
            leaf = self.ca.issue_cert(cert_for)
            pem = self.dir / f"client-{cert_for}.pem"
            leaf.private_key_and_cert_chain_pem.write_to_path(pem)
            ctx.load_cert_chain(pem)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(ca, tmp, tmp / "server.pem", tmp / "server.key", tmp / "ca.pem")
    leaf.cert_chain_pems[0].write_to_path(pki.cert)
    leaf.private_key_pem.write_to_path(pki.key)
    ca.cert_pem.write_to_path(pki.ca_file)
    return pki


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    version: str
    cipher: str
    alpn: str | None


class Server:
    def __init__(self, port: int) -> None:
        self.port = port

    async def get(self, client: ssl.SSLContext, path: str = "/metrics",
                  headers: dict[str, str] | None = None) -> Reply:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=client)
        tls = writer.get_extra_info("ssl_object")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"
                     .encode())
        try:
            raw = await reader.read()
        finally:
            writer.close()
        if not raw:
            # TLS 1.3: the client finishes its handshake before the server checks the client's
            # certificate, so a refusal arrives as a closed connection.
            raise ConnectionResetError("closed without a reply")
        head = raw.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in head[1:])
        return Reply(int(head[0].split()[1]), fields, tls.version(), tls.cipher()[0],
                     tls.selected_alpn_protocol())


Starter = Callable[[str], Awaitable[Server]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Starter]:
    runners: list[web.AppRunner] = []
    runtime = build_runtime(sim_context("healthy"))
    await runtime.poll_all_once()

    async def start(content: str) -> Server:
        path = tmp_path / "web.yml"
        path.write_text(content)
        cfg = load_web_config(path)
        runner = web.AppRunner(build_app(runtime, cfg))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context(cfg, path))
        await site.start()
        runners.append(runner)
        return Server(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()
    await runtime.stop()


def _tls(pki: Pki, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {pki.cert}\n  key_file: {pki.key}\n{extra}"


async def test_min_and_max_version(serve: Starter, pki: Pki) -> None:
    server = await serve(_tls(pki, "  max_version: TLS12\n"))
    assert (await server.get(pki.client())).version == "TLSv1.2"
    server = await serve(_tls(pki, "  min_version: TLS13\n"))
    assert (await server.get(pki.client())).version == "TLSv1.3"
    with pytest.raises(REFUSED):
        await server.get(pki.client(max_tls12=True))


async def test_cipher_suites_and_server_preference(serve: Starter, pki: Pki) -> None:
    offered = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
    suites = ("  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "
              "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n")
    server = await serve(_tls(pki, suites))
    # The server's order wins by default (prefer_server_cipher_suites: true) ...
    assert (await server.get(pki.client(ciphers=offered))).cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
    server = await serve(_tls(pki, suites + "  prefer_server_cipher_suites: false\n"))
    # ... and the client's when it is off.
    assert (await server.get(pki.client(ciphers=offered))).cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"
    server = await serve(_tls(pki, "  max_version: TLS12\n  cipher_suites: "
                                   "[TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n"))
    with pytest.raises(REFUSED):  # a suite the server does not list is refused
        await server.get(pki.client(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))


async def test_curve_preferences_one_curve(serve: Starter, pki: Pki) -> None:
    server = await serve(_tls(pki, "  curve_preferences: [CurveP384]\n"))
    assert (await server.get(pki.client(curve="secp384r1"))).status == 200
    with pytest.raises(REFUSED):
        await server.get(pki.client(curve="prime256v1"))


async def test_inline_pem_and_relative_paths(serve: Starter, pki: Pki,
                                           tmp_path: Path) -> None:
    def indent(path: Path) -> str:
        return "".join(f"    {line}\n" for line in path.read_text().splitlines())

    server = await serve(f"tls_server_config:\n  cert: |\n{indent(pki.cert)}"
                         f"  key: |\n{indent(pki.key)}")
    assert (await server.get(pki.client())).status == 200
    (tmp_path / "s.pem").write_bytes(pki.cert.read_bytes())
    (tmp_path / "s.key").write_bytes(pki.key.read_bytes())
    server = await serve("tls_server_config: {cert_file: s.pem, key_file: s.key}\n")
    assert (await server.get(pki.client())).status == 200


async def test_client_certificates_sans_and_excluded_paths(serve: Starter, pki: Pki) -> None:
    required = (f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca_file}\n"
                "  client_allowed_sans: [prom.example]\n")
    server = await serve(_tls(pki, required))
    assert (await server.get(pki.client(cert_for="prom.example"))).status == 200
    assert (await server.get(pki.client(cert_for="intruder.example"))).status == 403
    with pytest.raises(REFUSED):
        await server.get(pki.client())  # no certificate: refused at the handshake
    # With auth_excluded_paths the handshake only asks; the excluded path needs nothing.
    server = await serve(_tls(pki, required) + "auth_excluded_paths: [/healthz]\n")
    assert (await server.get(pki.client(), "/healthz")).status == 200
    assert (await server.get(pki.client(), "/metrics")).status == 401
    assert (await server.get(pki.client(cert_for="prom.example"), "/metrics")).status == 200


async def test_basic_auth_headers_excluded_paths_and_http2(serve: Starter, pki: Pki) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    server = await serve(_tls(pki) + f"basic_auth_users: {{prom: '{hashed}'}}\n"
                         "auth_excluded_paths: [/healthz]\n"
                         "http_server_config:\n  http2: true\n"
                         "  headers: {X-Frame-Options: deny, X-Content-Type-Options: nosniff}\n")
    token = base64.b64encode(b"prom:pw").decode()
    denied = await server.get(pki.client())
    assert denied.status == 401 and denied.headers["X-Frame-Options"] == "deny"
    ok = await server.get(pki.client(), headers={"Authorization": f"Basic {token}"})
    assert ok.status == 200 and ok.headers["X-Content-Type-Options"] == "nosniff"
    assert ok.alpn == "http/1.1"  # http2: true is accepted; HTTP/1.1 is what is served
    assert (await server.get(pki.client(), "/healthz")).status == 200


@pytest.mark.parametrize(("content", "expected"), [
    ("rate_limit: {interval: 1s, burst: 1}\n",
     "'rate_limit' is an exporter-toolkit key kvscope does not support"),
    ("{tls}  client_auth_type: RequestClientCert\n  client_ca_file: {ca}\n",
     "'tls_server_config.client_auth_type': RequestClientCert is not supported"),
    ("{tls}  client_auth_type: RequireAnyClientCert\n  client_ca_file: {ca}\n",
     "'tls_server_config.client_auth_type': RequireAnyClientCert is not supported"),
    ("{tls}  curve_preferences: [X25519, CurveP256]\n",
     "'tls_server_config.curve_preferences': more than one curve is not supported"),
    ("{tls}  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
     "unknown cipher suite 'TLS_RSA_WITH_RC4_128_SHA'"),
    ("{tls}  min_version: TLS13\n  max_version: TLS12\n",
     "min_version TLS13 is above max_version TLS12"),
    ("{tls}  min_version: SSL3\n", "'tls_server_config.min_version': Input should be 'TLS10'"),
    ("{tls}  client_ca_file: {ca}\n", "client_ca_file is set but client_auth_type is NoClientCert"),
    ("{tls}  client_auth_type: RequireAndVerifyClientCert\n",
     "client_auth_type RequireAndVerifyClientCert needs client_ca_file"),
    ("{tls}  cert: inline\n", "give cert_file or cert, not both"),
    ("tls_server_config: {client_auth_type: NoClientCert}\n",
     "needs cert_file and key_file (or inline cert and key)"),
    ("http_server_config: {headers: {Server: kvscope}}\n", "header 'Server' cannot be configured"),
    ("http_server_config: {headers: {X-Frame-Options: allow}}\n",
     "X-Frame-Options must be one of deny, sameorigin (got 'allow')"),
    ("http_server_config: {http3: true}\n",
     "unknown key 'http_server_config.http3' (allowed here: headers, http2)"),
    ("{tls}  key_fle: x\n", "unknown key 'tls_server_config.key_fle' (allowed here: cert, "
     "cert_file, cipher_suites, client_allowed_sans, client_auth_type, client_ca, client_ca_file, "
     "curve_preferences, key, key_file, max_version, min_version, prefer_server_cipher_suites)"),
    ("basic_auth_user: {}\n", "unknown key 'basic_auth_user' (allowed here: auth_excluded_paths, "
     "basic_auth_users, http_server_config, tls_server_config)"),
    ("tls_server_config:\n  cert_file: [a\n", "web.yml line 3, column 1: not valid YAML: while "
     "parsing a flow sequence (line 2, column 14): expected ',' or ']', but got '<stream end>'"),
])
def test_unsupported_or_wrong_web_config_is_one_line_exit_2(tmp_path: Path, pki: Pki,
                                                            content: str, expected: str) -> None:
    """`kvscope serve` run in this process (the same command, without a Python start-up per
    case); test_a_wrong_web_config_stops_a_real_process runs one case as its own process."""
    path = tmp_path / "web.yml"
    path.write_text(content.replace("{tls}", _tls(pki)).replace("{ca}", str(pki.ca_file)))
    returncode, stderr = _serve_in_process("--scenario", "healthy", "--web.config.file",
                                           str(path), "--web.listen-address", "127.0.0.1:0")
    _assert_one_line_web_config_error(returncode, stderr, path, expected)


def test_a_wrong_web_config_stops_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("rate_limit: {interval: 1s, burst: 1}\n")
    result = kvscope("serve", "--scenario", "healthy", "--web.config.file", str(path),
                     "--web.listen-address", "127.0.0.1:0", timeout=30)
    _assert_one_line_web_config_error(
        result.returncode, result.stderr, path,
        "'rate_limit' is an exporter-toolkit key kvscope does not support")


def _serve_in_process(*args: str) -> tuple[int, str]:
    """(exit status, stderr) of `kvscope serve ARGS` through click's runner, in a thread so that
    a config that is wrongly accepted fails the test instead of serving forever."""
    done: list[Result] = []
    worker = threading.Thread(
        target=lambda: done.append(CliRunner().invoke(main, ["serve", *args])), daemon=True)
    worker.start()
    worker.join(30)
    assert done, f"kvscope serve {' '.join(args)} did not exit: the web config was accepted"
    return done[0].exit_code, done[0].stderr


def _assert_one_line_web_config_error(returncode: int, stderr: str, path: Path,
                                      expected: str) -> None:
    assert returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"kvscope: error: web config {path}"), lines[0]
    assert expected in lines[0], lines[0]


def test_a_cipher_this_openssl_cannot_offer_is_named(tmp_path: Path, pki: Pki) -> None:
    """3DES is in Go's list but off in OpenSSL 3's default security level: refused by name,
    not silently dropped."""
    path = tmp_path / "web.yml"
    path.write_text(_tls(pki, "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "
                              "TLS_RSA_WITH_3DES_EDE_CBC_SHA]\n"))
    offered = {c["name"] for c in ssl.create_default_context().get_ciphers()}
    if "DES-CBC3-SHA" in offered:
        pytest.skip("this OpenSSL still offers 3DES")
    with pytest.raises(ConfigError, match="TLS_RSA_WITH_3DES_EDE_CBC_SHA not available in this "
                                          "OpenSSL"):
        load_web_config(path)


def test_an_empty_tls_section_means_plain_http_as_in_exporter_toolkit(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config: {}\nhttp_server_config: {http2: false}\n")
    cfg = load_web_config(path)
    assert cfg.tls_server_config is None and cfg.http_server_config.http2 is False


def test_only_the_configured_client_ca_is_trusted(tmp_path: Path, pki: Pki) -> None:
    path = tmp_path / "web.yml"
    path.write_text(_tls(pki, "  client_auth_type: RequireAndVerifyClientCert\n"
                              f"  client_ca_file: {pki.ca_file}\n"))
    ctx = ssl_context(load_web_config(path), path)
    assert ctx.cert_store_stats()["x509_ca"] == 1  # not the system's CAs as well
    assert ctx.verify_mode is ssl.CERT_REQUIRED


def test_readme_table_names_every_web_config_key() -> None:
    from agent import REPO
    from kvscope.web.webconfig import (
        UNSUPPORTED_TOP_LEVEL,
        HttpServerConfig,
        TlsServerConfig,
        WebConfig,
    )

    readme = (REPO / "README.md").read_text()
    table = readme.split("### TLS and basic auth")[1].split("### Index page")[0]
    keys = {*TlsServerConfig.model_fields, *HttpServerConfig.model_fields,
            *WebConfig.model_fields, *UNSUPPORTED_TOP_LEVEL}
    missing = sorted(k for k in keys if f"`{k}" not in table and f"{k}`" not in table
                     and f".{k}`" not in table)
    assert not missing, f"web config keys the README table does not mention: {missing}"
