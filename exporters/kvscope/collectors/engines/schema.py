"""The exported engine schema: the name, type and HELP of every `kvscope_engine_*` family.

The parser (parsers/engines.py) turns an engine's exposition into records of normalized facts;
this table is the one place that says what each fact is called when exported, so a rename or a
reworded HELP never touches the mapping from engine names. HELP says where a value comes from.
The families about the targets themselves (up, scrape duration, errors, discovery) follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kvscope.parsers.engines import KINDS, Fact, Kind


@dataclass(frozen=True)
class FamilySpec:
    fact: Fact
    name: str  # the exported name; counters end in _total
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()  # output labels beyond the target's


FAMILIES: Mapping[Fact, FamilySpec] = {f.fact: f for f in (
    FamilySpec(Fact.KV_CACHE_USAGE,
               "kvscope_engine_kv_cache_usage_ratio", "gauge",
               "KV-cache slots in use, 0-1. vLLM kv_cache_usage_perc (gpu_cache_usage_perc up to "
               "0.11), SGLang token_usage (max over TP ranks), LMDeploy gpu_cache_usage_perc, "
               "Dynamo kvstats_gpu_cache_usage_percent."),
    FamilySpec(Fact.PREFIX_CACHE_QUERY_TOKENS,
               "kvscope_engine_prefix_cache_query_tokens_total", "counter",
               "Prompt tokens looked up in the prefix cache. vLLM prefix_cache_queries (0.8: "
               "blocks x block_size), SGLang prompt_tokens, LMDeploy request_prompt_tokens_sum, "
               "LMCache num_requested_tokens. Only with its hit counterpart."),
    FamilySpec(Fact.PREFIX_CACHE_HIT_TOKENS,
               "kvscope_engine_prefix_cache_hit_tokens_total", "counter",
               "Prompt tokens found in the prefix cache. vLLM prefix_cache_hits, SGLang "
               "cached_tokens (all cache_source tiers), LMDeploy cached_tokens, LMCache "
               "num_hit_tokens."),
    FamilySpec(Fact.PREFIX_CACHE_HIT_RATE,
               "kvscope_engine_prefix_cache_hit_ratio", "gauge",
               "The engine's own hit-rate gauge, only for engines without hit/query counters; "
               "`window` says what it covers (SGLang last_batch, LMDeploy lifetime, LMCache "
               "since_last_log, vLLM V0 recent).", ("window",)),
    FamilySpec(Fact.REQUESTS_RUNNING,
               "kvscope_engine_requests_running", "gauge",
               "Requests in the running batch. vLLM/LMDeploy num_requests_running, SGLang "
               "num_running_reqs (max over TP ranks), TGI batch_current_size, Dynamo "
               "inflight_requests."),
    FamilySpec(Fact.REQUESTS_WAITING,
               "kvscope_engine_requests_waiting", "gauge",
               "Requests queued for scheduling. vLLM/LMDeploy num_requests_waiting, SGLang "
               "num_queue_reqs, TGI queue_size, Dynamo queued_requests."),
    FamilySpec(Fact.PD_QUEUE_REQUESTS,
               "kvscope_engine_pd_queue_requests", "gauge",
               "Requests in a PD-disaggregation queue by stage: SGLang bootstrap/inflight "
               "(prefill), prealloc/transfer/host_receive (decode); vLLM deferred and "
               "kv_fetch_<stage>.", ("stage",)),
    FamilySpec(Fact.TIME_TO_FIRST_TOKEN,
               "kvscope_engine_time_to_first_token_seconds", "histogram",
               "Time to first token, buckets as the engine defines them. vLLM, SGLang, LMDeploy "
               "time_to_first_token_seconds; Dynamo frontend."),
    FamilySpec(Fact.INTER_TOKEN_LATENCY,
               "kvscope_engine_inter_token_latency_seconds", "histogram",
               "Time between output tokens. vLLM/SGLang inter_token_latency_seconds (older: "
               "time_per_output_token_seconds), LMDeploy iter_token_latency, Dynamo frontend."),
    FamilySpec(Fact.E2E_REQUEST_LATENCY,
               "kvscope_engine_e2e_request_latency_seconds", "histogram",
               "Request latency from arrival to last token. vLLM/SGLang/LMDeploy "
               "e2e_request_latency_seconds, TGI request_duration, Dynamo request_duration."),
    FamilySpec(Fact.KV_TRANSFER_BYTES,
               "kvscope_engine_kv_transfer_bytes_total", "counter",
               "KV-cache bytes moved between instances. vLLM nixl/mooncake bytes_transferred_sum, "
               "SGLang kv_transfer_total_mb_sum x 2^20 (MiB), Mooncake TENT/client read+write "
               "bytes, NIXL agent tx+rx bytes."),
    FamilySpec(Fact.KV_TRANSFER_TIME,
               "kvscope_engine_kv_transfer_seconds_total", "counter",
               "Time spent in KV-cache transfers. vLLM nixl/mooncake xfer_time_seconds_sum, "
               "SGLang kv_transfer_latency_ms_sum / 1000, Mooncake latency sums (us), NIXL "
               "agent_xfer_time (us)."),
    FamilySpec(Fact.KV_TRANSFER_FAILURES,
               "kvscope_engine_kv_transfer_failures_total", "counter",
               "Failed KV transfers by kind (transfer, bootstrap, notification, expired, recv, "
               "store_read, store_write). vLLM nixl/mooncake failure counters and Mooncake store "
               "operations with a status other than ok, SGLang num_*_failed_reqs, TENT failures, "
               "NIXL agent_errors.", ("kind",)),
    FamilySpec(Fact.KV_TRANSFER_LAST_LATENCY,
               "kvscope_engine_kv_transfer_last_seconds", "gauge",
               "Latency of the last KV transfer, from SGLang builds that expose "
               "kv_transfer_latency_ms as a gauge (before it became a histogram)."),
    FamilySpec(Fact.KV_TRANSFER_LAST_SPEED,
               "kvscope_engine_kv_transfer_last_bytes_per_second", "gauge",
               "Speed of the last KV transfer, from SGLang builds that expose "
               "kv_transfer_speed_gb_s as a gauge (GiB/s x 2^30)."),
    FamilySpec(Fact.KV_TRANSFER_SPEED,
               "kvscope_engine_kv_transfer_speed_bytes_per_second", "histogram",
               "Speed of each KV transfer, from SGLang builds where kv_transfer_speed_gb_s is a "
               "histogram (bounds and sum in GiB/s x 2^30)."),
    FamilySpec(Fact.PROMPT_TOKENS,
               "kvscope_engine_prompt_tokens_total", "counter",
               "Prompt tokens processed. vLLM/SGLang/LMDeploy prompt_tokens, TGI "
               "request_input_length_sum, Dynamo input_sequence_tokens_sum."),
    FamilySpec(Fact.GENERATION_TOKENS,
               "kvscope_engine_generation_tokens_total", "counter",
               "Output tokens generated. vLLM/SGLang/LMDeploy generation_tokens, TGI "
               "request_generated_tokens_sum, Dynamo output_tokens."),
    FamilySpec(Fact.REQUESTS_FINISHED,
               "kvscope_engine_requests_total", "counter",
               "Finished requests by outcome (success, error, aborted). vLLM/LMDeploy "
               "request_success by finished_reason, SGLang num_requests minus "
               "num_aborted_requests, TGI request_success/request_failure, Dynamo "
               "requests_total by status.", ("outcome",)),
    FamilySpec(Fact.PREEMPTIONS,
               "kvscope_engine_preemptions_total", "counter",
               "Requests preempted to free KV cache. vLLM num_preemptions, SGLang "
               "num_retracted_requests."),
    FamilySpec(Fact.KV_STORE_LOOKUPS,
               "kvscope_engine_kv_store_lookups_total", "counter",
               "Lookups in a shared KV store. Mooncake master total_get_nums_."),
    FamilySpec(Fact.KV_STORE_HITS,
               "kvscope_engine_kv_store_hits_total", "counter",
               "Store lookups that found a complete replica. Mooncake master valid_get_nums_."),
    FamilySpec(Fact.KV_STORE_USED,
               "kvscope_engine_kv_store_used_bytes", "gauge",
               "Bytes allocated in a shared KV store. Mooncake master_allocated_bytes."),
    FamilySpec(Fact.KV_STORE_CAPACITY,
               "kvscope_engine_kv_store_capacity_bytes", "gauge",
               "Capacity of a shared KV store. Mooncake master_total_capacity_bytes."),
    FamilySpec(Fact.EXTERNAL_PREFIX_CACHE_QUERY_TOKENS,
               "kvscope_engine_external_prefix_cache_query_tokens_total", "counter",
               "Prompt tokens looked up outside the engine's own prefix cache (a KV connector: "
               "LMCache, a P2P or store connector). vLLM external_prefix_cache_queries, LMCache "
               "num_lookup_tokens. Only with its hit counterpart."),
    FamilySpec(Fact.EXTERNAL_PREFIX_CACHE_HIT_TOKENS,
               "kvscope_engine_external_prefix_cache_hit_tokens_total", "counter",
               "Prompt tokens found outside the engine's own prefix cache. vLLM "
               "external_prefix_cache_hits, LMCache num_lookup_hits."),
    FamilySpec(Fact.KV_STORE_IO_BYTES,
               "kvscope_engine_kv_store_io_bytes_total", "counter",
               "Bytes read from or written to a shared KV store by direction (read, write). "
               "LMCache num_remote_read/write_bytes, vLLM MooncakeStoreConnector "
               "mooncake_store_operation_bytes (load_get = read, save_put = write).",
               ("direction",)),
    FamilySpec(Fact.KV_STORE_IO_TIME,
               "kvscope_engine_kv_store_io_seconds_total", "counter",
               "Time spent reading from or writing to a shared KV store, by direction. vLLM "
               "MooncakeStoreConnector mooncake_store_operation_time_seconds_sum.",
               ("direction",)),
    FamilySpec(Fact.KV_CACHE_CAPACITY_TOKENS,
               "kvscope_engine_kv_cache_capacity_tokens", "gauge",
               "Tokens the engine's KV cache (token budget) holds. SGLang max_total_num_tokens "
               "(max over TP ranks), TGI batch_max_total_tokens."),
    FamilySpec(Fact.BATCH_RESERVED_TOKENS,
               "kvscope_engine_batch_reserved_tokens", "gauge",
               "Tokens the running batch may grow to, reserved against the KV token budget. TGI "
               "batch_current_max_tokens (an upper bound, not slots in use: divide by "
               "kvscope_engine_kv_cache_capacity_tokens for a usage proxy)."),
)}

if {f: s.kind for f, s in FAMILIES.items()} != dict(KINDS):  # pragma: no cover - a coding slip
    raise RuntimeError("collectors/engines/schema.py and parsers/engines.py disagree on the "
                       "facts or their kinds")


# ---- the targets themselves ----------------------------------------------------------------

@dataclass(frozen=True)
class TargetFamily:
    name: str
    kind: Literal["gauge", "counter", "info"]
    help: str


UP = TargetFamily(
    "kvscope_engine_up", "gauge",
    "1 when the engine's /metrics answered with metrics of a known engine; 0 with `reason` "
    "(timeout, connect, reset, redirect, http_<code>, too_large, decode, parse, unknown_engine) "
    "otherwise.")
DURATION = TargetFamily(
    "kvscope_engine_scrape_duration_seconds", "gauge",
    "Wall time of the last scrape of the engine's /metrics.")
ERRORS = TargetFamily(
    "kvscope_engine_scrape_errors_total", "counter",
    "Failed scrapes of the engine's /metrics since the agent started, by reason.")
INVALID = TargetFamily(
    "kvscope_engine_exposition_invalid_lines_total", "counter",
    "Malformed lines skipped in the engine's exposition.")
DROPPED = TargetFamily(
    "kvscope_engine_series_dropped_total", "counter",
    "Normalized series not exported because the target passed "
    "collectors.engines.max_series_per_target (label churn in the engine), summed over scrapes.")
INFO = TargetFamily(
    "kvscope_engine_info", "info",
    "Engines found behind a target; `variant` names the generation of metric names that was "
    "read (e.g. vllm v0, v1-0.8, v1).")
TARGETS = TargetFamily("kvscope_engine_targets", "gauge", "Engine targets scraped, by source.")
DISCOVERY_UP = TargetFamily(
    "kvscope_engine_discovery_up", "gauge",
    "1 when the last pod list from the Kubernetes API succeeded.")
REFUSED = TargetFamily(
    "kvscope_engine_discovery_refused_pods", "gauge",
    "Pods of the last pod list that asked to be scraped and were refused, by reason "
    "(other_node, pod_ip, port, path).")
