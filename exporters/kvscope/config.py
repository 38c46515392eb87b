"""Configuration: a YAML file, validated strictly, with command-line flags layered on top.

Unknown keys and bad values are refused with one line that names the key and what is allowed,
because a typo in a DaemonSet's config must fail at start, not silently disable a collector.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_PORT = 9447  # clashes with neither dcgm-exporter (9400) nor node_exporter (9100)
COLLECTOR_NAMES = ("gpu", "nvlink", "topology", "rdma", "engines")


class ConfigError(Exception):
    """A configuration mistake, phrased as one line for the operator."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cadence(Strict):
    """Seconds between polls on each tier (see ARCHITECTURE: fast, slow, static)."""

    fast: PositiveFloat = 5.0
    slow: PositiveFloat = 30.0
    static: PositiveFloat = 300.0


class CollectorConfig(Strict):
    enabled: bool = True
    cadence: Cadence = Cadence()
    timeout: PositiveFloat = Field(4.0, description="seconds one poll of one tier may take")


class GpuConfig(CollectorConfig):
    nvml_library: str | None = Field(
        None, description="path of libnvidia-ml.so.1 when it is not on the loader path")
    xid_wait: PositiveFloat = Field(
        1.0, description="seconds the event tier blocks in nvmlEventSetWait per poll")
    gpm: bool = Field(True, description="profiling ratios from NVML GPM (Hopper and newer)")
    min_gpm_window: PositiveFloat = Field(
        1.0, description="shortest GPM window trusted; 28 ms windows read zero on H200")


class NvlinkConfig(CollectorConfig):
    pass


class TopologyConfig(CollectorConfig):
    pass


class RdmaConfig(CollectorConfig):
    pass


ENGINE_NAMES = ("vllm", "sglang", "lmdeploy", "tgi", "mooncake", "lmcache", "nixl", "dynamo")
EngineName = Literal["vllm", "sglang", "lmdeploy", "tgi", "mooncake", "lmcache", "nixl", "dynamo"]
EngineRole = Literal["prefill", "decode", "both"]


class EngineTarget(Strict):
    """One engine /metrics endpoint. Engine and role are optional: the engine is detected from
    metric names, the role from SGLang's engine_type (else `both`)."""

    url: str = Field(description="full URL, e.g. http://10.0.0.5:30000/metrics")
    engine: EngineName | None = None
    role: EngineRole | None = None
    model: str | None = Field(None, description="model label; default: the engine's own")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value


class EngineAnnotations(Strict):
    """Pod annotation keys read by discovery."""

    scrape: str = "kvscope.io/scrape"  # "true" makes the pod a target, "false" excludes it
    port: str = "kvscope.io/port"  # metrics port (default: the first declared container port)
    path: str = "kvscope.io/path"  # default /metrics
    engine: str = "kvscope.io/engine"
    role: str = "kvscope.io/role"
    model: str = "kvscope.io/model"


class EnginesConfig(CollectorConfig):
    # Static targets are scraped whether or not discovery finds them.
    targets: tuple[EngineTarget, ...] = ()
    # Also scrape pods on this node marked by annotation or carrying a PD role label.
    discovery: bool = True
    discovery_interval: PositiveFloat = 30.0  # seconds between pod list refreshes
    # Seconds one pod list may take; on failure the last good list is kept.
    discovery_timeout: PositiveFloat = 1.0
    # Seconds one target's scrape may take; with discovery_timeout it must fit in `timeout`.
    target_timeout: PositiveFloat = 2.5
    max_response_bytes: PositiveInt = 16 * 1024 * 1024  # larger bodies (after gunzip) refused
    annotations: EngineAnnotations = EngineAnnotations()

    @model_validator(mode="after")
    def _timeouts_fit(self) -> EnginesConfig:
        budget = self.target_timeout + (self.discovery_timeout if self.discovery else 0.0)
        if budget >= self.timeout:
            raise ValueError(
                f"target_timeout ({self.target_timeout}) + discovery_timeout "
                f"({self.discovery_timeout}) must be below timeout ({self.timeout}), so that one "
                "slow engine is reported as such instead of failing the whole poll")
        return self


class CollectorsConfig(Strict):
    gpu: GpuConfig = GpuConfig()
    nvlink: NvlinkConfig = NvlinkConfig()
    topology: TopologyConfig = TopologyConfig()
    rdma: RdmaConfig = RdmaConfig()
    engines: EnginesConfig = EnginesConfig()


class WebSettings(Strict):
    listen_address: str = f":{DEFAULT_PORT}"
    config_file: Path | None = None

    @field_validator("listen_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be [host]:port, e.g. ':9447' or '127.0.0.1:9447'")
        del host
        return value

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen_address.rpartition(":")
        return (host.strip("[]") or "0.0.0.0"), int(port)


class Paths(Strict):
    sysfs: Path = Path("/sys")
    procfs: Path = Path("/proc")


class KubernetesSettings(Strict):
    """Where the Kubernetes API is; by default the in-cluster service and service account."""

    api_url: str | None = Field(None, description="e.g. https://10.0.0.1:443; default in-cluster")
    token_file: Path | None = None
    ca_file: Path | None = None
    timeout: PositiveFloat = 5.0


class PdSettings(Strict):
    """How pods declare their prefill/decode role and PD group (first matching key wins)."""

    role_labels: tuple[str, ...] = ("kvscope.io/pd-role", "pd-role")
    group_labels: tuple[str, ...] = ("kvscope.io/pd-group", "app.kubernetes.io/instance")
    prefill_values: tuple[str, ...] = ("prefill", "p")
    decode_values: tuple[str, ...] = ("decode", "d")


def _default_node_name() -> str:
    # dcgm-exporter's rule: NODE_NAME (from the downward API) if set, else the host name.
    return os.environ.get("NODE_NAME") or socket.gethostname()


class Config(Strict):
    web: WebSettings = WebSettings()
    paths: Paths = Paths()
    kubernetes: KubernetesSettings = KubernetesSettings()
    pd: PdSettings = PdSettings()
    node_name: str = Field(default_factory=_default_node_name)
    hostname_label: str = Field(
        "Hostname", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
        description="label key for the node name: 'Hostname' (dcgm-exporter <= 4.8.2) or "
                    "'hostname' (4.8.3 and later)")
    driver_version_label: bool = Field(
        True, description="add DCGM_FI_DRIVER_VERSION to GPU series as dcgm-exporter's "
                          "default-counters.csv does")
    staleness_factor: PositiveFloat = Field(
        3.0, description="a tier's snapshot older than this many intervals is dropped")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    scenario: str | None = Field(None, description="serve the simulated node (kvscope.sim)")
    collectors: CollectorsConfig = CollectorsConfig()


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def describe(err: ValidationError) -> str:
    """The first problem of a validation error as one operator-facing line."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc)) or "none"
        return f"unknown key '{_dotted(loc)}' (allowed here: {allowed})"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"'{_dotted(loc)}': {first['msg']}{shown}{more}"


def read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{where}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` inside nested dicts, creating levels as needed (flags over the file)."""
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{dotted}': '{key}' must be a mapping in the config file")
        node = child
    node[leaf] = value


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    data = read_file(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        origin = f"config file {path}" if path is not None else "config"
        raise ConfigError(f"{origin}: {describe(exc)}") from None
