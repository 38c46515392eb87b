"""The Kubernetes API reader against real loopback servers: reads are bounded while they are
read, redirects are refused, and the API timeout must fit the topology tier."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from kvscope.config import ConfigError, load
from kvscope.sources.kube import KubeClient, KubeError


class Api:
    def __init__(self) -> None:
        self.sent = 0
        self.base = ""

    def app(self) -> web.Application:
        async def endless_pods(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()  # chunked: no Content-Length to refuse up front
            await resp.prepare(request)
            pod = json.dumps({"metadata": {"name": "p" * 200}}).encode() + b","
            await resp.write(b'{"items": [')
            for _ in range(200_000):  # ~45 MB if nobody stops reading
                await resp.write(pod * 10)
                self.sent += len(pod) * 10
            await resp.write(b"{}]}")
            return resp

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{self.base}/api/v1/nodes/n")

        async def node(request: web.Request) -> web.Response:
            return web.json_response({"metadata": {"name": "n"}})

        app = web.Application()
        app.router.add_get("/api/v1/pods", endless_pods)
        app.router.add_get("/api/v1/nodes/moved", redirect)
        app.router.add_get("/api/v1/nodes/n", node)
        return app


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    fake = Api()
    runner = web.AppRunner(fake.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield fake
    await runner.cleanup()


async def test_a_pod_list_past_the_limit_is_refused_while_it_is_read(api: Api) -> None:
    client = KubeClient(api.base, "n", timeout=10.0, max_bytes=1 << 20)
    with pytest.raises(KubeError) as err:
        await client.node_pods()
    await client.close()
    assert err.value.reason == "too_large"
    assert "1048576" in str(err.value)
    assert api.sent < 16 << 20  # stopped reading near the limit, not after 45 MB


async def test_a_redirect_from_the_api_is_an_error(api: Api) -> None:
    client = KubeClient(api.base, "moved", timeout=2.0)
    with pytest.raises(KubeError) as err:
        await client.node()
    await client.close()
    assert err.value.reason == "redirect"


def test_the_api_timeout_must_be_below_the_topology_tier_timeout() -> None:
    assert load(None).kubernetes.timeout < load(None).collectors.topology.timeout
    with pytest.raises(ConfigError) as err:
        load(None, {"kubernetes.timeout": 5.0})
    line = str(err.value)
    assert "\n" not in line
    assert "kubernetes.timeout (5) must be below collectors.topology.timeout (4)" in line
    # Without the topology collector's API reads there is no tier to fit into.
    assert load(None, {"kubernetes.timeout": 5.0,
                       "collectors.topology.kubernetes_api": False}).kubernetes.timeout == 5.0
    assert load(None, {"kubernetes.timeout": 5.0, "collectors.topology.timeout": 6.0})
