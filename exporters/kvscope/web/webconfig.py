"""The Prometheus exporter-toolkit web configuration file: TLS, client certificates, basic auth.

The keys are exporter-toolkit's (`--web.config.file` of node_exporter, dcgm-exporter, ...), so a
file written for them works here, with these differences, each refused with one line rather
than half-honoured (README, "TLS and basic auth"):

- `client_auth_type: RequestClientCert` / `RequireAnyClientCert` (`RequireClientCert`): Go accepts
  a client certificate without verifying it; Python's ssl verifies every certificate it accepts.
- `curve_preferences` with more than one curve: Python 3.11's ssl sets a single curve.
- `rate_limit` (newer exporter-toolkit releases): not implemented.

`http2` is accepted with either value; aiohttp serves HTTP/1.1 only, so `true` means clients
negotiate HTTP/1.1 (Prometheus does). The file is read once at start (exporter-toolkit rereads it
on every request): restart the agent after rotating a certificate.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import warnings
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from kvscope.config import ConfigError, clip, describe, read_file
from kvscope.web.auth import hash_problem

log = logging.getLogger(__name__)

TlsVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go crypto/tls cipher suite names (those exporter-toolkit accepts: tls.CipherSuites()) -> OpenSSL
# names. Suites for TLS 1.2 and older only, as in Go: TLS 1.3 suites are not configurable.
GO_CIPHERS_TLS12: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
}
# Accepted and, as in Go, not configurable: OpenSSL's TLS 1.3 defaults apply.
GO_CIPHERS_TLS13 = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                    "TLS_CHACHA20_POLY1305_SHA256")

# exporter-toolkit's curve names -> OpenSSL's.
CurveName = Literal["CurveP256", "CurveP384", "CurveP521", "X25519"]
_CURVES: dict[str, str] = {"CurveP256": "prime256v1", "CurveP384": "secp384r1",
                           "CurveP521": "secp521r1", "X25519": "X25519"}

# The only response headers exporter-toolkit lets a web config set, with the values it allows
# (an empty tuple: any value).
EXTRA_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (), "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

ClientAuthType = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert",
                         "RequestClientCert", "RequireAnyClientCert", "RequireClientCert"]
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

# exporter-toolkit keys that kvscope knows and does not implement: refused by name.
UNSUPPORTED_TOP_LEVEL = {"rate_limit": "request rate limiting is not implemented"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Strict):
    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None  # inline PEM, instead of cert_file
    key: str | None = None  # inline PEM, instead of key_file
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = None  # inline PEM, instead of client_ca_file
    client_allowed_sans: tuple[str, ...] = ()
    min_version: TlsVersionName = "TLS12"
    max_version: TlsVersionName = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[CurveName, ...] = ()

    @field_validator("client_auth_type")
    @classmethod
    def _verifiable(cls, value: str) -> str:
        if value in _UNVERIFIED_CLIENT_AUTH:
            raise ValueError(
                f"{value} is not supported: Python's ssl verifies every client certificate it "
                "accepts; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with "
                "client_ca_file")
        return value

    @field_validator("cipher_suites")
    @classmethod
    def _known_ciphers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in GO_CIPHERS_TLS12 and name not in GO_CIPHERS_TLS13:
                raise ValueError(f"unknown cipher suite {name!r} (Go crypto/tls names, e.g. "
                                 "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
        return value

    @field_validator("curve_preferences")
    @classmethod
    def _one_curve(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > 1:
            raise ValueError("more than one curve is not supported: Python's ssl sets a single "
                             "curve; list one of CurveP256, CurveP384, CurveP521, X25519")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TlsServerConfig:
        for inline, file in (("cert", "cert_file"), ("key", "key_file"),
                             ("client_ca", "client_ca_file")):
            if getattr(self, inline) is not None and getattr(self, file) is not None:
                raise ValueError(f"give {file} or {inline}, not both")
        if (self.cert_file is None and self.cert is None) or (
                self.key_file is None and self.key is None):
            raise ValueError("needs cert_file and key_file (or inline cert and key)")
        has_ca = self.client_ca_file is not None or self.client_ca is not None
        if self.client_auth_type == "NoClientCert" and has_ca:
            raise ValueError("client_ca_file is set but client_auth_type is NoClientCert")
        if self.client_auth_type != "NoClientCert" and not has_ca:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if self.client_allowed_sans and self.client_auth_type == "NoClientCert":
            raise ValueError("client_allowed_sans needs client_auth_type "
                             "RequireAndVerifyClientCert (or VerifyClientCertIfGiven)")
        if _TLS_VERSIONS[self.min_version] > _TLS_VERSIONS[self.max_version]:
            raise ValueError(f"min_version {self.min_version} is above max_version "
                             f"{self.max_version}")
        return self


class HttpServerConfig(_Strict):
    http2: bool = True  # accepted; HTTP/1.1 is what aiohttp serves (see the module docstring)
    headers: dict[str, str] = {}

    @field_validator("headers")
    @classmethod
    def _toolkit_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, content in value.items():
            if name not in EXTRA_HEADERS:
                raise ValueError(f"header {name!r} cannot be configured (allowed: "
                                 f"{', '.join(sorted(EXTRA_HEADERS))})")
            allowed = EXTRA_HEADERS[name]
            if allowed and content not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)} "
                                 f"(got {content!r})")
        return value


class WebConfig(_Strict):
    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = HttpServerConfig()
    basic_auth_users: dict[str, str] = {}
    auth_excluded_paths: tuple[str, ...] = ()

    @property
    def client_cert_required(self) -> bool:
        tls = self.tls_server_config
        return tls is not None and tls.client_auth_type == "RequireAndVerifyClientCert"


def load_web_config(path: Path) -> WebConfig:
    data = read_file(path, "web config")
    for key, why in UNSUPPORTED_TOP_LEVEL.items():
        if key in data:
            raise ConfigError(f"web config {path}: '{key}' is an exporter-toolkit key kvscope "
                              f"does not support ({why}); remove it")
    if data.get("tls_server_config") in ({}, None):
        # As in exporter-toolkit: an empty TLS section means plain HTTP, not an error.
        data.pop("tls_server_config", None)
    try:
        cfg = WebConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"web config {path}: {describe(exc, WebConfig)}") from None
    for user, hashed in cfg.basic_auth_users.items():
        problem = hash_problem(hashed)
        if problem is not None:
            raise ConfigError(f"web config {path}: basic_auth_users.{clip(user)} {problem}")
    if cfg.tls_server_config is not None:
        # Relative paths are relative to the web config file, as in exporter-toolkit.
        cfg = cfg.model_copy(update={"tls_server_config": _relative_to(
            cfg.tls_server_config, path.parent)})
        ssl_context(cfg, path)  # fail at start, not on the first scrape
    if cfg.http_server_config.http2 and cfg.tls_server_config is not None:
        log.info("web config: http2 is on, but kvscope serves HTTP/1.1 only; clients negotiate "
                 "HTTP/1.1")
    return cfg


def _relative_to(tls: TlsServerConfig, base: Path) -> TlsServerConfig:
    def join(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    return tls.model_copy(update={"cert_file": join(tls.cert_file), "key_file": join(tls.key_file),
                                  "client_ca_file": join(tls.client_ca_file)})


def ssl_context(web: WebConfig, origin: Path) -> ssl.SSLContext:
    """The server-side SSL context for the web config's TLS settings (which must be present)."""
    tls = web.tls_server_config
    assert tls is not None
    # Not ssl.create_default_context(CLIENT_AUTH): that also trusts the system's CAs for client
    # certificates, so any certificate a public CA signed would pass; only client_ca may.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated in Python, still allowed here
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
        ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    ctx.set_alpn_protocols(["http/1.1"])
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_certificate(ctx, tls, origin)
    _set_ciphers(ctx, tls, origin)
    if tls.curve_preferences:
        ctx.set_ecdh_curve(_CURVES[tls.curve_preferences[0]])
    if tls.client_auth_type != "NoClientCert":
        _load_client_ca(ctx, tls, origin)
        # With auth_excluded_paths a client without a certificate must still reach those paths,
        # so the handshake only asks and the HTTP layer requires (exporter-toolkit does so too).
        required = web.client_cert_required and not web.auth_excluded_paths
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return ctx


class _EncryptedKey(Exception):
    """Raised by the password callback: OpenSSL asked for a passphrase."""


def _no_passphrase() -> str:
    # Without a callback OpenSSL prompts on the terminal and waits for a person, so an agent
    # started by hand with an encrypted key hangs at start; the callback refuses instead.
    raise _EncryptedKey


def _load_certificate(ctx: ssl.SSLContext, tls: TlsServerConfig, origin: Path) -> None:
    where = f"{tls.cert_file or 'inline cert'} / key {tls.key_file or 'inline key'}"
    try:
        if tls.cert is None and tls.key is None:
            assert tls.cert_file is not None and tls.key_file is not None
            ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_passphrase)
            return
        # ssl only loads certificates from files: inline PEM goes through a private temporary
        # directory that is removed at once.
        with tempfile.TemporaryDirectory(prefix="kvscope-tls-") as tmp:
            cert = tls.cert_file or _private_file(Path(tmp) / "cert.pem", tls.cert or "")
            key = tls.key_file or _private_file(Path(tmp) / "key.pem", tls.key or "")
            ctx.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        raise ConfigError(f"web config {origin}: TLS key {tls.key_file or 'inline key'} is "
                          "encrypted (passphrase-protected); kvscope never prompts: give a key "
                          "without a passphrase (openssl pkey -in KEY -out PLAIN), readable by "
                          "the agent only") from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"web config {origin}: cannot load TLS certificate {where}: "
                          f"{reason}") from None


def _private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def _set_ciphers(ctx: ssl.SSLContext, tls: TlsServerConfig, origin: Path) -> None:
    wanted = [GO_CIPHERS_TLS12[n] for n in tls.cipher_suites if n in GO_CIPHERS_TLS12]
    if not wanted:
        return
    try:
        ctx.set_ciphers(":".join(wanted))
    except ssl.SSLError:
        wanted_names = ", ".join(tls.cipher_suites)
        raise ConfigError(f"web config {origin}: tls_server_config.cipher_suites: none of "
                          f"{wanted_names} is available in this OpenSSL") from None
    # OpenSSL drops names it cannot offer without complaint; say which instead.
    offered = {c["name"] for c in ctx.get_ciphers()}
    missing = [n for n in tls.cipher_suites
               if n in GO_CIPHERS_TLS12 and GO_CIPHERS_TLS12[n] not in offered]
    if missing:
        raise ConfigError(f"web config {origin}: tls_server_config.cipher_suites: "
                          f"{', '.join(missing)} not available in this OpenSSL "
                          f"({ssl.OPENSSL_VERSION}); remove them")


def _load_client_ca(ctx: ssl.SSLContext, tls: TlsServerConfig, origin: Path) -> None:
    try:
        if tls.client_ca is not None:
            ctx.load_verify_locations(cadata=tls.client_ca)
        else:
            ctx.load_verify_locations(tls.client_ca_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        source = tls.client_ca_file or "inline client_ca"
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"web config {origin}: cannot load client CA {source}: "
                          f"{reason}") from None


def subject_alt_names(peercert: object) -> set[str]:
    """DNS, IP, e-mail and URI values of a verified peer certificate (ssl's getpeercert dict),
    the SAN kinds exporter-toolkit's client_allowed_sans matches."""
    if not isinstance(peercert, dict):
        return set()
    return {str(value) for kind, value in peercert.get("subjectAltName", ())
            if kind in ("DNS", "IP Address", "email", "URI")}
