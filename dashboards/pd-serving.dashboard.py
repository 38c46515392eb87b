"""PD serving: are prefill and decode of one PD group keeping up with each other?

Engine series come from kvscope's normalized engine schema (`kvscope_engine_*`, labels engine,
role, model, pod, namespace); `common.in_pd_group` joins them to their group. Cost per million
tokens is the group's GPU count times `$gpu_hour_price`, over the tokens it produced.
"""

from dashboards import common as c

INCIDENT_ONLY = c.IncidentOnly()

TO_NVLINK = c.data_links(("PD pair paths", c.dashboard_url(c.UID_NVLINK)))


def by_role(expr: str, *extra: str) -> str:
    """Sum an engine expression per PD group and role (and any `extra` labels)."""
    labels = ", ".join(("pd_group", "role", *extra))
    return f"sum by ({labels}) (\n  {c.in_pd_group(expr)}\n)"


def quantile(q: float, histogram: str) -> str:
    bucket = f"rate({histogram}_bucket[$__rate_interval])"
    return f"histogram_quantile({q}, {by_role(bucket, 'le')})"


GROUP_GPUS = 'count(group by (instance, UUID) (kvscope_pod_gpu_info{pd_group=~"$pd_group"}))'
GENERATED = by_role("rate(kvscope_engine_generation_tokens_total[$__rate_interval])")
PROMPT = by_role("rate(kvscope_engine_prompt_tokens_total[$__rate_interval])")

overview = c.Row("PD group at a glance", [
    c.Cell(c.stat("GPUs in the group", "GPUs held by the group's pods (kubelet pod-resources).",
                  [c.target(GROUP_GPUS)], unit=c.SHORT, thresholds=c.steps((c.NEUTRAL, None))),
           width=4, height=4),
    c.Cell(c.stat("Engines up", "Engine endpoints of the group that answered the last scrape, "
                  "by role.",
                  [c.target(by_role("kvscope_engine_up"), "{{role}}")], unit=c.SHORT,
                  thresholds=c.UP_STEPS), width=5, height=4),
    c.Cell(c.stat("Generated tokens per second", "Decode output, summed over the group.",
                  [c.target(f"sum({GENERATED})")], unit=c.PER_SECOND,
                  thresholds=c.steps((c.NEUTRAL, None))), width=5, height=4),
    c.Cell(c.stat("Cost per million generated tokens",
                  "GPUs in the group x $gpu_hour_price, over the generated tokens of the last "
                  "rate window, scaled to one million.",
                  [c.target(f"{GROUP_GPUS} * $gpu_hour_price\n"
                            f"/ (sum({GENERATED}) * 3600 / 1e6)")],
                  unit=c.USD, thresholds=c.steps((c.NEUTRAL, None)), decimals=2),
           width=5, height=4),
    c.Cell(c.stat("Cost per million tokens (prompt + generated)",
                  "The same GPU cost over every token processed, prompt and output.",
                  [c.target(f"{GROUP_GPUS} * $gpu_hour_price\n"
                            f"/ ((sum({GENERATED}) + sum({PROMPT})) * 3600 / 1e6)")],
                  unit=c.USD, thresholds=c.steps((c.NEUTRAL, None)), decimals=3),
           width=5, height=4),
    # Group-level figures from the recording rules (alerts/rules/recording.yaml).
    c.Cell(c.stat("Prefix-cache hit ratio (group)",
                  "Hit tokens over queried tokens of the whole group, over 5 minutes.",
                  [c.target('sum(pd_group:kvscope_engine_prefix_cache_hit:ratio'
                            '{pd_group=~"$pd_group"})')],
                  unit=c.RATIO, thresholds=c.HIT_RATIO_STEPS), width=8, height=4),
    c.Cell(c.stat("KV transfer (group)",
                  "KV-cache bytes the group moved per second, over 5 minutes.",
                  [c.target('sum(pd_group:kvscope_engine_kv_transfer_bytes:rate'
                            '{pd_group=~"$pd_group"})')],
                  unit=c.BYTES_PER_SECOND, thresholds=c.steps((c.NEUTRAL, None))),
           width=8, height=4),
    c.Cell(c.stat("Worst TTFT p99",
                  "The highest p99 time to first token among the group's engines, over 5 "
                  "minutes (EngineTTFTHigh).",
                  [c.target("max(\n  " + c.in_pd_group(
                      "engine:kvscope_engine_time_to_first_token_seconds:p99") + "\n)")],
                  unit=c.SECONDS, thresholds=c.TTFT_STEPS), width=8, height=4),
])

queues = c.Row("Queues", [
    c.Cell(c.timeseries("Requests waiting and running",
                        "Prefill waiting climbing while decode idles: prefill is the "
                        "bottleneck; decode waiting climbing: decode is short of KV cache.",
                        [c.target(by_role("kvscope_engine_requests_waiting"), "{{role}} waiting"),
                         c.target(by_role("kvscope_engine_requests_running"), "{{role}} running")],
                        unit=c.SHORT, minimum=0, overrides=c.role_overrides()), width=12),
    c.Cell(c.timeseries("PD queue stages",
                        "Requests in each PD hand-off stage (bootstrap, inflight, prealloc, "
                        "transfer, ...): a stage that fills up names the slow side of the "
                        "hand-off.",
                        [c.target(by_role("kvscope_engine_pd_queue_requests", "stage"),
                                  "{{role}} {{stage}}")],
                        unit=c.SHORT, minimum=0, stack=True), width=12),
])

cache = c.Row("KV cache", [
    c.Cell(c.timeseries("KV cache usage",
                        "Share of the KV cache in use per engine; near 1 the engine retracts "
                        "or preempts requests (EngineKVCacheNearFull).",
                        [c.target("max by (pd_group, role, pod) (\n  "
                                  + c.in_pd_group("kvscope_engine_kv_cache_usage_ratio")
                                  + "\n)", "{{role}} {{pod}}")],
                        unit=c.RATIO, minimum=0, maximum=1, thresholds=c.KV_CACHE_STEPS,
                        show_thresholds=True, overrides=c.role_overrides()), width=12),
    c.Cell(c.timeseries("Prefix-cache hit ratio",
                        "Hit tokens over queried tokens (the counter pair, so it is right over "
                        "any window), per role and cache (the engine's own, LMCache's); the "
                        "lines are EnginePrefixCacheHitRateLow's.",
                        [c.target(by_role("rate(kvscope_engine_prefix_cache_hit_tokens_total"
                                          "[$__rate_interval])", "engine")
                                  + "\n/\n"
                                  + by_role("rate(kvscope_engine_prefix_cache_query_tokens_total"
                                            "[$__rate_interval])", "engine"),
                                  "{{role}} {{engine}}")],
                        unit=c.RATIO, minimum=0, maximum=1, thresholds=c.HIT_RATIO_STEPS,
                        show_thresholds=True, overrides=c.role_overrides()), width=12),
])

latency = c.Row("Latency", [
    c.Cell(c.timeseries("Time to first token",
                        "TTFT p50 and p99 per role from the engines' histograms (p99 above "
                        "1 s warns, above 2 s pages).",
                        [c.target(quantile(0.5, "kvscope_engine_time_to_first_token_seconds"),
                                  "{{role}} p50"),
                         c.target(quantile(0.99, "kvscope_engine_time_to_first_token_seconds"),
                                  "{{role}} p99")],
                        unit=c.SECONDS, minimum=0, thresholds=c.TTFT_STEPS,
                        overrides=c.role_overrides()), width=12),
    c.Cell(c.timeseries("Inter-token latency",
                        "Time between output tokens, p50 and p99 per role.",
                        [c.target(quantile(0.5, "kvscope_engine_inter_token_latency_seconds"),
                                  "{{role}} p50"),
                         c.target(quantile(0.99, "kvscope_engine_inter_token_latency_seconds"),
                                  "{{role}} p99")],
                        unit=c.SECONDS, minimum=0, overrides=c.role_overrides()), width=12),
])

transfer = c.Row("KV transfer", [
    c.Cell(c.timeseries("KV transfer throughput",
                        "KV-cache bytes moved from prefill to decode per second.",
                        [c.target(by_role("rate(kvscope_engine_kv_transfer_bytes_total"
                                          "[$__rate_interval])", "pod"), "{{role}} {{pod}}")],
                        unit=c.BYTES_PER_SECOND, minimum=0, links=TO_NVLINK), width=8),
    c.Cell(c.timeseries("KV transfer speed while transferring",
                        "Bytes per second of transfer time: a few GB/s on NVLink or RDMA, far "
                        "less when the KV cache falls back to TCP (KVTransferThroughputLow).",
                        [c.target(by_role("rate(kvscope_engine_kv_transfer_bytes_total"
                                          "[$__rate_interval])", "pod")
                                  + "\n/\n"
                                  + by_role("rate(kvscope_engine_kv_transfer_seconds_total"
                                            "[$__rate_interval])", "pod"), "{{role}} {{pod}}")],
                        unit=c.BYTES_PER_SECOND, minimum=0, thresholds=c.KV_SPEED_STEPS,
                        show_thresholds=True, links=TO_NVLINK), width=8),
    c.Cell(c.timeseries("KV transfer failures",
                        "Failed KV transfers and bootstraps per second (KVTransferFailures).",
                        [c.target(by_role("rate(kvscope_engine_kv_transfer_failures_total"
                                          "[$__rate_interval])", "kind"), "{{role}} {{kind}}")],
                        unit=c.PER_SECOND, minimum=0, thresholds=c.RATE_OF_BAD_STEPS), width=8),
])

throughput = c.Row("Throughput", [
    c.Cell(c.timeseries("Tokens per second",
                        "Prompt tokens prefilled and tokens generated per second, per role.",
                        [c.target(PROMPT, "{{role}} prompt"),
                         c.target(GENERATED, "{{role}} generated")],
                        unit=c.PER_SECOND, minimum=0, overrides=c.role_overrides()), width=8),
    c.Cell(c.timeseries("Requests by outcome",
                        "Finished requests per second by outcome (success, aborted, error).",
                        [c.target(by_role("rate(kvscope_engine_requests_total[$__rate_interval])",
                                          "outcome"), "{{role}} {{outcome}}")],
                        unit=c.PER_SECOND, minimum=0), width=8),
    c.Cell(c.timeseries("Preemptions",
                        "Requests preempted or retracted per second: the KV cache ran out "
                        "(EnginePreemptionsHigh).",
                        [c.target(by_role("rate(kvscope_engine_preemptions_total"
                                          "[$__rate_interval])"), "{{role}}")],
                        unit=c.PER_SECOND, minimum=0, overrides=c.role_overrides()), width=8),
])

dashboard = c.dashboard(
    uid=c.UID_PD, title="kvscope / PD serving",
    description="Per PD group, prefill against decode: queues and PD stages, KV cache, "
                "prefix-cache hits, TTFT and inter-token latency, KV transfer, tokens, "
                "preemptions and cost per million tokens.",
    variables=[c.query_variable("pd_group", "PD group",
                                "label_values(kvscope_pod_gpu_info, pd_group)"),
               c.textbox_variable("gpu_hour_price", "$ per GPU-hour", "2.50")],
    rows=[overview, queues, cache, latency, transfer, throughput],
    alertnames="Engine.*|KVTransfer.*|PD.*",
)
