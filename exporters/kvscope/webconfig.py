"""The Prometheus exporter-toolkit web configuration file: TLS and basic auth.

Same keys as node_exporter's `--web.config.file`, so operators reuse what they have:

    tls_server_config: {cert_file: ..., key_file: ..., client_auth_type: ..., client_ca_file: ...}
    basic_auth_users: {user: <bcrypt hash>}
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from pathlib import Path
from typing import Literal

import bcrypt
from pydantic import BaseModel, ConfigDict, ValidationError

from kvscope.config import ConfigError, describe, read_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_auth_type: Literal["NoClientCert", "RequireAndVerifyClientCert",
                              "VerifyClientCertIfGiven", "RequireAnyClientCert",
                              "RequestClientCert"] = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: Literal["TLS12", "TLS13"] = "TLS12"


class HttpServerConfig(_Strict):
    headers: dict[str, str] = {}


class WebConfig(_Strict):
    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, str] = {}
    http_server_config: HttpServerConfig = HttpServerConfig()


def load_web_config(path: Path) -> WebConfig:
    data = read_file(path, "web config")
    try:
        cfg = WebConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"web config {path}: {describe(exc)}") from None
    for user, hashed in cfg.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"web config {path}: basic_auth_users.{user} is not a bcrypt hash")
    if cfg.tls_server_config is not None:
        ssl_context(cfg.tls_server_config, path)  # fail at start, not on the first scrape
    return cfg


def ssl_context(tls: TlsServerConfig, origin: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLS13"
                           else ssl.TLSVersion.TLSv1_2)
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"web config {origin}: cannot load TLS certificate "
                          f"{tls.cert_file} / key {tls.key_file}: {reason}") from None
    if tls.client_auth_type != "NoClientCert":
        if tls.client_ca_file is None:
            raise ConfigError(f"web config {origin}: client_auth_type "
                              f"{tls.client_auth_type} needs client_ca_file")
        try:
            ctx.load_verify_locations(tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"web config {origin}: cannot load client CA "
                              f"{tls.client_ca_file}: {exc}") from None
        ctx.verify_mode = (ssl.CERT_REQUIRED if tls.client_auth_type.startswith("Require")
                           else ssl.CERT_OPTIONAL)
    return ctx


class BasicAuth:
    """bcrypt checks with a cache of successes: bcrypt costs ~100 ms a check by design, and a
    Prometheus scraping every 5 s must not pay that each time (exporter-toolkit caches too)."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {u: h.encode() for u, h in users.items()}
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def _key(self, user: str, password: str) -> tuple[bytes, bytes | None, bytes]:
        hashed = self._users.get(user)
        # Unknown users are checked against a dummy hash so timing does not reveal them.
        target = hashed or _DUMMY_HASH
        key = hashlib.sha256(user.encode() + b"\0" + password.encode() + b"\0" + target).digest()
        return key, hashed, target

    def cached(self, user: str, password: str) -> bool:
        """True when these exact credentials were verified before (cheap, no bcrypt)."""
        key, _, _ = self._key(user, password)
        with self._lock:
            return key in self._verified

    def verify(self, user: str, password: str) -> bool:
        """The bcrypt check; slow by design, so callers run it in a thread."""
        key, hashed, target = self._key(user, password)
        ok = bcrypt.checkpw(password.encode(), target) and hashed is not None
        if ok:
            with self._lock:
                self._verified.add(key)
        return ok


_DUMMY_HASH = bcrypt.hashpw(b"kvscope-no-such-user", bcrypt.gensalt(rounds=10))
