"""Engine targets: the static list in the config, plus the pods of this node that ask for it.

A pod asks with the annotation `kvscope.io/scrape: "true"` or by carrying a PD role label
(`pd.role_labels`); `"false"` opts out even with a role label. What a pod can make the agent
fetch is narrow on purpose, since anyone who may create a pod may annotate it: only the pod's own
`status.podIP`, only for pods whose `spec.nodeName` is this node, on the annotated port (or the
container port named `metrics`, else `http`, else the first) and a plain path. Anything else is
refused with a reason, logged once and counted (`kvscope_engine_discovery_refused_pods`):

* `other_node`: the pod runs elsewhere (an API that ignored the field selector);
* `pod_ip`: not an IP a pod can have (link-local such as a cloud metadata address, multicast,
  unspecified, or not an IP at all);
* `port`: the annotation is not a port number;
* `path`: the annotated path is more than a path (a query, `..`, `//`, odd characters).

Redirects are never followed either (sources/http_scrape.py), so a vetted target stays the
only URL fetched.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from kvscope.analysis.pd_roles import label_role, role_of_value
from kvscope.config import ENGINE_NAMES, Config, EnginesConfig, PdSettings, parse_port
from kvscope.parsers.kube import Pod
from kvscope.sources.http_scrape import redact
from kvscope.sources.kube import KubeClient, KubeError

log = logging.getLogger("kvscope.collectors.engines")

REFUSALS = ("other_node", "pod_ip", "port", "path")
_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


@dataclass(frozen=True)
class Target:
    url: str
    engine: str | None = None  # configured or annotated; otherwise detected per scrape
    role: str | None = None
    model: str | None = None
    pod: str = ""
    namespace: str = ""
    source: str = "static"  # static | discovered

    @property
    def instance(self) -> str:
        return _instance(self.url)

    @property
    def safe_url(self) -> str:
        """The URL for log lines: credentials in it replaced."""
        return redact(self.url)


@functools.lru_cache(maxsize=4096)
def _instance(url: str) -> str:
    """host:port of a target URL, plus the path when it is not /metrics (never userinfo or
    query, so no credential reaches a label)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # Two engines behind one port on different paths must not share an identity.
    path = parts.path if parts.path not in ("", "/", "/metrics") else ""
    return f"{host}:{port}{path}"


def static_targets(cfg: EnginesConfig) -> list[Target]:
    return [Target(t.url, t.engine, t.role, t.model) for t in cfg.targets]


# ---- pods -> targets (pure) --------------------------------------------------------------

def _usable_pod_ip(raw: str) -> str | None:
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return None
    return str(ip)


def _metrics_path(raw: str | None) -> str | None:
    """The annotated path, or None when it is more than a plain path."""
    path = raw or "/metrics"
    path = path if path.startswith("/") else "/" + path
    if not _PATH.fullmatch(path) or ".." in path or path.startswith("//"):
        return None
    return path


def _port(pod: Pod, cfg: EnginesConfig) -> int | None:
    raw = pod.annotations.get(cfg.annotations.port)
    if raw is not None:
        port = parse_port(raw)  # ASCII digits only: int('²') raises, int('٩٤') is 94
    else:  # no annotation: the port named metrics, else http, else the first declared
        ports = pod.ports()
        named = {p.name: p.port for p in reversed(ports)}
        port = named.get("metrics") or named.get("http") or (ports[0].port if ports else None)
    return port if port is not None and 0 < port < 65536 else None


def _endpoint(pod: Pod, cfg: EnginesConfig, node_name: str) -> tuple[str, int, str] | str:
    """(pod IP, port, path) of a pod's metrics, or the reason it is refused."""
    if pod.node_name != node_name:
        return "other_node"
    ip = _usable_pod_ip(pod.pod_ip)
    if ip is None:
        return "pod_ip"
    port = _port(pod, cfg)
    if port is None:
        return "port"
    path = _metrics_path(pod.annotations.get(cfg.annotations.path))
    return "path" if path is None else (ip, port, path)


def pod_target(pod: Pod, cfg: EnginesConfig, pd: PdSettings,
               node_name: str) -> Target | str | None:
    """The target a pod asks for; a refusal reason; or None when it does not ask."""
    keys = cfg.annotations
    scrape_flag = pod.annotations.get(keys.scrape, "").lower()
    pd_role = label_role(pod.labels, pd)
    if scrape_flag == "false" or (scrape_flag != "true" and pd_role is None):
        return None
    if pod.phase != "Running" or not pod.pod_ip:
        return None
    where = _endpoint(pod, cfg, node_name)
    if isinstance(where, str):
        return where
    ip, port, path = where
    host = f"[{ip}]" if ":" in ip else ip
    engine = pod.annotations.get(keys.engine)
    return Target(url=f"http://{host}:{port}{path}",
                  engine=engine if engine in ENGINE_NAMES else None,
                  role=role_of_value(pod.annotations.get(keys.role), pd) or pd_role,
                  model=pod.annotations.get(keys.model) or None,
                  pod=pod.name, namespace=pod.namespace, source="discovered")


@dataclass(frozen=True)
class Discovered:
    targets: list[Target]
    refused: Counter[str]  # reason -> pods that asked to be scraped and were refused
    refused_pods: tuple[tuple[str, str], ...] = ()  # (namespace/name, reason)


def targets_from_pods(pods: Sequence[Pod], cfg: EnginesConfig, pd: PdSettings,
                      node_name: str) -> Discovered:
    """Running pods of this node that ask to be scraped, as targets; the refused ones counted."""
    targets: list[Target] = []
    refused: Counter[str] = Counter()
    named: list[tuple[str, str]] = []
    for pod in pods:
        got = pod_target(pod, cfg, pd, node_name)
        if isinstance(got, Target):
            targets.append(got)
        elif got is not None:
            refused[got] += 1
            named.append((f"{pod.namespace}/{pod.name}", got))
    return Discovered(targets, refused, tuple(named))


# ---- the pod list, refreshed -------------------------------------------------------------

@dataclass
class PodDiscovery:
    """This node's pod list from the Kubernetes API, every `discovery_interval`; on failure the
    last good list is kept and `up` goes False."""

    targets: list[Target] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    up: bool | None = None  # None: no API to ask
    _kube: KubeClient | None = None
    _checked: bool = False
    _at: float | None = None
    _said: set[tuple[str, str]] = field(default_factory=set)

    def _client(self, config: Config) -> KubeClient | None:
        if not self._checked:
            self._checked = True
            k = config.kubernetes
            self._kube = KubeClient.from_settings(
                k.api_url, config.node_name, token_file=k.token_file, ca_file=k.ca_file,
                timeout=k.timeout, max_bytes=k.max_response_bytes)
            if self._kube is None:
                log.info("engines: no Kubernetes API configured or in-cluster; scraping the %d "
                         "static target(s) only", len(config.collectors.engines.targets))
        return self._kube

    async def refresh(self, config: Config) -> None:
        cfg = config.collectors.engines
        kube = self._client(config)
        now = time.monotonic()
        if kube is None or (self._at is not None and now - self._at < cfg.discovery_interval):
            return
        self._at = now
        try:
            pods = await asyncio.wait_for(kube.node_pods(), cfg.discovery_timeout)
        except (KubeError, TimeoutError) as exc:
            if self.up is not False:
                log.warning("engines: pod discovery failed (%s); keeping %d known target(s)",
                            exc or "timeout", len(self.targets))
            self.up = False
            return
        if self.up is False:
            log.info("engines: pod discovery works again")
        self.up = True
        self._take(targets_from_pods(pods, cfg, config.pd, config.node_name))

    def _take(self, found: Discovered) -> None:
        self.targets, self.refused = found.targets, found.refused
        for pod, reason in found.refused_pods:
            if (pod, reason) not in self._said:
                log.warning("engines: not scraping pod %s (%s): a discovered target must be the "
                            "pod's own IP on this node, on a valid port and plain path",
                            pod, reason)
        self._said = set(found.refused_pods)

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.close()
