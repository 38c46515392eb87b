"""HTTP endpoints: /metrics (cached bytes), /healthz, /readyz and the index page
(status_page.py); the probe app, /healthz and /readyz only, for the plain-HTTP probe listener."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kvscope.render.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE
from kvscope.runtime import Runtime
from kvscope.web import status_page
from kvscope.web.auth import BasicAuth, Verdict
from kvscope.web.status_page import DoctorCache, NodeFacts
from kvscope.web.webconfig import WebConfig, subject_alt_names

log = logging.getLogger(__name__)

RUNTIME_KEY = web.AppKey("runtime", Runtime)
FACTS_KEY = web.AppKey("node_facts", NodeFacts)
DOCTOR_KEY = web.AppKey("doctor_cache", DoctorCache)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


OPENMETRICS_KEY = web.AppKey("enable_openmetrics", bool)


def _wants_openmetrics(request: web.Request) -> bool:
    """OpenMetrics only when the operator enabled it and the scraper asks for it.

    Prometheus 2.x asks for OpenMetrics first; dcgm-exporter and node_exporter (without
    --web.enable-openmetrics) answer with the text format regardless, and so does kvscope by
    default, so a scrape of kvscope stores exactly what a scrape of dcgm-exporter stores.
    """
    if not request.app.get(OPENMETRICS_KEY, False):
        return False
    return "application/openmetrics-text" in request.headers.get("Accept", "")


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header lets us answer with gzip (RFC 9110 12.5.3): `gzip`
    (or its alias `x-gzip`) or else `*` with a q-value above 0. `gzip;q=0` means "not gzip";
    identity is always the fallback."""
    wildcard: float | None = None
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0  # a q-value we cannot read accepts nothing
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            wildcard = q
    return wildcard is not None and wildcard > 0


def _accepts_gzip(request: web.Request) -> bool:
    return accepts_gzip(request.headers.get("Accept-Encoding", ""))


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    openmetrics = _wants_openmetrics(request)
    gzip_ok = _accepts_gzip(request)
    body = runtime.exposition(openmetrics=openmetrics, gzip_ok=gzip_ok)
    headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE}
    if gzip_ok:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    health = request.app[RUNTIME_KEY].collector_health()
    waiting = sorted(name for name, h in health.items() if not h["ready"])
    if waiting:
        return web.Response(status=503, text=f"waiting for first snapshot: {', '.join(waiting)}\n")
    return web.Response(text="ready\n")


async def index(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    cache = request.app.get(DOCTOR_KEY)
    if cache is not None:
        await cache.get(runtime)  # runs in a thread, at most once per cache.max_age
    facts = request.app.get(FACTS_KEY) or NodeFacts(node_name="")
    page = status_page.render(facts, runtime.families(), runtime.collector_health(), cache)
    return web.Response(text=page, content_type="text/html")


Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def basic_auth_middleware(auth: BasicAuth, excluded: frozenset[str]) -> Middleware:
    """401 without valid credentials; 429 when too many bcrypt checks already wait (auth.py)."""
    challenge = {"WWW-Authenticate": 'Basic realm="kvscope"'}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in excluded:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if scheme.lower() != "basic" or not sep:
            return web.Response(status=401, text="Unauthorized\n", headers=challenge)
        verdict = await auth.check(user, password, request.remote or "")
        if verdict is Verdict.BUSY:
            return web.Response(status=429, text="Too many authentication attempts\n",
                                headers={"Retry-After": "1"})
        if verdict is Verdict.DENIED:
            return web.Response(status=401, text="Unauthorized\n", headers=challenge)
        return await handler(request)

    return middleware


def client_cert_middleware(required: bool, allowed_sans: frozenset[str],
                           excluded: frozenset[str]) -> Middleware:
    """The HTTP half of client-certificate auth: ssl already verified any certificate against
    the client CA; here a certificate is required (when the handshake only asked, because of
    auth_excluded_paths) and its SANs are matched against client_allowed_sans."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in excluded:
            return await handler(request)
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        if not peercert:
            if required:
                return web.Response(status=401, text="client certificate required\n")
            return await handler(request)
        if allowed_sans and not subject_alt_names(peercert) & allowed_sans:
            return web.Response(status=403, text="client certificate SAN not allowed\n")
        return await handler(request)

    return middleware


def headers_middleware(headers: dict[str, str]) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(headers)
        return response

    return middleware


def build_app(runtime: Runtime, web_config: WebConfig | None = None,
              facts: NodeFacts | None = None,
              doctor: DoctorCache | None = None,
              enable_openmetrics: bool = False) -> web.Application:
    """The agent's endpoints. `facts` and `doctor` feed the index page only: /metrics serves
    the runtime's rendered bytes and nothing else."""
    middlewares: list[Any] = []
    on_cleanup: list[BasicAuth] = []
    if web_config is not None:
        if web_config.http_server_config.headers:
            middlewares.append(headers_middleware(web_config.http_server_config.headers))
        excluded = frozenset(web_config.auth_excluded_paths)
        tls = web_config.tls_server_config
        if tls is not None and tls.client_auth_type != "NoClientCert":
            middlewares.append(client_cert_middleware(
                web_config.client_cert_required, frozenset(tls.client_allowed_sans), excluded))
        auth = BasicAuth(web_config.basic_auth_users)
        if auth.enabled:
            middlewares.append(basic_auth_middleware(auth, excluded))
            on_cleanup.append(auth)
    app = web.Application(middlewares=middlewares)
    for closable in on_cleanup:
        app.on_cleanup.append(_closer(closable))
    app[RUNTIME_KEY] = runtime
    app[OPENMETRICS_KEY] = enable_openmetrics
    if facts is not None:
        app[FACTS_KEY] = facts
    if doctor is not None:
        app[DOCTOR_KEY] = doctor
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    return app


def _closer(auth: BasicAuth) -> Callable[[web.Application], Awaitable[None]]:
    async def close(_app: web.Application) -> None:
        auth.close()

    return close


def build_probe_app(runtime: Runtime) -> web.Application:
    """/healthz and /readyz without authentication, for the kubelet (which cannot present
    basic-auth credentials or a client certificate), served on the probe listener alone."""
    app = web.Application()
    app[RUNTIME_KEY] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
