"""Configuration: a YAML file, validated strictly, with command-line flags layered on top.

Unknown keys and bad values are refused with one line that names the key and what is allowed,
because a typo in a DaemonSet's config must fail at start, not silently disable a collector.
"""

from __future__ import annotations

import os
import re
import reprlib
import socket
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from kvscope.collectors.dcgm_compat import DEFAULT_COMPAT, Compat
from kvscope.collectors.registry import CONFIGURABLE, REGISTRY

DEFAULT_PORT = 9447  # clashes with neither dcgm-exporter (9400) nor node_exporter (9100)
_DEFAULT_ENABLED = {r.name: r.default_enabled for r in REGISTRY}


WEEK_SECONDS = 7 * 24 * 3600
# Every cadence, timeout and wait: YAML reads `.inf` and `.nan` as floats, and an infinite
# timeout is a hang; beyond a week a value is a typo, not a plan.
Seconds = Annotated[float, Field(gt=0, le=WEEK_SECONDS, allow_inf_nan=False)]
# gRPC keeps message limits in a C int: a larger value fails inside the client at run time.
GRPC_MAX_BYTES = 2**31 - 1


def parse_port(text: str) -> int | None:
    """A TCP port written in ASCII digits, or None. str.isdigit() and int() also take other
    scripts' digits ("\u0669\u0664\u0664\u0667" is 9447), which no other tool would read."""
    if not 1 <= len(text) <= 5 or not text.isascii() or not text.isdigit():
        return None
    port = int(text)
    return port if port < 65536 else None


class ConfigError(Exception):
    """A configuration mistake, phrased as one line for the operator."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cadence(Strict):
    """Seconds between polls on each tier (see ARCHITECTURE: fast, slow, static)."""

    fast: Seconds = 5.0
    slow: Seconds = 30.0
    static: Seconds = 300.0


class CollectorConfig(Strict):
    enabled: bool = True
    cadence: Cadence = Cadence()
    timeout: Seconds = Field(4.0, description="seconds one poll of one tier may take")


class GpuConfig(CollectorConfig):
    enabled: bool = _DEFAULT_ENABLED["gpu"]  # the registry's default
    nvml_library: str | None = Field(
        None, description="path of libnvidia-ml.so.1 when it is not on the loader path")
    xid_wait: Seconds = Field(
        1.0, description="seconds the event tier blocks in nvmlEventSetWait per poll")
    gpm: bool = Field(True, description="profiling ratios from NVML GPM (Hopper and newer)")
    min_gpm_window: Seconds = Field(
        1.0, description="shortest GPM window trusted; 28 ms windows read zero on H200")


class NvlinkConfig(CollectorConfig):
    enabled: bool = _DEFAULT_ENABLED["nvlink"]  # the registry's default
    per_link: bool = Field(
        default=False,
        description="one series per link for state, speed, identity and error counters (18 links "
                    "x 8 GPUs: ~860 series on an HGX node); by default each GPU gets totals "
                    "(links, links active, errors by kind). kvscope doctor always reads per link")
    per_link_bytes: bool = Field(
        default=False,
        description="per-link TX/RX byte counters (fields 138/139 per link: ~17 ms per GPU on "
                    "H200, 18 links x 8 GPUs of series); the per-GPU totals are always exported")
    data_error_counters: bool = Field(
        default=False,
        description="also read CRC-data and ECC-data counts with "
                    "nvmlDeviceGetNvLinkErrorCounter on the slow tier (~42 ms per GPU)")


class TopologyConfig(CollectorConfig):
    enabled: bool = _DEFAULT_ENABLED["topology"]  # the registry's default
    pod_resources_socket: Path = Field(
        default=Path("/var/lib/kubelet/pod-resources/kubelet.sock"),
        description="kubelet pod-resources v1 socket; absent socket = pod attribution off")
    pod_resources_max_message_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, le=GRPC_MAX_BYTES,
        description="largest List reply accepted (gRPC's default of 4 MiB fails on busy nodes)")
    gpu_resource_names: tuple[str, ...] = Field(
        default=("nvidia.com/gpu",),
        description="extended resources that are whole GPUs (nvidia.com/mig-* are skipped)")
    kubernetes_api: bool = Field(
        default=True,
        description="read pod roles, visibility and node placement from the API server")
    switch_label: str = "topology.kubernetes.io/switch"
    switch_type_label: str = "topology.kubernetes.io/switch-type"
    volcano_hypernodes: bool = Field(
        default=True,
        description="take the node's switch chain from Volcano HyperNodes where they exist")


class QpProfile(Strict):
    """What a transfer engine asks of ibv_create_qp: checked against each device's limits."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    send_sge: PositiveInt
    recv_sge: PositiveInt
    send_wr: PositiveInt
    recv_wr: PositiveInt
    inline_data: NonNegativeInt = 0
    clamps_to_device: bool = Field(
        default=False,
        description="the engine lowers SGE and WR counts to the device's max_sge and max_qp_wr "
                    "before creating QPs (Mooncake does)")
    description: str = ""


# Shipped profiles; the numbers are each engine's defaults (see README, "RDMA").
DEFAULT_QP_PROFILES: tuple[QpProfile, ...] = (
    # DLSlime <= 0.0.1.post7 (rdma_context.cpp before commit 835ad32): 4 send and 4 receive SGEs;
    # the LMDeploy PD incident on eRDMA. Its WR depth is not the issue; 256 is accepted anywhere.
    QpProfile(name="dlslime-0.0.1", send_sge=4, recv_sge=4, send_wr=256, recv_wr=256,
              description="DLSlime <= 0.0.1.post7 (LMDeploy PD): max_send_sge = max_recv_sge = 4"),
    # Mooncake transfer engine GlobalConfig defaults: max_sge 4, max_wr 256, max_inline 64; it
    # clamps SGE and WR to the device (updateGlobalConfig), so only the inline size can fail.
    QpProfile(name="mooncake", send_sge=4, recv_sge=4, send_wr=256, recv_wr=256, inline_data=64,
              clamps_to_device=True,
              description="Mooncake TE defaults (MC_MAX_SGE 4, MC_MAX_WR 256, inline 64), "
                          "clamped to the device"),
    # UCX RC transport defaults, which NIXL's UCX backend inherits: UCX_IB_TX_MIN_SGE 5,
    # UCX_IB_TX_MIN_INLINE 64, UCX_RC_TX_QUEUE_LEN 256, UCX_RC_RX_QUEUE_LEN 4095, one receive SGE.
    QpProfile(name="ucx-rc", send_sge=5, recv_sge=1, send_wr=256, recv_wr=4095, inline_data=64,
              description="UCX RC / NIXL UCX backend defaults (TX sge 5, inline 64, "
                          "TX wr 256, RX wr 4095)"),
)


class DeviceFilter(Strict):
    """RDMA devices to read, by name: Python regexes matched against the whole name (anchored,
    like Prometheus label matchers). A device is read when it matches `include` (unset: every
    device) and does not match `exclude`; the filter applies before any file of it is opened."""

    include: str | None = Field(None, description="regex; only matching devices are read")
    exclude: str | None = Field(None, description="regex; matching devices are never read")

    @field_validator("include", "exclude")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a valid regular expression ({exc})") from None
        return value

    def wants(self, device: str) -> bool:
        if self.include is not None and re.fullmatch(self.include, device) is None:
            return False
        return self.exclude is None or re.fullmatch(self.exclude, device) is None


class RdmaConfig(CollectorConfig):
    enabled: bool = _DEFAULT_ENABLED["rdma"]  # the registry's default
    devices: DeviceFilter = DeviceFilter()
    eadm_path: str | None = Field(
        default="eadm",
        description="Alibaba's eadm tool (name on PATH or a path); absent = source off")
    eadm_timeout: Seconds = Field(
        default=2.0, description="seconds one eadm call may take before it is killed")
    rdma_tool_path: str | None = Field(
        default="rdma",
        description="iproute2's rdma tool, for QPs in use (`rdma -j resource show`)")
    rdma_tool_timeout: Seconds = 2.0
    verbs: bool = Field(default=True, description="read device limits with pyverbs (if installed)")
    qp_profiles: tuple[QpProfile, ...] = DEFAULT_QP_PROFILES
    probe: bool = Field(
        default=False,
        description="create and destroy one RC QP per profile and device on the slow tier")
    kv_transfer_devices: tuple[str, ...] = Field(
        default=(), description="devices that carry KV transfer; empty = every RDMA device")
    log_follow: bool = Field(default=False, description="count QP failure lines in engine logs")
    log_paths: tuple[str, ...] = Field(
        default=("/var/log/pods/*/*/*.log",), description="glob patterns of log files to follow")
    log_max_bytes_per_poll: PositiveInt = Field(
        default=4 * 1024 * 1024, le=2**30,
        description="read at most this much log text per slow poll (at most 1 GiB)")
    sysfs_timeout: Seconds = Field(
        default=2.0, description="seconds one device's sysfs reads may take in a poll; a device "
        "past it is reported (sysfs_timeout) and the other devices are still served")

    @model_validator(mode="after")
    def _sysfs_timeout_fits(self) -> RdmaConfig:
        if self.sysfs_timeout >= self.timeout:
            raise ValueError(
                f"sysfs_timeout ({self.sysfs_timeout}) must be below timeout ({self.timeout}), "
                "so that one hung device is reported as such instead of failing the whole poll")
        return self


ENGINE_NAMES = ("vllm", "sglang", "lmdeploy", "tgi", "mooncake", "lmcache", "nixl", "dynamo")
EngineName = Literal["vllm", "sglang", "lmdeploy", "tgi", "mooncake", "lmcache", "nixl", "dynamo"]
EngineRole = Literal["prefill", "decode", "both"]


class EngineTarget(Strict):
    """One engine /metrics endpoint. Engine and role are optional: the engine is detected from
    metric names, the role from SGLang's engine_type (else `both`)."""

    url: str = Field(description="full URL, e.g. http://127.0.0.1:30000/metrics")
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
    enabled: bool = _DEFAULT_ENABLED["engines"]  # the registry's default
    # Static targets are scraped whether or not discovery finds them.
    targets: tuple[EngineTarget, ...] = ()
    # Also scrape pods on this node marked by annotation or carrying a PD role label.
    discovery: bool = True
    discovery_interval: Seconds = 30.0  # seconds between pod list refreshes
    # Seconds one pod list may take; on failure the last good list is kept.
    discovery_timeout: Seconds = 1.0
    # Seconds one target's scrape may take; with discovery_timeout it must fit in `timeout`.
    target_timeout: Seconds = 2.5
    # Larger bodies (after gunzip) are refused while they are read: reason too_large.
    max_response_bytes: PositiveInt = 4 * 1024 * 1024
    # Normalized series one target may export (histogram buckets count); past it new series
    # are dropped and counted, so a target whose labels churn cannot grow the agent.
    max_series_per_target: PositiveInt = 10_000
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
    """One section per configurable collector of the registry (collectors/registry.py, the one
    place that lists collectors and says which are on by default)."""

    gpu: GpuConfig = GpuConfig()
    nvlink: NvlinkConfig = NvlinkConfig()
    topology: TopologyConfig = TopologyConfig()
    rdma: RdmaConfig = RdmaConfig()
    engines: EnginesConfig = EnginesConfig()


# Strict sections already refuse unknown names, listing the allowed ones; this keeps those
# sections and the registry from drifting apart.
if set(CollectorsConfig.model_fields) != set(CONFIGURABLE):  # pragma: no cover - a coding slip
    raise RuntimeError("config.CollectorsConfig and collectors/registry.py list different "
                       "collectors")


class WebSettings(Strict):
    listen_address: str = f":{DEFAULT_PORT}"
    config_file: Path | None = None
    enable_openmetrics: bool = Field(
        False, description="answer a scrape that asks for OpenMetrics with OpenMetrics; by "
                           "default every scrape gets the Prometheus text format, as from "
                           "dcgm-exporter and node_exporter")
    probe_listen_address: str | None = Field(
        None, description="[host]:port of a plain-HTTP listener serving only /healthz and "
                          "/readyz, without basic auth or client certificates, for the "
                          "kubelet's probes; off (null) by default")

    @field_validator("listen_address", "probe_listen_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _, sep, port = value.rpartition(":")
        if not sep or parse_port(port) is None:
            raise ValueError(f"must be [host]:port, e.g. ':9447' or '127.0.0.1:9447', the port "
                             f"in ASCII digits 0-65535 (got {clip(repr(value))})")
        return value

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen_address.rpartition(":")
        return (host.strip("[]") or "0.0.0.0"), int(port)


class Paths(Strict):
    sysfs: Path = Path("/sys")
    procfs: Path = Path("/proc")


class KubernetesSettings(Strict):
    """Where the Kubernetes API is; by default the in-cluster service and service account."""

    api_url: str | None = Field(None, description="e.g. https://127.0.0.1:6443; default in-cluster")
    token_file: Path | None = None
    ca_file: Path | None = None
    timeout: Seconds = Field(
        3.0, description="seconds one API read may take; below collectors.topology.timeout, so "
                         "a slow API is reported as such instead of failing the whole poll")
    max_response_bytes: PositiveInt = Field(
        64 * 1024 * 1024, description="largest API reply read (a pod list, the node object); "
                                      "a larger one is refused while it is read")


class PdSettings(Strict):
    """How pods declare their prefill/decode role and PD group (first matching key wins)."""

    role_labels: tuple[str, ...] = ("kvscope.io/pd-role", "pd-role")
    group_labels: tuple[str, ...] = ("kvscope.io/pd-group", "app.kubernetes.io/instance")
    prefill_values: tuple[str, ...] = ("prefill", "p")
    decode_values: tuple[str, ...] = ("decode", "d")


class DcgmSettings(Strict):
    """Which dcgm-exporter release the DCGM_* families imitate (kvscope.collectors.dcgm_compat)."""

    compat: Compat = Field(
        DEFAULT_COMPAT,
        description="'4.8' (dcgm-exporter 4.8.0-4.8.2, label Hostname), '4.8.3' (4.8.3-4.8.4, "
                    "label hostname), '4.9' or '4.10' (DCGM 4.7 names and base units)")

    @field_validator("compat", mode="before")
    @classmethod
    def _unquoted_number(cls, value: Any) -> Any:
        # YAML reads an unquoted 4.9 as a number, and 4.10 as the number 4.1.
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        text = str(value)
        if text == "4.1":
            raise ValueError("got the number 4.1: YAML reads an unquoted 4.10 so; write "
                             "compat: \"4.10\"")
        return text


def _default_node_name() -> str:
    # dcgm-exporter's rule: NODE_NAME (from the downward API) if set, else the host name.
    return os.environ.get("NODE_NAME") or socket.gethostname()


class Config(Strict):
    web: WebSettings = WebSettings()
    paths: Paths = Paths()
    kubernetes: KubernetesSettings = KubernetesSettings()
    pd: PdSettings = PdSettings()
    node_name: str = Field(default_factory=_default_node_name)
    dcgm: DcgmSettings = DcgmSettings()
    hostname_label: str | None = Field(
        None, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
        description="label key for the node name; unset: the key of dcgm.compat's release on "
                    "DCGM_* series ('Hostname' for 4.8, 'hostname' from 4.8.3) and 'Hostname' "
                    "on kvscope_* series; set: this key on both")
    driver_version_label: bool = Field(
        True, description="add the driver-version label (DCGM_FI_DRIVER_VERSION; "
                          "DCGM_FI_SYSTEM_DRIVER_VERSION on DCGM_* series from dcgm.compat 4.9) "
                          "to GPU series as dcgm-exporter's default-counters.csv does")
    staleness_factor: float = Field(
        3.0, gt=0, le=1000, allow_inf_nan=False,
        description="a tier's snapshot older than this many intervals is dropped")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    scenario: str | None = Field(None, description="serve the simulated node (kvscope.sim)")
    collectors: CollectorsConfig = CollectorsConfig()

    @model_validator(mode="after")
    def _kube_timeout_fits(self) -> Config:
        topology = self.collectors.topology
        if topology.enabled and topology.kubernetes_api and \
                self.kubernetes.timeout >= topology.timeout:
            raise ValueError(
                f"kubernetes.timeout ({self.kubernetes.timeout:g}) must be below "
                f"collectors.topology.timeout ({topology.timeout:g}), so that a slow API is "
                "reported as such instead of failing the whole topology poll")
        return self


# Bounds on what a config file may hold. Real files are a few KiB with a handful of levels;
# the bounds are far above that and far below what could exhaust the agent's memory or stack.
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32  # sequences and mappings inside each other, the top level's included
MAX_VALUES = 100_000  # scalars, sequences and mappings, each alias counted once per use
MAX_NUMBER_CHARS = 100  # int("9" * 5000) raises; sexagesimal "1:1:..." is quadratic
SHOWN_CHARS = 80  # of a bad value or key quoted in an error line


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was cut, for error lines."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _dotted(loc: tuple[int | str, ...]) -> str:
    # A key is as much the operator's input as a value: a 1 MiB key is clipped too.
    return ".".join(clip(str(part)) for part in loc)


def _unwrap(annotation: Any, part: int | str | None = None) -> Any:
    """The type one step inside `annotation`: X of `X | None`; with a list index or dict key
    as `part`, the element or value type of tuple[X, ...], list[X], dict[str, X]."""
    origin = get_origin(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if origin in (Union, UnionType) and len(args) == 1:
        return _unwrap(args[0], part)
    if part is not None and origin in (tuple, list, set, frozenset) and args:
        return args[0]
    if part is not None and origin is dict and len(args) == 2:
        return args[1]
    return annotation


def _model_at(loc: tuple[int | str, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The model whose keys are allowed at `loc` (the path of the offending key's parent)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            stepped = _unwrap(current, part)
            if stepped is current:
                return None
            current = stepped
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _allowed_keys(loc: tuple[int | str, ...], root: type[BaseModel]) -> list[str]:
    model = _model_at(loc[:-1], root)
    return sorted(model.model_fields) if model is not None else []


def describe(err: ValidationError, root: type[BaseModel] | None = None) -> str:
    """The first problem of a validation error as one operator-facing line; `root` is the model
    that was validated (the main Config by default), so unknown keys list their siblings."""
    # A misspelt key also makes the right one "missing": name the misspelling first.
    first = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = tuple(first["loc"])
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc, root or Config)
        listed = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"unknown key '{_dotted(loc)}'{listed}{more}"
    where = f"'{_dotted(loc)}'" if loc else "top level"
    if first["type"] == "value_error":
        # Our own validators: the message already names the value (the clip bounds it).
        reason = str(first.get("ctx", {}).get("error", first["msg"]))
        return f"{where}: {clip(reason, 4 * SHOWN_CHARS)}{more}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {_shown(value)})"
    return f"{where}: {first['msg']}{shown}{more}"


def _shown(value: Any) -> str:
    """repr(value) in at most about SHOWN_CHARS characters, built without writing out a huge
    value in full: 9**9 strings shared through YAML aliases take gigabytes as one repr."""
    if isinstance(value, str):
        if len(value) <= SHOWN_CHARS:
            return repr(value)
        return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"
    if isinstance(value, list | tuple | set | frozenset | dict):
        return clip(_SHORT_REPR.repr(value))
    return clip(repr(value))


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxtuple = 3, 4, 4
_SHORT_REPR.maxdict, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 4, 30, 30


class _Refused(yaml.MarkedYAMLError):
    """Well-formed YAML that a config file may not contain (too deep, too big, duplicate keys)."""


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader with the bounds above, checked while the document is composed: depth
    before the composer's recursion can exhaust the stack, the number of values as each one
    (or each alias) is met, before any Python object exists. Aliases stay allowed
    (exporter-toolkit's Go parser reads them too), but a billion-laughs document is refused
    where its expansion crosses the bound, after linear work, and so is a flat list of a
    million values, after 100,000 of them."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0  # in the document so far, each alias counted as what it names
        self._sizes: dict[int, int] = {}  # id(node) -> values in it, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark  # the stubs' Mark types do not agree with each other
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            # An anchored node still being composed contains its own alias.
            if node is not None and id(node) not in self._sizes:
                raise _Refused(None, None, f"alias *{clip(str(event.anchor))} is inside the "
                               "node it names (a recursive structure)", mark)
            self._count(self._sizes[id(node)] if node is not None else 0, mark)
            return node
        self._count(1, mark)
        nests = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        self._depth += nests
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= nests
        if node is not None:
            self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in _children(node))
        return node

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            raise _Refused(None, None, f"more than {MAX_VALUES} values once YAML aliases are "
                           "expanded; config files hold far fewer", mark)

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:  # stubs: anchor is a str
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            # Only scalar keys can clash in a config file; `<<` merge keys may repeat.
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault((key.tag, key.value), key)
            if first is not key:
                raise _Refused(None, None, f"duplicate key '{clip(key.value)}' (first at line "
                               f"{first.start_mark.line + 1})", key.start_mark)
        return node

    def construct_scalar(self, node: yaml.ScalarNode | yaml.MappingNode) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a "\ud800" escape: a lone surrogate
                raise _Refused(None, None, f"the escape for U+{ord(value[exc.start]):04X} "
                               "is not a character (a lone surrogate)", node.start_mark) from None
        return value

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        _short_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        _short_number(node)
        return super().construct_yaml_float(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _BoundedLoader.construct_yaml_float)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _short_number(node: yaml.ScalarNode) -> None:
    if len(node.value) > MAX_NUMBER_CHARS:
        raise _Refused(None, None, f"a number of {len(node.value)} characters (at most "
                       f"{MAX_NUMBER_CHARS})", node.start_mark)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Line, column and reason of a YAML error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if context and context_mark is not None:
        context += f" (line {context_mark.line + 1}, column {context_mark.column + 1})"
    reason = f"{context}: {problem}" if context else problem
    kind = "" if isinstance(exc, _Refused) else "not valid YAML: "
    return f"{where}: {kind}{clip(reason, 4 * SHOWN_CHARS)}"


def _read_bounded(path: Path, what: str) -> str:
    try:
        with path.open("rb") as stream:
            # Read one byte more than allowed, never the whole file: /dev/zero has no end.
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {path}: larger than {MAX_FILE_BYTES // 2**20} MiB; is it the "
                          "right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {exc.start} is "
                          f"0x{raw[exc.start]:02x}); save it as UTF-8") from None


def read_file(path: Path, what: str = "config file") -> dict[str, Any]:
    """The YAML mapping in `path`, within the bounds above; any problem is one ConfigError."""
    text = _read_bounded(path, what)
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: no Python objects
    except yaml.reader.ReaderError as exc:  # no mark: say where from the character's offset
        line = text.count("\n", 0, exc.position) + 1
        char = f" (character #x{exc.character:04x})" if isinstance(exc.character, int) else ""
        raise ConfigError(f"{what} {path} line {line}: not valid YAML: {exc.reason}"
                          f"{char}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}{_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: top level must be a mapping")
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
