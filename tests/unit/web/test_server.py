"""HTTP endpoints for real: TLS, basic auth, content negotiation, readiness, shutdown, and
scrapes that never reach NVML."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import urllib.error
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme
from aiohttp import web

from agent import Agent, kvscope
from conftest import parse, sim_context
from kvscope.app import build_runtime
from kvscope.web.server import accepts_gzip, build_app
from node_fixture import SimulatedNode


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1, made for this test run."""
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp / "ca.pem", "cert": tmp / "server.pem", "key": tmp / "server.key"}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


def _web_config(tmp: Path, tls: dict[str, Path], password: bytes = b"s3cret") -> Path:
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()
    path = tmp / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {tls['cert']}\n  key_file: {tls['key']}\n"
                    f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    return path


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_tls_and_basic_auth_for_real(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    config = _web_config(tmp_path, tls_files)
    client_ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
    with Agent("demo", "--web.config.file", str(config), scheme="https",
               ssl_context=client_ctx) as agent:
        status, _, headers = agent.get("/metrics")
        assert status == 401 and "Basic" in headers["WWW-Authenticate"]
        assert agent.get("/metrics", _basic("prometheus", "wrong"))[0] == 401
        assert agent.get("/metrics", _basic("nobody", "s3cret"))[0] == 401
        agent.wait_ready_with = None
        status, body, _ = agent.get("/metrics", _basic("prometheus", "s3cret"))
        assert status == 200 and b"kvscope_build_info" in body
        # Plain HTTP against the TLS port gets no metrics.
        plain = Agent.__new__(Agent)
        plain.base, plain.ssl_context = f"http://127.0.0.1:{agent.port}", None
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            plain.get("/metrics")
        # A client that does not trust our CA refuses the certificate.
        untrusting = Agent.__new__(Agent)
        untrusting.base = agent.base
        untrusting.ssl_context = ssl.create_default_context()
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.get("/metrics", _basic("prometheus", "s3cret"))


@pytest.mark.parametrize(("content", "expected"), [
    ("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n",
     "cannot load TLS certificate /nonexistent.pem"),
    ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom is not a bcrypt hash"),
    ("tls_server_confg: {}\n", "unknown key 'tls_server_confg'"),
    ("basic_auth_users: [1, 2\n", "not valid YAML"),
])
def test_bad_web_config_refuses_to_start(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(content)
    result = kvscope("demo", "--web.config.file", str(path), "--web.listen-address",
                     "127.0.0.1:0", timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert lines[0].startswith("kvscope: error: web config")


def test_readiness_index_and_sigterm() -> None:
    with Agent("demo", "--scenario", "gpu0-hotspot") as agent:
        agent.wait_ready()
        status, body, headers = agent.get("/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        util = {lb["gpu"]: v for lb, v in parse(body)["DCGM_FI_DEV_GPU_UTIL"]}
        assert util["0"] >= 96 and util["7"] <= 50
        status, page, _ = agent.get("/")
        assert status == 200 and b"<td>gpu</td><td class=up>up</td>" in page
        assert agent.get("/healthz")[0] == 200
        code, stderr = agent.terminate()
        assert code == 0, stderr
        assert "shutting down" in stderr and "Traceback" not in stderr


def test_port_in_use_is_one_line(simulated_node: SimulatedNode) -> None:
    result = kvscope("demo", "--web.listen-address", f"127.0.0.1:{simulated_node.port}")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("kvscope: error: cannot listen on 127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


async def _serve(runtime, openmetrics: bool = False  # type: ignore[no-untyped-def]
                 ) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(build_app(runtime, enable_openmetrics=openmetrics))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_concurrent_scrapes_cost_no_nvml_calls() -> None:
    ctx = sim_context("healthy", overrides={"collectors.gpu.cadence.fast": 3600,
                                            "collectors.gpu.cadence.slow": 3600})
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    runner, base = await _serve(runtime)
    calls_before = ctx.nvml.total_calls
    renders_before = runtime.renders
    try:
        async with aiohttp.ClientSession() as session:
            async def scrape() -> bytes:
                async with session.get(f"{base}/metrics") as resp:
                    assert resp.status == 200
                    return await resp.read()

            bodies = await asyncio.gather(*(scrape() for _ in range(32 * 5)))
        calls_after = ctx.nvml.total_calls
    finally:
        await runner.cleanup()
        await runtime.stop()
    assert len(set(bodies)) == 1
    assert calls_after == calls_before  # 160 scrapes, zero NVML calls
    assert runtime.renders - renders_before <= 1


# What Prometheus 2.42 sends (scrape.go's acceptHeader): OpenMetrics first.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


async def test_text_format_by_default_whatever_prometheus_asks() -> None:
    ctx = sim_context("healthy")
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    runner, base = await _serve(runtime)
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics",
                               headers={"Accept": PROMETHEUS_ACCEPT}) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = await resp.read()
    finally:
        await runner.cleanup()
        await runtime.stop()
    text = body.decode()
    assert "# EOF" not in text
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in text
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in text
    assert "DCGM_FI_DEV_GPU_UTIL" in parse(body)


async def test_openmetrics_and_gzip_negotiation() -> None:
    ctx = sim_context("healthy")
    runtime = build_runtime(ctx)
    await runtime.poll_all_once()
    runner, base = await _serve(runtime, openmetrics=True)
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
            async with session.get(f"{base}/metrics", headers=headers) as resp:
                raw = await resp.read()
                assert resp.headers["Content-Encoding"] == "gzip"
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            body = gzip.decompress(raw).decode()
            assert body.endswith("# EOF\n")
            # dcgm-exporter's counters stay counters under their own names (issue 11).
            assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter" in body
            assert "# TYPE DCGM_FI_DEV_PCIE_REPLAY_COUNTER counter" in body
            async with session.get(f"{base}/metrics",
                                   headers={"Accept-Encoding": "identity"}) as resp:
                assert "Content-Encoding" not in resp.headers
                assert not (await resp.read()).endswith(b"# EOF\n")
    finally:
        await runner.cleanup()
        await runtime.stop()


@pytest.mark.parametrize(("header", "gzip_ok"), [
    ("gzip", True), ("gzip, deflate", True), ("deflate, gzip;q=0.5", True), ("GZIP", True),
    ("x-gzip", True), ("*", True), ("gzip;q=0", False), ("gzip; q=0.000", False),
    ("gzip;q=0, identity", False), ("*;q=0", False), ("gzip;q=0, *", False),
    ("identity", False), ("", False), ("deflate", False), ("br, *;q=0.1", True),
    ("gzip;q=bogus", False),
])
def test_accept_encoding_q_values(header: str, gzip_ok: bool) -> None:
    assert accepts_gzip(header) is gzip_ok


async def test_gzip_q0_gets_identity() -> None:
    runtime = build_runtime(sim_context("healthy"))
    await runtime.poll_all_once()
    runner, base = await _serve(runtime)
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(f"{base}/metrics",
                                   headers={"Accept-Encoding": "gzip;q=0, identity"}) as resp:
                assert "Content-Encoding" not in resp.headers
                assert b"DCGM_FI_DEV_GPU_UTIL" in await resp.read()
            async with session.get(f"{base}/metrics",
                                   headers={"Accept-Encoding": "gzip;q=0.8"}) as resp:
                assert resp.headers["Content-Encoding"] == "gzip"
                assert b"DCGM_FI_DEV_GPU_UTIL" in gzip.decompress(await resp.read())
    finally:
        await runner.cleanup()
        await runtime.stop()
