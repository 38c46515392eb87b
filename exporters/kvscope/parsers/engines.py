"""Engine exposition into normalized engine facts: the mapping table and its reader.

Every engine names the same facts differently and renames them between releases. The table
below (`RULES`) says, per normalized fact (`Fact`) and engine, which source samples feed it, in
order of preference (newest name first), with unit scales and label handling. `normalize()`
applies it to one parsed payload and returns typed records; the collector adds target labels and
turns them into families under the names of its schema (collectors/engines/schema.py): nothing
here names an exported metric. Facts an engine does not expose produce no record, never a zero.

Aggregation inside one target, decided once for every rule:
- duplicate labels (`tp_rank`, `pp_rank`, `moe_ep_rank` of SGLang's schedulers, LMCache's
  `worker_id` and `role`): every rank repeats the same scheduler value, so take the max, never the
  sum;
- every other label that the rule does not turn into an output label (data-parallel `engine` of
  vLLM/LMDeploy, SGLang's `dp_rank`, `cache_source`, TGI's `err`, TENT's `transport`, NIXL's
  `agent_name`) splits one fact into parts: sum them (ratios take the max: the worst rank);
- SGLang's `priority` (with `--enable-priority-scheduling`): the scheduler's queue gauges
  (`PRIORITY_TOTALS`) print the total under `priority=""` next to one series per priority, so
  there the per-priority series are dropped; the tokenizer's counters and histograms (tokens,
  requests, TTFT, e2e) label each request with its own priority and print no total, so there
  every priority is a part and they are summed like any other split.

One target serves one model: the target's `model` (config or pod annotation) or else the first
model label found in the payload. The role comes from the target, else from SGLang's
`engine_type` or Dynamo's `worker_type`, else `both`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from kvscope.parsers.exposition import Exposition, Sample, le_bound

Kind = Literal["gauge", "counter", "histogram"]
LabelFn = Callable[[Mapping[str, str]], Mapping[str, str] | None]

# The engines kvscope knows, in the order that picks a target's primary engine.
# Dynamo first: a Dynamo worker passes its engine's metrics through on the same port.
ENGINES = ("dynamo", "vllm", "sglang", "lmdeploy", "tgi", "mooncake", "nixl", "lmcache")

# A payload contains an engine when a sample name starts with one of its prefixes.
ENGINE_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "vllm": ("vllm:",),
    "sglang": ("sglang:",),
    "lmdeploy": ("lmdeploy:",),
    "tgi": ("tgi_",),
    "dynamo": ("dynamo_",),
    "mooncake": ("master_", "segment_", "tent_", "mooncake_", "valid_get_nums_",
                 "total_get_nums_", "mem_cache_", "file_cache_"),
    "nixl": ("agent_tx_", "agent_rx_", "agent_xfer_"),
    "lmcache": ("lmcache:",),
}

DUPLICATE_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank", "worker_id", "role"})
ROLE_LABELS: Mapping[str, Mapping[str, str]] = {
    "engine_type": {"prefill": "prefill", "decode": "decode", "unified": "both"},
    "worker_type": {"prefill": "prefill", "decode": "decode", "aggregated": "both"},
}
MODEL_LABELS = ("served_model_name", "model_name", "model")

# SGLang's scheduler gauges that carry a total under priority="" beside the per-priority series
# (QueueCount in its metrics collector); every other priority-labelled family has no total.
PRIORITY_TOTALS = frozenset(f"sglang:{n}" for n in (
    "num_running_reqs", "num_queue_reqs", "num_prefill_bootstrap_queue_reqs",
    "num_prefill_prealloc_queue_reqs", "num_prefill_inflight_queue_reqs",
    "num_decode_prealloc_queue_reqs", "num_decode_transfer_queue_reqs",
    "num_decode_host_receive_queue_reqs"))


class Fact(StrEnum):
    """A normalized engine fact: what a record measures, in base units (seconds, bytes, tokens,
    requests, 0-1 ratios). The collector's schema names the exported family of each."""

    KV_CACHE_USAGE = "kv_cache_usage"
    PREFIX_CACHE_QUERY_TOKENS = "prefix_cache_query_tokens"
    PREFIX_CACHE_HIT_TOKENS = "prefix_cache_hit_tokens"
    PREFIX_CACHE_HIT_RATE = "prefix_cache_hit_rate"
    REQUESTS_RUNNING = "requests_running"
    REQUESTS_WAITING = "requests_waiting"
    PD_QUEUE_REQUESTS = "pd_queue_requests"
    TIME_TO_FIRST_TOKEN = "time_to_first_token"
    INTER_TOKEN_LATENCY = "inter_token_latency"
    E2E_REQUEST_LATENCY = "e2e_request_latency"
    KV_TRANSFER_BYTES = "kv_transfer_bytes"
    KV_TRANSFER_TIME = "kv_transfer_time"
    KV_TRANSFER_FAILURES = "kv_transfer_failures"
    KV_TRANSFER_LAST_LATENCY = "kv_transfer_last_latency"
    KV_TRANSFER_LAST_SPEED = "kv_transfer_last_speed"
    KV_TRANSFER_SPEED = "kv_transfer_speed"
    PROMPT_TOKENS = "prompt_tokens"
    GENERATION_TOKENS = "generation_tokens"
    REQUESTS_FINISHED = "requests_finished"
    PREEMPTIONS = "preemptions"
    KV_STORE_LOOKUPS = "kv_store_lookups"
    KV_STORE_HITS = "kv_store_hits"
    KV_STORE_USED = "kv_store_used"
    KV_STORE_CAPACITY = "kv_store_capacity"
    EXTERNAL_PREFIX_CACHE_QUERY_TOKENS = "external_prefix_cache_query_tokens"
    EXTERNAL_PREFIX_CACHE_HIT_TOKENS = "external_prefix_cache_hit_tokens"
    KV_STORE_IO_BYTES = "kv_store_io_bytes"
    KV_STORE_IO_TIME = "kv_store_io_time"
    KV_CACHE_CAPACITY_TOKENS = "kv_cache_capacity_tokens"
    BATCH_RESERVED_TOKENS = "batch_reserved_tokens"


# How each fact accumulates: counters and histograms are cumulative (the collector carries them
# across engine restarts), gauges are levels.
KINDS: Mapping[Fact, Kind] = {
    Fact.KV_CACHE_USAGE: "gauge",
    Fact.PREFIX_CACHE_QUERY_TOKENS: "counter",
    Fact.PREFIX_CACHE_HIT_TOKENS: "counter",
    Fact.PREFIX_CACHE_HIT_RATE: "gauge",
    Fact.REQUESTS_RUNNING: "gauge",
    Fact.REQUESTS_WAITING: "gauge",
    Fact.PD_QUEUE_REQUESTS: "gauge",
    Fact.TIME_TO_FIRST_TOKEN: "histogram",
    Fact.INTER_TOKEN_LATENCY: "histogram",
    Fact.E2E_REQUEST_LATENCY: "histogram",
    Fact.KV_TRANSFER_BYTES: "counter",
    Fact.KV_TRANSFER_TIME: "counter",
    Fact.KV_TRANSFER_FAILURES: "counter",
    Fact.KV_TRANSFER_LAST_LATENCY: "gauge",
    Fact.KV_TRANSFER_LAST_SPEED: "gauge",
    Fact.KV_TRANSFER_SPEED: "histogram",
    Fact.PROMPT_TOKENS: "counter",
    Fact.GENERATION_TOKENS: "counter",
    Fact.REQUESTS_FINISHED: "counter",
    Fact.PREEMPTIONS: "counter",
    Fact.KV_STORE_LOOKUPS: "counter",
    Fact.KV_STORE_HITS: "counter",
    Fact.KV_STORE_USED: "gauge",
    Fact.KV_STORE_CAPACITY: "gauge",
    Fact.EXTERNAL_PREFIX_CACHE_QUERY_TOKENS: "counter",
    Fact.EXTERNAL_PREFIX_CACHE_HIT_TOKENS: "counter",
    Fact.KV_STORE_IO_BYTES: "counter",
    Fact.KV_STORE_IO_TIME: "counter",
    Fact.KV_CACHE_CAPACITY_TOKENS: "gauge",
    Fact.BATCH_RESERVED_TOKENS: "gauge",
}


@dataclass(frozen=True)
class Part:
    """One source sample name feeding a rule, scaled, optionally filtered and relabelled."""

    sample: str  # exact sample name, or the base name of a histogram
    scale: float = 1.0
    where: Mapping[str, str] = field(default_factory=dict)  # keep samples with these labels
    const: Mapping[str, str] = field(default_factory=dict)  # output labels set by this part
    relabel: LabelFn | None = None  # output labels from source labels; None result = skip
    scale_by: tuple[str, str] | None = None  # (info sample, label): vLLM 0.8 block_size


@dataclass(frozen=True)
class Rule:
    family: Fact
    engine: str
    alternatives: tuple[tuple[Part, ...], ...]  # first present wins; its parts are summed
    reduce: Literal["sum", "max"] = "sum"  # across shards (ratios: max)
    pair: Fact | None = None  # fact whose rule must use the same alternative index
    unless: Fact | None = None  # fact that, when present for this engine, suppresses this one
    zero_when: tuple[str, ...] = ()  # sample-name prefixes: when present, absent parts are 0
    hold: bool = False  # counter derived by subtraction: never let it step back


def _outcome_vllm(labels: Mapping[str, str]) -> Mapping[str, str]:
    reason = labels.get("finished_reason", "")
    outcome = {"abort": "aborted", "error": "error"}.get(reason, "success")
    return {"outcome": outcome}


def _outcome_lmdeploy(labels: Mapping[str, str]) -> Mapping[str, str]:
    reason = labels.get("finished_reason", "").removeprefix("ResponseType.")
    if reason in ("FINISH", "SUCCESS"):
        return {"outcome": "success"}
    if reason in ("CANCEL", "CANCELLED", "ABORT"):
        return {"outcome": "aborted"}
    return {"outcome": "error"}


def _outcome_dynamo(labels: Mapping[str, str]) -> Mapping[str, str]:
    return {"outcome": "success" if labels.get("status") == "success" else "error"}


def _kv_fetch_stage(labels: Mapping[str, str]) -> Mapping[str, str] | None:
    stage = labels.get("stage")
    return {"stage": f"kv_fetch_{stage}"} if stage else None


def _p(sample: str, scale: float = 1.0, **kw: object) -> Part:
    return Part(sample, scale, **kw)  # type: ignore[arg-type]


def _one(*samples: str, scale: float = 1.0) -> tuple[tuple[Part, ...], ...]:
    """Alternatives of one part each: a fact renamed across versions, newest first."""
    return tuple((Part(s, scale),) for s in samples)


MS = 1e-3
US = 1e-6
MIB = 1024.0 * 1024.0  # SGLang's "MB" is bytes / (1024 * 1024) in its transfer backends
GIB = 1024.0 ** 3  # and its "GB/s" is that MiB figure / 1024 per second
BLOCK_SIZE = ("vllm:cache_config_info", "block_size")
MOONCAKE_MASTER = ("master_", "valid_get_nums_", "total_get_nums_", "mem_cache_",
                   "segment_")
MOONCAKE_TENT = ("tent_",)

F_KV = Fact.KV_CACHE_USAGE
F_QUERY = Fact.PREFIX_CACHE_QUERY_TOKENS
F_HIT = Fact.PREFIX_CACHE_HIT_TOKENS
F_RATIO = Fact.PREFIX_CACHE_HIT_RATE
F_RUN = Fact.REQUESTS_RUNNING
F_WAIT = Fact.REQUESTS_WAITING
F_PDQ = Fact.PD_QUEUE_REQUESTS
F_TTFT = Fact.TIME_TO_FIRST_TOKEN
F_ITL = Fact.INTER_TOKEN_LATENCY
F_E2E = Fact.E2E_REQUEST_LATENCY
F_XBYTES = Fact.KV_TRANSFER_BYTES
F_XSEC = Fact.KV_TRANSFER_TIME
F_XFAIL = Fact.KV_TRANSFER_FAILURES
F_XLAST = Fact.KV_TRANSFER_LAST_LATENCY
F_XSPEED = Fact.KV_TRANSFER_LAST_SPEED
F_PROMPT = Fact.PROMPT_TOKENS
F_GEN = Fact.GENERATION_TOKENS
F_REQ = Fact.REQUESTS_FINISHED
F_PREEMPT = Fact.PREEMPTIONS
F_LOOKUPS = Fact.KV_STORE_LOOKUPS
F_SHITS = Fact.KV_STORE_HITS
F_SUSED = Fact.KV_STORE_USED
F_SCAP = Fact.KV_STORE_CAPACITY
F_XSPEEDH = Fact.KV_TRANSFER_SPEED
F_EXQUERY = Fact.EXTERNAL_PREFIX_CACHE_QUERY_TOKENS
F_EXHIT = Fact.EXTERNAL_PREFIX_CACHE_HIT_TOKENS
F_IOBYTES = Fact.KV_STORE_IO_BYTES
F_IOSEC = Fact.KV_STORE_IO_TIME
F_KVCAP = Fact.KV_CACHE_CAPACITY_TOKENS
F_RESERVED = Fact.BATCH_RESERVED_TOKENS

# vLLM MooncakeStoreConnector operations that move KV, by direction; save_exists only asks.
MOONCAKE_STORE_DIRECTIONS = {"load_get": "read", "save_put": "write"}


def _store_direction(labels: Mapping[str, str]) -> Mapping[str, str] | None:
    direction = MOONCAKE_STORE_DIRECTIONS.get(labels.get("operation", ""))
    return {"direction": direction} if direction else None


def _store_failure(labels: Mapping[str, str]) -> Mapping[str, str] | None:
    direction = MOONCAKE_STORE_DIRECTIONS.get(labels.get("operation", ""))
    if direction is None or labels.get("status", "ok") == "ok":
        return None
    return {"kind": f"store_{direction}"}


def _vllm() -> list[Rule]:
    e = "vllm"
    fail = [("nixl_num_failed_transfers", "transfer"), ("nixl_num_failed_notifications",
            "notification"), ("nixl_num_kv_expired_reqs", "expired"),
            ("nixl_num_notifications_after_expiry", "late_notification"),
            ("mooncake_num_failed_transfers", "transfer"), ("mooncake_num_failed_recvs", "recv"),
            ("mooncake_num_kv_expired_reqs", "expired")]
    return [
        # 0.9 renamed gpu_cache_usage_perc; both exist until 0.11 with the same value.
        Rule(F_KV, e, _one("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), "max"),
        # 0.8.x counted blocks under gpu_prefix_cache_*; 0.9 renamed them and counts tokens.
        Rule(F_QUERY, e, ((_p("vllm:prefix_cache_queries_total"),),
                          (_p("vllm:gpu_prefix_cache_queries_total", scale_by=BLOCK_SIZE),)),
             pair=F_HIT),
        Rule(F_HIT, e, ((_p("vllm:prefix_cache_hits_total"),),
                        (_p("vllm:gpu_prefix_cache_hits_total", scale_by=BLOCK_SIZE),)),
             pair=F_QUERY),
        Rule(F_RATIO, e, ((_p("vllm:gpu_prefix_cache_hit_rate", const={"window": "recent"}),),),
             "max", unless=F_HIT),
        Rule(F_RUN, e, _one("vllm:num_requests_running")),
        Rule(F_WAIT, e, _one("vllm:num_requests_waiting")),
        Rule(F_PDQ, e, ((_p("vllm:num_requests_waiting_by_reason", where={"reason": "deferred"},
                            const={"stage": "deferred"}),
                         _p("vllm:num_requests_kv_fetch_by_stage", relabel=_kv_fetch_stage)),)),
        Rule(F_TTFT, e, _one("vllm:time_to_first_token_seconds")),
        # time_per_output_token_seconds was the per-interval histogram until 0.10 (= ITL).
        Rule(F_ITL, e, _one("vllm:inter_token_latency_seconds",
                            "vllm:time_per_output_token_seconds")),
        Rule(F_E2E, e, _one("vllm:e2e_request_latency_seconds")),
        Rule(F_XBYTES, e, ((_p("vllm:nixl_bytes_transferred_sum"),
                            _p("vllm:mooncake_bytes_transferred_sum")),)),
        Rule(F_XSEC, e, ((_p("vllm:nixl_xfer_time_seconds_sum"),
                          _p("vllm:mooncake_xfer_time_seconds_sum")),)),
        Rule(F_XFAIL, e, ((*(_p(f"vllm:{n}_total", const={"kind": k}) for n, k in fail),
                           _p("vllm:mooncake_store_operation_total", relabel=_store_failure)),)),
        Rule(F_EXQUERY, e, _one("vllm:external_prefix_cache_queries_total"), pair=F_EXHIT),
        Rule(F_EXHIT, e, _one("vllm:external_prefix_cache_hits_total"), pair=F_EXQUERY),
        Rule(F_IOBYTES, e, ((_p("vllm:mooncake_store_operation_bytes_total",
                                relabel=_store_direction),),)),
        Rule(F_IOSEC, e, ((_p("vllm:mooncake_store_operation_time_seconds_sum",
                              relabel=_store_direction),),)),
        Rule(F_PROMPT, e, _one("vllm:prompt_tokens_total")),
        Rule(F_GEN, e, _one("vllm:generation_tokens_total")),
        Rule(F_REQ, e, ((_p("vllm:request_success_total", relabel=_outcome_vllm),),)),
        Rule(F_PREEMPT, e, _one("vllm:num_preemptions_total")),
    ]


def _sglang() -> list[Rule]:
    e = "sglang"
    return [
        Rule(F_KV, e, _one("sglang:token_usage"), "max"),
        # Pairs by index: cached/prompt tokens per finished request, else the realtime split.
        Rule(F_QUERY, e, ((_p("sglang:prompt_tokens_total"),),
                          (_p("sglang:realtime_tokens_total", where={"mode": "prefill_cache"}),
                           _p("sglang:realtime_tokens_total",
                              where={"mode": "prefill_compute"}))), pair=F_HIT),
        Rule(F_HIT, e, ((_p("sglang:cached_tokens_total"),),
                        (_p("sglang:realtime_tokens_total", where={"mode": "prefill_cache"}),)),
             pair=F_QUERY),
        Rule(F_RATIO, e, ((_p("sglang:cache_hit_rate", const={"window": "last_batch"}),),),
             "max", unless=F_HIT),
        # v0.3 named the scheduler gauges num_requests_running / num_requests_waiting.
        Rule(F_RUN, e, _one("sglang:num_running_reqs", "sglang:num_requests_running")),
        Rule(F_WAIT, e, _one("sglang:num_queue_reqs", "sglang:num_requests_waiting")),
        # The prefill bootstrap queue was exported as num_prefill_prealloc_queue_reqs before 2026.
        Rule(F_PDQ, e, ((_p("sglang:num_prefill_bootstrap_queue_reqs",
                            const={"stage": "bootstrap"}),),
                        (_p("sglang:num_prefill_prealloc_queue_reqs",
                            const={"stage": "bootstrap"}),))),
        Rule(F_PDQ, e, ((_p("sglang:num_prefill_inflight_queue_reqs",
                            const={"stage": "inflight"}),),)),
        Rule(F_PDQ, e, ((_p("sglang:num_decode_prealloc_queue_reqs",
                            const={"stage": "prealloc"}),),)),
        Rule(F_PDQ, e, ((_p("sglang:num_decode_transfer_queue_reqs",
                            const={"stage": "transfer"}),),)),
        # Decode stage added in 2026: KV received into host memory before it moves to the GPU.
        Rule(F_PDQ, e, ((_p("sglang:num_decode_host_receive_queue_reqs",
                            const={"stage": "host_receive"}),),)),
        Rule(F_KVCAP, e, _one("sglang:max_total_num_tokens"), "max"),
        Rule(F_TTFT, e, _one("sglang:time_to_first_token_seconds")),
        Rule(F_ITL, e, _one("sglang:inter_token_latency_seconds",
                            "sglang:time_per_output_token_seconds")),
        Rule(F_E2E, e, _one("sglang:e2e_request_latency_seconds")),
        # kv_transfer_* are histograms in 2026 builds and gauges before, under the same names:
        # the histogram's _sum feeds the counters, the bare gauge feeds the last-transfer gauges.
        Rule(F_XBYTES, e, _one("sglang:kv_transfer_total_mb_sum", scale=MIB)),
        Rule(F_XSEC, e, _one("sglang:kv_transfer_latency_ms_sum", scale=MS)),
        Rule(F_XLAST, e, _one("sglang:kv_transfer_latency_ms", scale=MS), "max"),
        Rule(F_XSPEED, e, _one("sglang:kv_transfer_speed_gb_s", scale=GIB), "max"),
        Rule(F_XSPEEDH, e, _one("sglang:kv_transfer_speed_gb_s", scale=GIB)),
        Rule(F_XFAIL, e, ((_p("sglang:num_transfer_failed_reqs_total",
                              const={"kind": "transfer"}),
                           _p("sglang:num_bootstrap_failed_reqs_total",
                              const={"kind": "bootstrap"})),)),
        Rule(F_PROMPT, e, _one("sglang:prompt_tokens_total")),
        Rule(F_GEN, e, _one("sglang:generation_tokens_total")),
        # num_requests_total counts every finished request, aborted ones included.
        Rule(F_REQ, e, ((_p("sglang:num_requests_total", const={"outcome": "success"}),
                         _p("sglang:num_aborted_requests_total", -1.0,
                            const={"outcome": "success"}),
                         _p("sglang:num_aborted_requests_total", const={"outcome": "aborted"})),),
             hold=True),
        Rule(F_PREEMPT, e, _one("sglang:num_retracted_requests_total")),
    ]


def _lmdeploy() -> list[Rule]:
    e = "lmdeploy"
    return [
        Rule(F_KV, e, _one("lmdeploy:gpu_cache_usage_perc"), "max"),
        # request_prompt_tokens_sum counts all prompt tokens; prompt_tokens_total may count only
        # computed ones under prefix caching, so it is not the denominator.
        Rule(F_QUERY, e, _one("lmdeploy:request_prompt_tokens_sum"), pair=F_HIT),
        Rule(F_HIT, e, _one("lmdeploy:cached_tokens_total"), pair=F_QUERY),
        Rule(F_RATIO, e, ((_p("lmdeploy:prefix_cache_hit_rate", const={"window": "lifetime"}),),),
             "max", unless=F_HIT),
        Rule(F_RUN, e, _one("lmdeploy:num_requests_running")),
        Rule(F_WAIT, e, _one("lmdeploy:num_requests_waiting")),
        Rule(F_TTFT, e, _one("lmdeploy:time_to_first_token_seconds")),
        Rule(F_ITL, e, _one("lmdeploy:iter_token_latency")),  # seconds, no _seconds suffix
        Rule(F_E2E, e, _one("lmdeploy:e2e_request_latency_seconds")),
        Rule(F_PROMPT, e, _one("lmdeploy:prompt_tokens_total")),
        Rule(F_GEN, e, _one("lmdeploy:generation_tokens_total")),
        Rule(F_REQ, e, ((_p("lmdeploy:request_success_total", relabel=_outcome_lmdeploy),),)),
    ]


def _tgi() -> list[Rule]:
    e = "tgi"
    # metrics-exporter-prometheus writes counters without `_total`; accept both spellings.
    ok, fail = {"outcome": "success"}, {"outcome": "error"}
    return [
        Rule(F_RUN, e, _one("tgi_batch_current_size")),
        Rule(F_WAIT, e, _one("tgi_queue_size")),
        Rule(F_KVCAP, e, _one("tgi_batch_max_total_tokens"), "max"),
        Rule(F_RESERVED, e, _one("tgi_batch_current_max_tokens"), "max"),
        Rule(F_E2E, e, _one("tgi_request_duration")),
        Rule(F_PROMPT, e, _one("tgi_request_input_length_sum")),
        Rule(F_GEN, e, _one("tgi_request_generated_tokens_sum")),
        Rule(F_REQ, e, ((_p("tgi_request_success", const=ok),
                         _p("tgi_request_failure", const=fail)),
                        (_p("tgi_request_success_total", const=ok),
                         _p("tgi_request_failure_total", const=fail)))),
    ]


def _mooncake() -> list[Rule]:
    e = "mooncake"
    # yalantinglibs omits a metric that has never moved from zero: once any metric of the same
    # component is present, an absent counter of that component is a zero, not a missing fact.
    return [
        Rule(F_LOOKUPS, e, _one("total_get_nums_"), zero_when=MOONCAKE_MASTER),
        Rule(F_SHITS, e, _one("valid_get_nums_"), zero_when=MOONCAKE_MASTER),
        Rule(F_SUSED, e, _one("master_allocated_bytes"), zero_when=MOONCAKE_MASTER),
        Rule(F_SCAP, e, _one("master_total_capacity_bytes"), zero_when=MOONCAKE_MASTER),
        Rule(F_XBYTES, e, ((_p("tent_read_bytes_total"), _p("tent_write_bytes_total")),
                           (_p("mooncake_transfer_read_bytes"),
                            _p("mooncake_transfer_write_bytes"))), zero_when=MOONCAKE_TENT),
        Rule(F_XSEC, e, ((_p("tent_read_latency_us_sum", US), _p("tent_write_latency_us_sum", US)),
                         tuple(_p(f"mooncake_transfer_{op}_latency_sum", US)
                               for op in ("get", "put", "batch_get", "batch_put")))),
        Rule(F_XFAIL, e, ((_p("tent_read_failures_total", const={"kind": "transfer"}),
                           _p("tent_write_failures_total", const={"kind": "transfer"})),),
             zero_when=MOONCAKE_TENT),
    ]


def _lmcache() -> list[Rule]:
    e = "lmcache"
    return [
        Rule(F_QUERY, e, _one("lmcache:num_requested_tokens_total"), pair=F_HIT),
        Rule(F_HIT, e, _one("lmcache:num_hit_tokens_total"), pair=F_QUERY),
        Rule(F_RATIO, e, ((_p("lmcache:retrieve_hit_rate", const={"window": "since_last_log"}),),),
             "max", unless=F_HIT),
        # Scheduler-side lookups: how much of a prompt LMCache holds, before vLLM asks for it.
        Rule(F_EXQUERY, e, _one("lmcache:num_lookup_tokens_total"), pair=F_EXHIT),
        Rule(F_EXHIT, e, _one("lmcache:num_lookup_hits_total"), pair=F_EXQUERY),
        Rule(F_IOBYTES, e, ((_p("lmcache:num_remote_read_bytes_total", const={"direction": "read"}),
                             _p("lmcache:num_remote_write_bytes_total",
                                const={"direction": "write"})),)),
    ]


def _nixl() -> list[Rule]:
    e = "nixl"
    return [
        Rule(F_XBYTES, e, ((_p("agent_tx_bytes_total"), _p("agent_rx_bytes_total")),)),
        Rule(F_XSEC, e, _one("agent_xfer_time_us_sum", "agent_xfer_time_total", scale=US)),
        Rule(F_XFAIL, e, ((_p("agent_errors_total", const={"kind": "transfer"}),),)),
    ]


def _dynamo() -> list[Rule]:
    e = "dynamo"
    d = "dynamo_frontend_"
    return [
        Rule(F_KV, e, _one("dynamo_component_kvstats_gpu_cache_usage_percent"), "max"),
        Rule(F_RUN, e, _one(f"{d}inflight_requests")),
        Rule(F_WAIT, e, _one(f"{d}queued_requests")),
        Rule(F_TTFT, e, _one(f"{d}time_to_first_token_seconds")),
        Rule(F_ITL, e, _one(f"{d}inter_token_latency_seconds")),
        Rule(F_E2E, e, _one(f"{d}request_duration_seconds")),
        Rule(F_PROMPT, e, _one(f"{d}input_sequence_tokens_sum")),
        Rule(F_GEN, e, _one(f"{d}output_tokens_total")),
        Rule(F_REQ, e, ((_p(f"{d}requests_total", relabel=_outcome_dynamo),),)),
    ]


RULES: tuple[Rule, ...] = (*_vllm(), *_sglang(), *_lmdeploy(), *_tgi(), *_mooncake(),
                           *_lmcache(), *_nixl(), *_dynamo())

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _wanted() -> tuple[frozenset[str], frozenset[str]]:
    """(every sample name the table reads, those that are cumulative and so accumulated)."""
    keep: set[str] = set()
    cumulative: set[str] = set()
    for rule in RULES:
        kind = KINDS[rule.family]
        for alt in rule.alternatives:
            for part in alt:
                if kind == "histogram":
                    names = {part.sample + s for s in HISTOGRAM_SUFFIXES}
                    keep |= names
                    cumulative |= names
                else:
                    keep.add(part.sample)
                    if kind == "counter":
                        cumulative.add(part.sample)
                if part.scale_by is not None:
                    keep.add(part.scale_by[0])
    return frozenset(keep), frozenset(cumulative)


KEEP, CUMULATIVE = _wanted()


# ---- records ------------------------------------------------------------------------------

LabelKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Value:
    family: Fact
    engine: str
    labels: LabelKey  # output labels beyond the target's (stage, outcome, kind, window)
    value: float
    hold: bool = False


@dataclass(frozen=True)
class Histogram:
    family: Fact
    engine: str
    labels: LabelKey
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    count: float
    sum: float | None


@dataclass(frozen=True)
class Normalized:
    engines: tuple[str, ...]  # detected, in ENGINES order
    role: str | None  # from engine_type / worker_type, when the payload says
    model: str | None  # first model label in the payload
    values: tuple[Value, ...]
    histograms: tuple[Histogram, ...]
    variants: Mapping[str, str]  # engine -> which generation of its names was read


def detect(names: set[str]) -> tuple[str, ...]:
    """Engines whose metric-name prefixes occur in the payload, in ENGINES order."""
    found = []
    for engine in ENGINES:
        prefixes = ENGINE_PREFIXES[engine]
        if any(name.startswith(prefixes) for name in names):
            found.append(engine)
    return tuple(found)


def _payload_role(expo: Exposition) -> str | None:
    for samples in expo.samples.values():
        labels = samples[0].labels  # a family's samples share their identity labels
        for key, mapping in ROLE_LABELS.items():
            role = mapping.get(labels.get(key, ""))
            if role is not None and role != "both":
                return role
    return None


def _payload_model(expo: Exposition, engines: tuple[str, ...]) -> str | None:
    for engine in engines:
        prefixes = ENGINE_PREFIXES[engine]
        for name, samples in expo.samples.items():
            if not name.startswith(prefixes):
                continue
            for s in samples:
                for key in MODEL_LABELS:
                    if s.labels.get(key):
                        return s.labels[key]
    return None


def _prefer_aggregate(name: str, samples: list[Sample]) -> list[Sample]:
    """SGLang with priority scheduling: a queue gauge's total is its priority="" series (drop
    the per-priority ones); any other family has no total, so every priority stays a part."""
    if name not in PRIORITY_TOTALS:
        return samples
    if any(s.labels.get("priority") == "" for s in samples):
        return [s for s in samples if s.labels.get("priority", "") == ""]
    return samples


class _Reader:
    """Applies the rules of one engine to one payload."""

    def __init__(self, expo: Exposition, memo: dict[str, LabelKey] | None) -> None:
        self.expo = expo
        self._prefix_cache: dict[tuple[str, ...], bool] = {}
        self._shards = memo if memo is not None else {}

    def has_prefix(self, prefixes: tuple[str, ...]) -> bool:
        hit = self._prefix_cache.get(prefixes)
        if hit is None:
            hit = any(n.startswith(prefixes) for n in self.expo.names)
            self._prefix_cache[prefixes] = hit
        return hit

    def present(self, part: Part, histogram: bool) -> bool:
        name = part.sample + "_bucket" if histogram else part.sample
        return bool(self.expo.get(name))

    def pick(self, rule: Rule, histogram: bool) -> int | None:
        for i, alt in enumerate(rule.alternatives):
            if any(self.present(p, histogram) for p in alt):
                return i
        if rule.zero_when and self.has_prefix(rule.zero_when):
            return 0
        return None

    def scale(self, part: Part) -> float | None:
        if part.scale_by is None:
            return part.scale
        info_name, label = part.scale_by
        for s in self.expo.get(info_name):
            try:
                return part.scale * float(s.labels.get(label, ""))
            except ValueError:
                return None
        return None

    def rows(self, part: Part, name: str) -> tuple[bool, list[tuple[LabelKey, LabelKey, Sample]]]:
        """(ranks repeat?, [(output labels, shard key, sample)]) for the samples of `name` this
        part accepts. The shard key (labels minus rank labels) is only built when ranks repeat.
        """
        samples = self.expo.get(name)
        if not samples:
            return False, []
        first = samples[0].labels
        if "priority" in first:
            samples = _prefer_aggregate(name, samples)
        ranked = not DUPLICATE_LABELS.isdisjoint(first)
        const = tuple(sorted(part.const.items())) if part.const else ()
        simple = not part.where and part.relabel is None
        out = []
        for s in samples:
            extra = const
            if not simple:
                if any(s.labels.get(k) != v for k, v in part.where.items()):
                    continue
                if part.relabel is not None:
                    more = part.relabel(s.labels)
                    if more is None:
                        continue
                    extra = tuple(sorted({**part.const, **more}.items()))
            out.append((extra, self.shard(s) if ranked else (), s))
        return ranked, out

    def shard(self, s: Sample) -> LabelKey:
        key = self._shards.get(s.series) if s.series else None
        if key is None:
            key = tuple(sorted((k, v) for k, v in s.labels.items()
                               if k not in DUPLICATE_LABELS and k != "le"))
            if s.series:
                self._shards[s.series] = key
        return key


def _combine(totals: dict[LabelKey, float], out: LabelKey, value: float, reduce: str) -> None:
    if out not in totals:
        totals[out] = value
    elif reduce == "max":
        totals[out] = max(totals[out], value)
    else:
        totals[out] += value


def _reduce_values(rule: Rule, reader: _Reader, alt: tuple[Part, ...]) -> dict[LabelKey, float]:
    totals: dict[LabelKey, float] = {}
    zero = bool(rule.zero_when) and reader.has_prefix(rule.zero_when)
    for part in alt:
        scale = reader.scale(part)
        if scale is None:
            continue
        ranked, rows = reader.rows(part, part.sample)
        if not rows and zero:
            key = tuple(sorted(part.const.items()))
            totals[key] = totals.get(key, 0.0)
            continue
        if not ranked:
            for out, _, s in rows:
                _combine(totals, out, s.value * scale, rule.reduce)
            continue
        # Ranks repeat a value: max within (output labels, shard); then combine shards.
        per_shard: dict[tuple[LabelKey, LabelKey], float] = {}
        for out, shard, s in rows:
            k = (out, shard)
            per_shard[k] = max(per_shard.get(k, s.value), s.value)
        for (out, _), value in per_shard.items():
            _combine(totals, out, value * scale, rule.reduce)
    return totals


def _reduce_histograms(rule: Rule, reader: _Reader, alt: tuple[Part, ...]) -> list[Histogram]:
    # per output labels: bound -> count, plus _count and _sum; ranks: max; shards: sum.
    buckets: dict[LabelKey, dict[float, float]] = {}
    counts: dict[LabelKey, float] = {}
    sums: dict[LabelKey, float] = {}
    for part in alt:
        # A unit scale moves the bucket bounds and the sum; the counts stay counts.
        scale = part.scale
        for suffix in HISTOGRAM_SUFFIXES:
            cells = _histogram_cells(*reader.rows(part, part.sample + suffix), suffix)
            for (out, bound), value in cells.items():
                if suffix == "_bucket":
                    row = buckets.setdefault(out, {})
                    row[bound * scale] = row.get(bound * scale, 0.0) + value
                elif suffix == "_count":
                    counts[out] = counts.get(out, 0.0) + value
                else:
                    sums[out] = sums.get(out, 0.0) + value * scale
    out_list = []
    for out, row in buckets.items():
        inf = float("inf")
        count = counts.get(out, row.get(inf))
        if count is None:
            continue  # neither +Inf nor _count: the total is unknown
        row.setdefault(inf, count)  # some samples elide +Inf; _count is the same number
        ordered = tuple(sorted(row.items()))
        out_list.append(Histogram(rule.family, rule.engine, out, ordered, count, sums.get(out)))
    return out_list


def _histogram_cells(ranked: bool, rows: list[tuple[LabelKey, LabelKey, Sample]],
                     suffix: str) -> dict[tuple[LabelKey, float], float]:
    """(output labels, bound) -> value for one suffix; ranks repeat (max), shards add up."""
    cells: dict[tuple[LabelKey, float], float] = {}
    if not ranked:
        for out, _, s in rows:
            bound = _bound(s, suffix)
            if bound is not None:
                cells[(out, bound)] = cells.get((out, bound), 0.0) + s.value
        return cells
    per: dict[tuple[LabelKey, LabelKey, float], float] = {}
    for out, shard, s in rows:
        bound = _bound(s, suffix)
        if bound is not None:
            k = (out, shard, bound)
            per[k] = max(per.get(k, s.value), s.value)
    for (out, _, bound), value in per.items():
        cells[(out, bound)] = cells.get((out, bound), 0.0) + value
    return cells


def _bound(s: Sample, suffix: str) -> float | None:
    if suffix != "_bucket":
        return 0.0
    return s.le if s.le is not None else le_bound(s.labels)


def _vllm_variant(names: set[str]) -> str:
    if "vllm:gpu_prefix_cache_queries_total" in names:
        return "v1-0.8"
    v0_only = ("vllm:gpu_prefix_cache_hit_rate", "vllm:num_requests_swapped",
               "vllm:cpu_cache_usage_perc")
    return "v0" if any(n in names for n in v0_only) else "v1"


def _sglang_variant(names: set[str]) -> str:
    if any(n.startswith("sglang:kv_transfer_") and n.endswith("_count") for n in names) \
            or "sglang:num_prefill_bootstrap_queue_reqs" in names:
        return "pd-histogram"
    if "sglang:kv_transfer_latency_ms" in names or \
            "sglang:num_prefill_prealloc_queue_reqs" in names:
        return "pd-gauge"
    if "sglang:num_decode_transfer_queue_reqs" in names:
        return "pd"
    return "v0.3" if "sglang:num_requests_running" in names else "unified"


def _mooncake_variant(names: set[str]) -> str:
    parts = [p for p, pre in (("master", MOONCAKE_MASTER), ("tent", MOONCAKE_TENT),
                              ("client", ("mooncake_",)))
             if any(n.startswith(pre) for n in names)]
    return "+".join(parts) or "empty"


_VARIANTS: Mapping[str, Callable[[set[str]], str]] = {
    "vllm": _vllm_variant, "sglang": _sglang_variant, "mooncake": _mooncake_variant}


def _variant(engine: str, names: set[str]) -> str:
    """A short name for the generation of an engine's metric names (for kvscope_engine_info)."""
    pick = _VARIANTS.get(engine)
    return pick(names) if pick is not None else "current"


def normalize(expo: Exposition, engine_hint: str | None = None,
              memo: dict[str, LabelKey] | None = None) -> Normalized:
    """Apply the table to one payload. `engine_hint` (the target's configured engine) only
    matters for an empty payload, which then still counts as that engine. `memo` (series ->
    shard labels) may be kept per target between calls to save recomputing them."""
    engines = detect(expo.names)
    if not engines and not expo.names and engine_hint in ENGINES:
        engines = (engine_hint,)
    reader = _Reader(expo, memo)
    values: list[Value] = []
    histograms: list[Histogram] = []
    for engine in engines:
        _apply_engine(engine, reader, values, histograms)
    return Normalized(engines, _payload_role(expo), _payload_model(expo, engines),
                      tuple(values), tuple(histograms),
                      {e: _variant(e, expo.names) for e in engines})


def _apply_engine(engine: str, reader: _Reader, values: list[Value],
                  histograms: list[Histogram]) -> None:
    """One engine's rules on the payload: its records appended to `values` and `histograms`."""
    rules = [r for r in RULES if r.engine == engine]
    chosen = {id(r): reader.pick(r, KINDS[r.family] == "histogram") for r in rules}
    _align_pairs(rules, reader, chosen)
    produced: set[Fact] = set()
    for rule in rules:
        index = chosen[id(rule)]
        if index is None or rule.unless is not None:
            continue
        alt = rule.alternatives[index]
        if KINDS[rule.family] == "histogram":
            hs = _reduce_histograms(rule, reader, alt)
            histograms.extend(hs)
            produced |= {h.family for h in hs}
        else:
            for labels, value in _reduce_values(rule, reader, alt).items():
                values.append(Value(rule.family, engine, labels, value, rule.hold))
                produced.add(rule.family)
    for rule in rules:  # gauges that stand in for counters the engine lacks
        index = chosen[id(rule)]
        if index is None or rule.unless is None or rule.unless in produced:
            continue
        for labels, value in _reduce_values(rule, reader, rule.alternatives[index]).items():
            values.append(Value(rule.family, engine, labels, value))


def _align_pairs(rules: list[Rule], reader: _Reader, chosen: dict[int, int | None]) -> None:
    """Counter pairs (query, hit) must come from the same generation of names, or not at all."""
    by_family = {r.family: r for r in rules if r.pair is not None}
    for rule in by_family.values():
        partner = by_family.get(rule.pair) if rule.pair is not None else None
        if partner is None:
            chosen[id(rule)] = None
            continue
        common = None
        for i in range(min(len(rule.alternatives), len(partner.alternatives))):
            if all(any(reader.present(p, False) for p in r.alternatives[i])
                   for r in (rule, partner)):
                common = i
                break
        chosen[id(rule)] = common
        chosen[id(partner)] = common
