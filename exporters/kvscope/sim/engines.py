"""Fake inference engines: real HTTP servers on 127.0.0.1 serving each engine's exposition.

One renderer per engine and metric-name generation in the reference (vLLM V1, 0.8 and V0;
SGLang current PD builds, gauge-era PD builds and the older docs shape; LMDeploy; TGI; the
Mooncake master and Transfer Engine; LMCache; NIXL telemetry; Dynamo). Names, label sets,
types and bucket bounds follow the engines; the values come from a workload model (`Load`) and
grow with `node.elapsed()`: counters are integrals of rates over an uptime that starts one hour
before the node, histograms spread their counts over log-normal latencies, so every scrape is
realistic and a counter never goes back.

The default node runs one PD group of SGLang (prefill pod on GPUs 0-3, decode pod on GPUs 4-7,
discovered through their pod annotations) plus a vLLM instance with the LMCache connector. The
vLLM instance is not a pod: it stands for an engine run outside Kubernetes on the node (a
systemd unit, a bare container) and reaches kvscope as a static `engines.targets` entry, so the
demo exercises both ways of finding an engine.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from prometheus_client.utils import floatToGoString

from kvscope.sim import scenarios
from kvscope.sim.node import SimNode
from kvscope.sim.scenarios import Scenario, SimOptions

UPTIME = 3600.0  # seconds each engine has been serving when the node model starts


@dataclass(frozen=True)
class Load:
    """Workload of one engine. Levels are gauges, rates are per second."""

    kv_usage: float = 0.55
    running: float = 24.0
    waiting: float = 2.0
    req_rate: float = 6.0  # finished requests per second
    abort_ratio: float = 0.01
    prompt_len: float = 2048.0
    gen_len: float = 320.0
    hit_ratio: float = 0.6  # prompt tokens served from the prefix cache
    # median seconds; with the histograms' sigma 0.6 the healthy p99 is ~0.8 s, under
    # EngineTTFTHigh's 1 s
    ttft: float = 0.2
    itl: float = 0.025
    preempt_rate: float = 0.0
    xfer_latency: float = 0.012  # seconds per KV transfer (median)
    xfer_gbps: float = 8.7  # GB/s as SGLang prints it (GiB/s; its gauge-era builds)
    xfer_mb: float = 104.0  # MB per transfer (SGLang prints MiB; the others get x 1e6 bytes)
    bootstrap_q: float = 1.0
    inflight_q: float = 2.0
    prealloc_q: float = 1.0
    transfer_q: float = 1.0
    xfer_fail_rate: float = 0.0


@dataclass
class SimEngine:
    name: str
    variant: str  # key of RENDERERS
    role: str = "both"
    model: str = "qwen2.5-72b"
    pod: str | None = None  # SimPod that runs it (its port annotation is set on start)
    gpus: tuple[int, ...] = ()
    tp: int = 1
    features: frozenset[str] = frozenset()  # vllm: "lmcache", "nixl"
    load: Load = field(default_factory=Load)
    fault: dict[str, float] = field(default_factory=dict)  # Load fields after fault_at
    fault_at: float | None = None
    down_at: float | None = None  # elapsed seconds after which the server stops listening
    up_at: float | None = None  # elapsed seconds after which it listens again (None: never)
    url: str = ""

    def down(self, t: float) -> bool:
        """Whether the process is gone at elapsed time t."""
        return self.down_at is not None and t >= self.down_at and \
            (self.up_at is None or t < self.up_at)

    def phases(self, t: float) -> list[tuple[Load, float]]:
        """(load, seconds) since the engine started; t is the node's elapsed time."""
        if self.fault_at is None or t < self.fault_at or not self.fault:
            return [(self.load, UPTIME + t)]
        faulted = replace(self.load, **self.fault)
        return [(self.load, UPTIME + self.fault_at), (faulted, t - self.fault_at)]

    def now(self, t: float) -> Load:
        return self.phases(t)[-1][0]

    def total(self, t: float, rate: Callable[[Load], float]) -> float:
        return sum(rate(load) * seconds for load, seconds in self.phases(t))


# ---- exposition writer -------------------------------------------------------------------

def _fmt(value: float) -> str:
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _cdf(x: float, median: float, sigma: float) -> float:
    if x <= 0:
        return 0.0
    return 0.5 * (1 + math.erf(math.log(x / median) / (sigma * math.sqrt(2))))


class Expo:
    """Builds exposition text the way prometheus_client (or the engine's library) prints it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def head(self, name: str, kind: str, text: str) -> Expo:
        self.lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        return self

    def put(self, name: str, labels: Mapping[str, str], value: float) -> Expo:
        self.lines.append(f"{name}{_labels(labels)} {_fmt(value)}")
        return self

    def gauge(self, name: str, text: str, rows: Iterable[tuple[Mapping[str, str], float]]) -> Expo:
        self.head(name, "gauge", text)
        for labels, value in rows:
            self.put(name, labels, value)
        return self

    def counter(self, name: str, text: str, rows: Iterable[tuple[Mapping[str, str], float]],
                suffix: str = "_total") -> Expo:
        self.head(name, "counter", text)
        for labels, value in rows:
            self.put(name + suffix, labels, math.floor(value))
        return self

    def histogram(  # noqa: PLR0917 - reads like the declaration: name, help, labels, buckets
            self, name: str, text: str, labels: Mapping[str, str], bounds: Sequence[float],
                  engine: SimEngine, t: float, rate: Callable[[Load], float],
                  median: Callable[[Load], float], sigma: float = 0.6) -> Expo:
        """Counts spread over a log-normal per workload phase, so buckets only ever grow."""
        self.head(name, "histogram", text)
        phases = [(rate(load) * s, median(load)) for load, s in engine.phases(t)]
        for bound in bounds:
            n = sum(c * _cdf(bound, m, sigma) for c, m in phases)
            self.put(f"{name}_bucket", {**labels, "le": _fmt(bound)}, math.floor(n))
        count = math.floor(sum(c for c, _ in phases))
        self.put(f"{name}_bucket", {**labels, "le": "+Inf"}, count)
        self.put(f"{name}_count", labels, count)
        self.put(f"{name}_sum", labels, sum(c * m * math.exp(sigma ** 2 / 2) for c, m in phases))
        return self

    def text(self, eof: bool = False) -> str:
        return "\n".join(self.lines + (["# EOF"] if eof else [])) + "\n"


def _geometric(start: float, factor: float, n: int) -> list[float]:
    return [start * factor ** k for k in range(n)]


VLLM_TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
             7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
VLLM_ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
            10.0, 20.0, 40.0, 80.0]
VLLM_E2E = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
            120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
VLLM_TOKENS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 32768]
SGLANG_TTFT = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
SGLANG_ITL = [0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06,
              0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8]
SGLANG_E2E = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600,
              1200, 1800, 2400]
# SGLang's 2026 kv_transfer_* histogram bounds (its scheduler metrics collector).
SGLANG_SPEED = [0.1, 0.5, 1, 5, 10, 25, 50, 100, 200, 400]
SGLANG_LAT_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]
SGLANG_MB = [1, 5, 10, 50, 100, 500, 1000, 5000, 10000]
SGLANG_BOOT_MS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500]
TGI_DURATION = [0.0001 * 1.5 ** k for k in range(1, 36)]
NIXL_XFER = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0]
NIXL_BYTES = [2.0 ** k for k in range(11, 34, 2)]


def _requests(load: Load) -> float:
    return load.req_rate


def _prompt(load: Load) -> float:
    return load.req_rate * load.prompt_len


def _gen(load: Load) -> float:
    return load.req_rate * load.gen_len


def _hits(load: Load) -> float:
    return load.req_rate * load.prompt_len * load.hit_ratio


def _e2e(load: Load) -> float:
    return load.ttft + load.itl * load.gen_len


# ---- vLLM --------------------------------------------------------------------------------

def _vllm_core(x: Expo, e: SimEngine, t: float, labels: dict[str, str], v0: bool) -> None:
    now = e.now(t)
    x.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
            [(labels, now.running)])
    x.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            [(labels, now.waiting)])
    x.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
              [(labels, e.total(t, lambda ld: ld.preempt_rate))])
    x.counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
              [(labels, e.total(t, _prompt))])
    x.counter("vllm:generation_tokens", "Number of generation tokens processed.",
              [(labels, e.total(t, _gen))])
    done = e.total(t, _requests)
    aborted = e.total(t, lambda ld: ld.req_rate * ld.abort_ratio)
    x.counter("vllm:request_success", "Count of successfully processed requests.", [
        ({**labels, "finished_reason": "stop"}, (done - aborted) * 0.8),
        ({**labels, "finished_reason": "length"}, (done - aborted) * 0.2),
        ({**labels, "finished_reason": "abort"}, aborted),
        ({**labels, "finished_reason": "error"}, 0.0)])
    x.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                labels, VLLM_TTFT[:16] if v0 else VLLM_TTFT, e, t, _requests,
                lambda ld: ld.ttft)
    itl_name = "vllm:time_per_output_token_seconds" if v0 or e.variant == "vllm-0.8" \
        else "vllm:inter_token_latency_seconds"
    x.histogram(itl_name, "Histogram of inter-token latency in seconds.", labels, VLLM_ITL, e, t,
                _gen, lambda ld: ld.itl, 0.4)
    x.histogram("vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.", labels,
                VLLM_E2E[:15] if v0 else VLLM_E2E, e, t, _requests, _e2e)
    x.histogram("vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.", labels, VLLM_E2E, e, t,
                _requests, lambda ld: 0.02 + ld.waiting * 0.01)
    x.histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", labels,
                VLLM_TOKENS, e, t, _requests, lambda ld: ld.prompt_len)
    x.histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                labels, VLLM_TOKENS, e, t, _requests, lambda ld: ld.gen_len)


def render_vllm(e: SimEngine, t: float) -> str:
    """vLLM V1 (0.11 and later): {model_name, engine} labels, token-unit prefix counters."""
    x = Expo()
    labels = {"engine": "0", "model_name": e.model}
    now = e.now(t)
    _vllm_core(x, e, t, labels, v0=False)
    x.gauge("vllm:num_requests_waiting_by_reason", "Number of requests waiting, by reason.", [
        ({**labels, "reason": "capacity"}, now.waiting),
        ({**labels, "reason": "deferred"}, now.transfer_q if "nixl" in e.features else 0.0)])
    x.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
            [(labels, now.kv_usage)])
    queries = e.total(t, _prompt)
    x.counter("vllm:prefix_cache_queries",
              "Prefix cache queries, in terms of number of queried tokens.", [(labels, queries)])
    x.put("vllm:prefix_cache_queries_created", labels, 1.7633e9)
    x.counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
              [(labels, e.total(t, _hits))])
    x.put("vllm:prefix_cache_hits_created", labels, 1.7633e9)
    x.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", [(
        {"block_size": "16", "cache_dtype": "auto", "enable_prefix_caching": "True",
         "engine": "0", "gpu_memory_utilization": "0.9"}, 1.0)])
    if "nixl" in e.features:
        _vllm_nixl(x, e, t, labels)
    if "lmcache" in e.features:
        _lmcache(x, e, t, {"model_name": e.model, "role": "worker", "served_model_name": e.model,
                           "worker_id": "0"})
    return x.text()


def _vllm_nixl(x: Expo, e: SimEngine, t: float, labels: dict[str, str]) -> None:
    x.histogram("vllm:nixl_xfer_time_seconds",
                "Histogram of transfer duration for NIXL KV Cache transfers.", labels, NIXL_XFER,
                e, t, _requests, lambda ld: ld.xfer_latency)
    x.histogram("vllm:nixl_bytes_transferred",
                "Histogram of bytes transferred per NIXL KV Cache transfers.", labels, NIXL_BYTES,
                e, t, _requests, lambda ld: ld.xfer_mb * 1e6, 0.3)
    x.counter("vllm:nixl_num_failed_transfers", "Number of failed NIXL KV Cache transfers.",
              [(labels, e.total(t, lambda ld: ld.xfer_fail_rate))])
    x.counter("vllm:nixl_num_failed_notifications",
              "Number of failed NIXL KV Cache notifications.", [(labels, 0.0)])


def render_vllm_0_8(e: SimEngine, t: float) -> str:
    """vLLM 0.8.x: gpu_cache_usage_perc and prefix counters in blocks of block_size tokens."""
    x = Expo()
    labels = {"engine": "0", "model_name": e.model}
    now = e.now(t)
    _vllm_core(x, e, t, labels, v0=False)
    x.gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
            [(labels, now.kv_usage)])
    x.counter("vllm:gpu_prefix_cache_queries",
              "GPU prefix cache queries, in terms of number of queried blocks.",
              [(labels, e.total(t, _prompt) / 16)])
    x.counter("vllm:gpu_prefix_cache_hits",
              "GPU prefix cache hits, in terms of number of cached blocks.",
              [(labels, e.total(t, _hits) / 16)])
    x.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", [(
        {"block_size": "16", "cache_dtype": "auto", "enable_prefix_caching": "True",
         "engine": "0"}, 1.0)])
    return x.text()


def render_vllm_v0(e: SimEngine, t: float) -> str:
    """vLLM V0 (0.7 and before): {model_name} only, hit-rate gauge, swap gauges."""
    x = Expo()
    labels = {"model_name": e.model}
    now = e.now(t)
    _vllm_core(x, e, t, labels, v0=True)
    x.gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.", [(labels, 0.0)])
    x.gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
            [(labels, now.kv_usage)])
    x.gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.",
            [(labels, 0.0)])
    x.gauge("vllm:gpu_prefix_cache_hit_rate", "GPU prefix cache block hit rate.",
            [(labels, now.hit_ratio)])
    return x.text()


# ---- SGLang ------------------------------------------------------------------------------

def _sglang_ranks(e: SimEngine, extra: Mapping[str, str]) -> list[dict[str, str]]:
    """Scheduler label sets: every TP rank repeats the same gauges."""
    return [{**extra, "tp_rank": str(r)} for r in range(max(1, e.tp))]


def _sglang_requests(x: Expo, e: SimEngine, t: float, labels: dict[str, str],
                     legacy: bool) -> None:
    x.counter("sglang:prompt_tokens", "Number of prefill tokens processed.",
              [(labels, e.total(t, _prompt))])
    x.counter("sglang:generation_tokens", "Number of generation tokens processed.",
              [(labels, e.total(t, _gen))])
    x.histogram("sglang:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.", labels,
                [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5,
                 7.5, 10, 15, 20, 25, 30] if legacy else SGLANG_TTFT, e, t, _requests,
                lambda ld: ld.ttft)
    x.histogram("sglang:time_per_output_token_seconds" if legacy
                else "sglang:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.", labels, SGLANG_ITL, e, t, _gen,
                lambda ld: ld.itl, 0.4)
    x.histogram("sglang:e2e_request_latency_seconds",
                "Histogram of End-to-end request latency in seconds", labels, SGLANG_E2E, e, t,
                _requests, _e2e)
    if legacy:
        return
    x.counter("sglang:cached_tokens", "Number of cached prompt tokens.", [
        ({**labels, "cache_source": "device"}, e.total(t, _hits) * 0.8),
        ({**labels, "cache_source": "host"}, e.total(t, _hits) * 0.2)])
    x.counter("sglang:num_requests", "Number of requests processed.",
              [(labels, e.total(t, _requests))])
    x.counter("sglang:num_aborted_requests", "Number of requests aborted.",
              [(labels, e.total(t, lambda ld: ld.req_rate * ld.abort_ratio))])


def _sglang_scheduler(x: Expo, e: SimEngine, t: float, ranks: list[dict[str, str]],
                      v03: bool = False) -> None:
    now = e.now(t)
    running, queue = ("sglang:num_requests_running", "sglang:num_requests_waiting") if v03 \
        else ("sglang:num_running_reqs", "sglang:num_queue_reqs")
    x.gauge(running, "The number of running requests.", [(r, now.running) for r in ranks])
    x.gauge(queue, "The number of requests in the waiting queue.",
            [(r, now.waiting) for r in ranks])
    x.gauge("sglang:token_usage", "The token usage.", [(r, round(now.kv_usage, 2))
                                                        for r in ranks])
    x.gauge("sglang:num_used_tokens", "The number of used tokens.",
            [(r, math.floor(now.kv_usage * 720_000)) for r in ranks])
    x.gauge("sglang:cache_hit_rate", "The prefix cache hit rate.",
            [(r, now.hit_ratio) for r in ranks])
    x.gauge("sglang:gen_throughput", "The generation throughput (token/s).",
            [(r, now.req_rate * now.gen_len) for r in ranks])


def render_sglang(e: SimEngine, t: float) -> str:
    """SGLang 2026 builds: per-rank scheduler labels, PD queues, kv_transfer_* histograms."""
    x = Expo()
    now = e.now(t)
    engine_type = {"prefill": "prefill", "decode": "decode"}.get(e.role, "unified")
    sched = {"engine_type": engine_type, "model_name": e.model, "moe_ep_rank": "0",
             "pp_rank": "0"}
    ranks = _sglang_ranks(e, sched)
    _sglang_scheduler(x, e, t, ranks)
    x.counter("sglang:num_retracted_requests", "Total number of retracted requests.",
              [(r, e.total(t, lambda ld: ld.preempt_rate)) for r in ranks])
    fails = e.total(t, lambda ld: ld.xfer_fail_rate)
    x.counter("sglang:num_transfer_failed_reqs", "The number of transfer failed requests.",
              [(r, fails) for r in ranks])
    x.counter("sglang:num_bootstrap_failed_reqs", "The number of bootstrap failed requests.",
              [(r, 0.0) for r in ranks])
    if e.role == "prefill":
        x.gauge("sglang:num_prefill_bootstrap_queue_reqs",
                "The number of requests in the prefill bootstrap queue.",
                [(r, now.bootstrap_q) for r in ranks])
        x.gauge("sglang:num_prefill_inflight_queue_reqs",
                "The number of requests in the prefill inflight queue.",
                [(r, now.inflight_q) for r in ranks])
        first = ranks[0]  # transfer histograms come from the rank that sends
        x.histogram("sglang:kv_transfer_speed_gb_s", "Histogram of KV cache transfer speed in "
                    "GB/s.", first, SGLANG_SPEED, e, t, _requests, lambda ld: ld.xfer_gbps, 0.3)
        x.histogram("sglang:kv_transfer_latency_ms", "Histogram of KV cache transfer latency "
                    "in ms.", first, SGLANG_LAT_MS, e, t, _requests,
                    lambda ld: ld.xfer_latency * 1000, 0.3)
        x.histogram("sglang:kv_transfer_total_mb", "Histogram of KV cache transfer size in MB.",
                    first, SGLANG_MB, e, t, _requests, lambda ld: ld.xfer_mb, 0.2)
        x.histogram("sglang:kv_transfer_bootstrap_ms", "Histogram of bootstrap time in ms.",
                    first, SGLANG_BOOT_MS, e, t, _requests, lambda ld: 4.0)
    elif e.role == "decode":
        x.gauge("sglang:num_decode_prealloc_queue_reqs",
                "The number of requests in the decode prealloc queue.",
                [(r, now.prealloc_q) for r in ranks])
        x.gauge("sglang:num_decode_transfer_queue_reqs",
                "The number of requests in the decode transfer queue.",
                [(r, now.transfer_q) for r in ranks])
        x.histogram("sglang:kv_transfer_alloc_ms", "Histogram of decode-side allocation wait "
                    "in ms.", ranks[0], SGLANG_BOOT_MS, e, t, _requests, lambda ld: 2.0)
    _sglang_requests(x, e, t, {"model_name": e.model}, legacy=False)
    return x.text()


def render_sglang_pd_gauge(e: SimEngine, t: float) -> str:
    """SGLang PD builds before 2026: prealloc-named bootstrap queue, last-transfer gauges."""
    x = Expo()
    now = e.now(t)
    sched = {"engine_type": e.role if e.role in ("prefill", "decode") else "unified",
             "model_name": e.model, "pp_rank": "0"}
    ranks = _sglang_ranks(e, sched)
    _sglang_scheduler(x, e, t, ranks)
    if e.role == "prefill":
        x.gauge("sglang:num_prefill_prealloc_queue_reqs",
                "The number of requests in the prefill prealloc queue.",
                [(r, now.bootstrap_q) for r in ranks])
        x.gauge("sglang:num_prefill_inflight_queue_reqs",
                "The number of requests in the prefill inflight queue.",
                [(r, now.inflight_q) for r in ranks])
        x.gauge("sglang:kv_transfer_speed_gb_s", "The transfer speed of the KV cache in GB/s.",
                [(r, now.xfer_gbps) for r in ranks])
        x.gauge("sglang:kv_transfer_latency_ms", "The transfer latency of the KV cache in ms.",
                [(r, now.xfer_latency * 1000) for r in ranks])
    _sglang_requests(x, e, t, {"model_name": e.model}, legacy=True)
    return x.text()


def render_sglang_legacy(e: SimEngine, t: float) -> str:
    """SGLang as its docs showed it (2025): model_name only, hit-rate gauge, no PD metrics."""
    x = Expo()
    _sglang_scheduler(x, e, t, [{"model_name": e.model}])
    _sglang_requests(x, e, t, {"model_name": e.model}, legacy=True)
    x.histogram("sglang:func_latency_seconds", "Function latency in seconds",
                {"name": "generate_request"}, [0.05, 0.1, 0.5, 1.0], e, t, _requests,
                lambda ld: 0.01)
    return x.text()


# ---- LMDeploy, TGI -----------------------------------------------------------------------

def render_lmdeploy(e: SimEngine, t: float) -> str:
    x = Expo()
    labels = {"engine": "0", "model_name": e.model}
    now = e.now(t)
    x.gauge("lmdeploy:backend_config_info", "information of backend_config", [(
        {"cache_max_entry_count": "0.8", "dp": "1", "enable_prefix_caching": "True",
         "session_len": "32768", "tp": str(e.tp)}, 1.0)])
    x.gauge("lmdeploy:num_requests_running", "Number of requests in model execution batches.",
            [(labels, now.running)])
    x.gauge("lmdeploy:num_requests_waiting", "Number of requests waiting to be processed.",
            [(labels, now.waiting)])
    x.gauge("lmdeploy:num_api_requests_waiting",
            "Number of requests waiting for free request handles.", [(labels, 0.0)])
    x.gauge("lmdeploy:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
            [(labels, now.kv_usage)])
    x.gauge("lmdeploy:prefix_cache_hit_rate", "Prefix-cache hit rate.",
            [(labels, e.total(t, _hits) / max(1.0, e.total(t, _prompt)))])
    x.counter("lmdeploy:prompt_tokens", "Number of prefill tokens processed.",
              [(labels, e.total(t, _prompt) * (1 - now.hit_ratio))])
    x.counter("lmdeploy:generation_tokens", "Number of generation tokens processed.",
              [(labels, e.total(t, _gen))])
    x.counter("lmdeploy:cached_tokens", "Total prefix-cached input tokens served.",
              [(labels, e.total(t, _hits))])
    done = e.total(t, _requests)
    aborted = e.total(t, lambda ld: ld.req_rate * ld.abort_ratio)
    x.counter("lmdeploy:request_success", "Count of successfully processed requests.", [
        ({**labels, "finished_reason": "ResponseType.FINISH"}, done - aborted),
        ({**labels, "finished_reason": "ResponseType.CANCEL"}, aborted)])
    x.histogram("lmdeploy:request_prompt_tokens", "Number of prefill tokens processed.", labels,
                VLLM_TOKENS, e, t, _requests, lambda ld: ld.prompt_len)
    x.histogram("lmdeploy:time_to_first_token_seconds", "Histogram of time to first token.",
                labels, VLLM_TTFT, e, t, _requests, lambda ld: ld.ttft)
    x.histogram("lmdeploy:iter_token_latency", "Histogram of inter-token latency", labels,
                [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0], e, t, _gen, lambda ld: ld.itl)
    x.histogram("lmdeploy:e2e_request_latency_seconds", "Histogram of end to end request "
                "latency in seconds.", labels, VLLM_E2E, e, t, _requests, _e2e)
    return x.text()


def render_tgi(e: SimEngine, t: float) -> str:
    """TGI router (metrics-exporter-prometheus): no labels, counters without `_total`."""
    x = Expo()
    now = e.now(t)
    done = e.total(t, _requests)
    x.counter("tgi_request_count", "Total number of requests", [({}, done * 1.01)], suffix="")
    x.counter("tgi_request_success", "Number of successful requests", [({}, done)], suffix="")
    x.lines += ["# TYPE tgi_request_failure counter",
                f"tgi_request_failure{{err=\"validation\"}} {math.floor(done * 0.008)}",
                f"tgi_request_failure{{err=\"overloaded\"}} {math.floor(done * 0.002)}"]
    x.gauge("tgi_queue_size", "Current queue size", [({}, now.waiting)])
    x.gauge("tgi_batch_current_size", "Current batch size", [({}, now.running)])
    x.gauge("tgi_batch_current_max_tokens", "Maximum tokens for the current batch",
            [({}, now.kv_usage * 262144)])
    x.lines += ["# TYPE tgi_batch_max_total_tokens gauge", "tgi_batch_max_total_tokens 262144"]
    x.histogram("tgi_request_duration", "End-to-end request duration", {}, TGI_DURATION, e, t,
                _requests, _e2e)
    x.histogram("tgi_request_queue_duration", "Time spent in the queue per request", {},
                TGI_DURATION, e, t, _requests, lambda ld: 0.001 + ld.waiting * 0.002)
    x.histogram("tgi_request_input_length", "Input tokens per request", {},
                [32 * k for k in range(1, 101)], e, t, _requests, lambda ld: ld.prompt_len, 0.3)
    x.histogram("tgi_request_generated_tokens", "Generated tokens per request", {},
                [8 * k for k in range(1, 101)], e, t, _requests, lambda ld: ld.gen_len, 0.3)
    x.lines += ["# HELP tgi_request_skipped_tokens Speculated tokens per request",
                "# TYPE tgi_request_skipped_tokens summary",
                'tgi_request_skipped_tokens{quantile="0.5"} 0',
                'tgi_request_skipped_tokens{quantile="0.99"} 2',
                f"tgi_request_skipped_tokens_sum {math.floor(done * 0.3)}",
                f"tgi_request_skipped_tokens_count {math.floor(done)}"]
    return x.text()


# ---- Mooncake, LMCache, NIXL, Dynamo -----------------------------------------------------

def render_mooncake_master(e: SimEngine, t: float) -> str:
    """Mooncake master (yalantinglibs): odd names, and zero metrics omitted until they move."""
    x = Expo()
    now = e.now(t)
    capacity = 1024 ** 4
    gets = e.total(t, lambda ld: ld.req_rate * 4)
    rows = [("master_allocated_bytes", "gauge", now.kv_usage * capacity),
            ("master_total_capacity_bytes", "gauge", capacity),
            ("master_key_count", "gauge", math.floor(now.kv_usage * 2_000_000)),
            ("master_get_replica_list_requests_total", "counter", gets),
            ("total_get_nums_", "counter", gets),
            ("valid_get_nums_", "counter", gets * now.hit_ratio),
            ("mem_cache_hit_nums_", "counter", gets * now.hit_ratio * 0.9),
            ("master_successful_evictions_total", "counter", 0.0)]
    for name, kind, value in rows:
        if value == 0:
            continue  # ylt never prints a metric that has not changed from zero
        x.head(name, kind, name.replace("_", " ").strip())
        x.put(name, {}, math.floor(value))
    return x.text()


def render_mooncake_tent(e: SimEngine, t: float) -> str:
    x = Expo()
    per_s = e.total(t, lambda ld: ld.req_rate * ld.xfer_mb * 1e6)
    x.counter("tent_read_bytes_total", "Total bytes read via TENT", [
        ({"transport": "rdma"}, per_s * 0.98), ({"transport": "tcp"}, per_s * 0.02)], suffix="")
    x.counter("tent_write_bytes_total", "Total bytes written via TENT",
              [({"transport": "rdma"}, per_s * 0.01)], suffix="")
    x.counter("tent_read_requests_total", "Total read requests via TENT",
              [({"transport": "rdma"}, e.total(t, _requests))], suffix="")
    fails = e.total(t, lambda ld: ld.xfer_fail_rate)
    if fails >= 1:  # zero counters are omitted
        x.counter("tent_read_failures_total", "Total read failures via TENT",
                  [({"transport": "rdma"}, fails)], suffix="")
    x.histogram("tent_read_latency_us", "Read latency distribution in microseconds",
                {"transport": "rdma"}, [100, 500, 1000, 5000, 10000, 50000, 100000, 500000], e,
                t, _requests, lambda ld: ld.xfer_latency * 1e6, 0.3)
    return x.text()


def _lmcache(x: Expo, e: SimEngine, t: float, labels: dict[str, str]) -> None:
    requested = e.total(t, lambda ld: _prompt(ld) * 0.5)
    x.counter("lmcache:num_requested_tokens", "Total number of tokens requested from lmcache",
              [(labels, requested)])
    x.counter("lmcache:num_hit_tokens", "Total number of tokens hit in lmcache",
              [(labels, e.total(t, lambda ld: _prompt(ld) * 0.5 * ld.hit_ratio))])
    x.gauge("lmcache:retrieve_hit_rate", "Hit rate of lmcache retrieve requests since last log",
            [(labels, e.now(t).hit_ratio)])
    x.gauge("lmcache:local_cache_usage", "Local cache usage (bytes) of lmcache",
            [(labels, 2.147483648e10 * e.now(t).kv_usage)])
    x.histogram("lmcache:time_to_retrieve", "Time to retrieve from lmcache (seconds)", labels,
                [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10], e, t, _requests,
                lambda ld: 0.008)


def render_lmcache(e: SimEngine, t: float) -> str:
    """LMCache's own logger, older label set {model_name, worker_id}."""
    x = Expo()
    _lmcache(x, e, t, {"model_name": e.model, "worker_id": "0"})
    return x.text()


def render_nixl(e: SimEngine, t: float) -> str:
    x = Expo()
    labels = {"agent_name": e.name, "hostname": "sim-node-0"}
    x.counter("agent_tx_bytes", "Bytes sent", [(labels, e.total(
        t, lambda ld: ld.req_rate * ld.xfer_mb * 1e6))])
    x.gauge("agent_tx_last_bytes", "Bytes of the last transfer",
            [(labels, e.now(t).xfer_mb * 1e6)])
    x.histogram("agent_xfer_time_us", "Transfer time in microseconds", labels,
                [10, 100, 1000, 10000, 100000, 1000000, 10000000], e, t, _requests,
                lambda ld: ld.xfer_latency * 1e6, 0.3)
    x.counter("agent_errors", "Transfer errors", [({**labels, "status": "NIXL_ERR_BACKEND"},
                                                   e.total(t, lambda ld: ld.xfer_fail_rate))])
    return x.text()


def render_dynamo(e: SimEngine, t: float) -> str:
    """A Dynamo worker: frontend metrics plus vLLM pass-through with injected labels."""
    x = Expo()
    model = {"model": e.model}
    now = e.now(t)
    x.gauge("dynamo_frontend_queued_requests", "Queued requests", [(model, now.waiting)])
    x.gauge("dynamo_frontend_inflight_requests", "Inflight requests", [(model, now.running)])
    x.histogram("dynamo_frontend_time_to_first_token_seconds", "Time to first token", model,
                [0.1, 0.5, 1, 2, 5, 10], e, t, _requests, lambda ld: ld.ttft)
    x.counter("dynamo_frontend_requests", "Requests", [
        ({**model, "status": "success"}, e.total(t, _requests)),
        ({**model, "status": "error"}, e.total(t, lambda ld: ld.req_rate * ld.abort_ratio))])
    injected = {"dynamo_component": "backend", "dynamo_endpoint": "generate",
                "dynamo_namespace": "dynamo"}
    x.gauge("dynamo_component_kvstats_gpu_cache_usage_percent", "KV usage",
            [({**injected, "dp_rank": "0", "worker_type": e.role if e.role != "both"
               else "aggregated"}, now.kv_usage)])
    x.gauge("vllm:kv_cache_usage_perc", "KV-cache usage.",
            [({**injected, "engine": "0", "model": e.model, "model_name": e.model},
              now.kv_usage)])
    return x.text()


Renderer = Callable[[SimEngine, float], str]
RENDERERS: dict[str, tuple[str, Renderer]] = {
    "vllm": ("vllm", render_vllm),
    "vllm-0.8": ("vllm", render_vllm_0_8),
    "vllm-v0": ("vllm", render_vllm_v0),
    "sglang": ("sglang", render_sglang),
    "sglang-pd-gauge": ("sglang", render_sglang_pd_gauge),
    "sglang-legacy": ("sglang", render_sglang_legacy),
    "lmdeploy": ("lmdeploy", render_lmdeploy),
    "tgi": ("tgi", render_tgi),
    "mooncake-master": ("mooncake", render_mooncake_master),
    "mooncake-tent": ("mooncake", render_mooncake_tent),
    "lmcache": ("lmcache", render_lmcache),
    "nixl": ("nixl", render_nixl),
    "dynamo": ("dynamo", render_dynamo),
}


def render(engine: SimEngine, elapsed: float) -> str:
    return RENDERERS[engine.variant][1](engine, elapsed)


# ---- servers -----------------------------------------------------------------------------

ENGINE_KEY = web.AppKey("engine", SimEngine)
NODE_KEY = web.AppKey("node", SimNode)


async def _metrics(request: web.Request) -> web.StreamResponse:
    engine, node = request.app[ENGINE_KEY], request.app[NODE_KEY]
    if engine.down(node.elapsed()):
        # A request that reached a kept-alive connection before the watcher closed it: a gone
        # process answers nothing, so drop the connection rather than serve it.
        if request.transport is not None:
            request.transport.abort()
        raise web.HTTPServiceUnavailable
    body = render(engine, node.elapsed())
    resp = web.Response(text=body, content_type="text/plain", charset="utf-8",
                        headers={"X-Engine": engine.variant})
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        resp.enable_compression()
    return resp


def build_app(engine: SimEngine, node: SimNode) -> web.Application:
    app = web.Application()
    app[ENGINE_KEY] = engine
    app[NODE_KEY] = node
    app.router.add_get("/metrics", _metrics)
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WATCH_INTERVAL = 0.05  # seconds between looks at the node clock for down and up times
CLOSE_DEADLINE = 0.01  # seconds an open connection's handler gets to finish when it dies


async def start_engine(engine: SimEngine, node: SimNode, stack: AsyncExitStack) -> str:
    """Serve one fake engine on 127.0.0.1 for the life of `stack`; returns its /metrics URL.

    The port is fixed at start and kept: while the engine is down (`down_at` to `up_at` on the
    node's clock) nothing listens on it, so connections are refused, and the connections that
    were open are closed, as when a process dies; when it is up again it listens on the same
    port, as a restarted pod's engine would on its pod IP.
    """
    runner = web.AppRunner(build_app(engine, node), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    port = _free_port()
    engine.url = f"http://127.0.0.1:{port}/metrics"
    lifecycle = _Lifecycle(engine, node, runner, port)
    await lifecycle.follow()
    if engine.down_at is not None:
        task = asyncio.create_task(lifecycle.watch())
        stack.callback(task.cancel)
    return engine.url


class _Lifecycle:
    """Starts and stops one fake engine's listener as its down window opens and closes."""

    def __init__(self, engine: SimEngine, node: SimNode, runner: web.AppRunner,
                 port: int) -> None:
        self._engine, self._node, self._runner, self._port = engine, node, runner, port
        self._site: web.TCPSite | None = None

    async def follow(self) -> None:
        """Listen or not, as the node's clock says now."""
        down = self._engine.down(self._node.elapsed())
        if down and self._site is not None:
            await self._site.stop()
            self._site = None
            # Closing the listener leaves open connections open: close them too, or a scraper's
            # kept-alive connection hangs into a timeout instead of failing to connect. The
            # deadline must be above 0: aiohttp reads 0 as none, and an idle keep-alive handler
            # never finishes on its own (the old fake hung here forever).
            if self._runner.server is not None:
                await self._runner.server.shutdown(CLOSE_DEADLINE)
        elif not down and self._site is None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self._port)
            await self._site.start()

    async def watch(self) -> None:
        while True:
            await self.follow()
            await asyncio.sleep(WATCH_INTERVAL)


async def start_engines(node: SimNode, stack: AsyncExitStack) -> dict[str, Any]:
    """Start every engine of the node; pods get their port annotation, others become static
    targets in the config."""
    static = []
    for engine in node.engines:
        if not isinstance(engine, SimEngine):
            continue
        url = await start_engine(engine, node, stack)
        pod = next((p for p in node.pods if p.name == engine.pod), None)
        if pod is not None:
            pod.annotations["kvscope.io/port"] = url.rsplit(":", 1)[1].split("/")[0]
        else:
            static.append({"url": url, "engine": RENDERERS[engine.variant][0],
                           "model": engine.model})
    return {"collectors.engines.targets": static} if static else {}



# ---- default equipment and scenarios -----------------------------------------------------

MODEL = "qwen2.5-72b"
PREFILL, DECODE, VLLM = "sglang-prefill-0", "sglang-decode-0", "vllm-0"


def default_engines() -> list[SimEngine]:
    prefill = SimEngine(PREFILL, "sglang", role="prefill", model=MODEL, pod=PREFILL,
                        gpus=(0, 1, 2, 3), tp=4,
                        load=Load(running=6, waiting=3, kv_usage=0.38))
    decode = SimEngine(DECODE, "sglang", role="decode", model=MODEL, pod=DECODE,
                       gpus=(4, 5, 6, 7), tp=4,
                       load=Load(running=96, waiting=1, kv_usage=0.71, hit_ratio=0.0))
    vllm = SimEngine(VLLM, "vllm", model="llama-3.1-8b", features=frozenset({"lmcache"}),
                     load=Load(running=12, waiting=0, kv_usage=0.44, req_rate=3.0,
                               prompt_len=1024, hit_ratio=0.45))
    return [prefill, decode, vllm]


def equip_engines(node: SimNode, opts: SimOptions) -> None:
    del opts
    node.engines.extend(default_engines())



def engine(node: SimNode, name: str) -> SimEngine:
    return next(e for e in node.engines if isinstance(e, SimEngine) and e.name == name)


def _faulted(faults: Mapping[str, Mapping[str, float]], down: Sequence[str] = ()) \
        -> Callable[[SimOptions], SimNode]:
    def build(opts: SimOptions) -> SimNode:
        node = scenarios.healthy(opts)
        for name, overrides in faults.items():
            e = engine(node, name)
            e.fault = dict(overrides)
            e.fault_at = opts.fault_delay
        for name in down:
            engine(node, name).down_at = opts.fault_delay
        return node

    return build


# Listed here rather than with the topology scenarios because it moves the engines' pods
# (and their engines' GPUs) together. The PD pods on a PCIe-only node, placed without regard to
# CPU sockets: each TP4 group spans
# both sockets, so its GPUs meet over SYS (the scheduler's NUMA blindness, not the hardware).
PCIE_TP_PLACEMENT = {PREFILL: (2, 3, 4, 5), DECODE: (0, 1, 6, 7)}


def pcie_only_tp(opts: SimOptions) -> SimNode:
    from kvscope.sim.topology import pcie_only_node

    node = pcie_only_node(opts)
    for pod in node.pods:
        gpus = PCIE_TP_PLACEMENT.get(pod.name)
        if gpus is None:
            continue
        pod.gpus = gpus
        pod.env["NVIDIA_VISIBLE_DEVICES"] = ",".join(node.gpus[i].uuid for i in gpus)
        engine(node, pod.name).gpus = gpus
    return node


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("pcie-only-tp", "8 x L40S (PCIe only): each PD pod's TP4 GPUs span both CPU "
             "sockets and meet over SYS", pcie_only_tp),
    Scenario("kv-cache-full", "decode KV cache at 99.5%: requests queue and get retracted",
             _faulted({DECODE: {"kv_usage": 0.995, "waiting": 85, "preempt_rate": 2.5,
                                "prealloc_q": 40}})),
    Scenario("prefix-hit-low", "prefix-cache hits fall from 60% to 4% on the prefill engine",
             _faulted({PREFILL: {"hit_ratio": 0.04, "ttft": 1.4},
                       VLLM: {"hit_ratio": 0.05}})),
    Scenario("queue-backlog", "prefill queue backs up: 380 waiting, 45 in bootstrap",
             _faulted({PREFILL: {"waiting": 380, "bootstrap_q": 45, "ttft": 9.0,
                                 "running": 64}})),
    Scenario("kv-transfer-slow", "KV transfer P->D at 0.25 GB/s, 420 ms per transfer",
             _faulted({PREFILL: {"xfer_latency": 0.42, "xfer_gbps": 0.25, "inflight_q": 30},
                       DECODE: {"transfer_q": 60, "ttft": 3.0}})),
    Scenario("engine-down", "the decode engine stops answering (process gone)",
             _faulted({}, down=(DECODE,))),
)
