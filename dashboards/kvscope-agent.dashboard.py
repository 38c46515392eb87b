"""kvscope itself: is every agent up, is every collector fresh, and what does it cost?

Series count and exposition size per node come from Prometheus' own scrape series
(`scrape_samples_scraped`; `scrape_body_size_bytes` needs Prometheus'
`--enable-feature=extra-scrape-metrics`).
"""

from dashboards import common as c

INCIDENT_ONLY = c.IncidentOnly()

SEL = c.ON_NODE
TARGET = 'job=~"$job", instance=~"$node"'
# Engine series carry the engine's own `instance` (honor_labels keeps it), so they cannot be
# filtered by node: they are selected by job.
ENGINES = 'job=~"$job"'
TO_NODE = c.data_links(("GPU node: ${__field.labels.instance}",
                        c.dashboard_url(c.UID_NODE, node="${__field.labels.instance}")))

agents = c.Row("Agents", [
    c.Cell(c.stat("Agents up", "Scrape targets of the kvscope job that answered "
                  "(KvscopeAgentDown fires on 0).",
                  [c.target(f"sum(up{{{TARGET}}})")], unit=c.SHORT,
                  thresholds=c.UP_STEPS), width=6, height=4),
    c.Cell(c.stat("Collectors down", "Collectors whose last poll failed or went stale, over "
                  "every selected node (KvscopeCollectorDown).",
                  [c.target(f"sum(1 - min without (tier) (kvscope_collector_up{{{SEL}}}))")],
                  unit=c.SHORT,
                  thresholds=c.ZERO_GOOD_STEPS), width=6, height=4),
    c.Cell(c.stat("Engines down", "Engine endpoints the agents could not scrape.",
                  [c.target(f"sum(1 - kvscope_engine_up{{{ENGINES}}})")], unit=c.SHORT,
                  thresholds=c.ZERO_GOOD_STEPS), width=6, height=4),
    c.Cell(c.table("Versions", "Agents per kvscope version.",
                   [c.target(f"count by (version) (kvscope_build_info{{{SEL}}})", table=True)],
                   rename={"Value": "agents"}), width=6, height=4),
])

collectors = c.Row("Collectors", [
    c.Cell(c.table("Collector health",
                   "Each collector's state per node and cadence tier: 1 when every source of "
                   "the tier's last poll succeeded and the tier is fresh.",
                   [c.target(f"kvscope_collector_up{{{SEL}}}", table=True)],
                   rename={"Value": "up"}, mappings=c.UP_MAPPINGS, thresholds=c.UP_STEPS,
                   cell_colour=True), width=8, height=9),
    c.Cell(c.timeseries("Poll duration",
                        "Wall time of each collector's last poll, per cadence tier: a tier "
                        "near its timeout is about to be counted as failed.",
                        [c.target(f"max by (collector, tier) "
                                  f"(kvscope_collector_duration_seconds{{{SEL}}})",
                                  "{{collector}} {{tier}}")],
                        unit=c.SECONDS, minimum=0), width=8, height=9),
    c.Cell(c.timeseries("Time since last success",
                        "Age of each collector's last good poll; a snapshot older than "
                        "staleness_factor intervals is dropped from /metrics.",
                        [c.target(f"max by (collector, tier) (time() - "
                                  f"kvscope_collector_last_success_timestamp_seconds{{{SEL}}})",
                                  "{{collector}} {{tier}}")],
                        unit=c.SECONDS, minimum=0), width=8, height=9),
    c.Cell(INCIDENT_ONLY.mark(
        c.timeseries("Collector errors",
                     "Failed polls per second by collector and reason (timeout, busy: the "
                     "previous read still hung, or the source's own reason).",
                     [c.target(f"sum by (instance, collector, reason) "
                               f"(rate(kvscope_collector_errors_total{{{SEL}}}[$__rate_interval]))",
                               "{{instance}} {{collector}} {{reason}}")],
                     unit=c.PER_SECOND, minimum=0, thresholds=c.RATE_OF_BAD_STEPS),
        scenario="nvml-hang", when="a collector's poll fails (here: an NVML call hangs)"),
           width=12),
    c.Cell(INCIDENT_ONLY.mark(
        c.timeseries("Engine scrape errors",
                     "Failed scrapes of inference-engine endpoints per second, by reason.",
                     [c.target("sum by (engine, role, reason) (rate(\n"
                               f"  kvscope_engine_scrape_errors_total{{{ENGINES}}}"
                               "[$__rate_interval]\n))",
                               "{{engine}} {{role}} {{reason}}")],
                     unit=c.PER_SECOND, minimum=0, thresholds=c.RATE_OF_BAD_STEPS),
        scenario="engine-down", when="an engine stops answering"), width=12),
    c.Cell(c.timeseries("Engine scrape duration",
                        "Time the agent took to fetch and parse each engine's metrics.",
                        [c.target("max by (engine, role, pod) "
                                  f"(kvscope_engine_scrape_duration_seconds{{{ENGINES}}})",
                                  "{{engine}} {{role}} {{pod}}")],
                        unit=c.SECONDS, minimum=0), width=24),
])

cost = c.Row("Cost", [
    c.Cell(c.timeseries("Series per node",
                        "Samples in each agent's exposition (Prometheus' scrape_samples_scraped): "
                        "about 1,200 on an 8-GPU node with the defaults.",
                        [c.target(f"scrape_samples_scraped{{{TARGET}}}", "{{instance}}")],
                        unit=c.SHORT, minimum=0, links=TO_NODE), width=8),
    c.Cell(c.timeseries("Exposition size per node",
                        "Uncompressed bytes of each scrape body (scrape_body_size_bytes; needs "
                        "Prometheus' --enable-feature=extra-scrape-metrics).",
                        [c.target(f"scrape_body_size_bytes{{{TARGET}}}", "{{instance}}")],
                        unit=c.BYTES, minimum=0, links=TO_NODE), width=8),
    c.Cell(c.timeseries("Scrape duration",
                        "How long Prometheus waited for each agent's /metrics; the agent "
                        "serves a finished snapshot, so this stays in milliseconds.",
                        [c.target(f"scrape_duration_seconds{{{TARGET}}}", "{{instance}}")],
                        unit=c.SECONDS, minimum=0), width=8),
    c.Cell(c.timeseries("Agent CPU",
                        "CPU seconds per second of each agent process.",
                        [c.target(f"rate(process_cpu_seconds_total{{{TARGET}}}[$__rate_interval])",
                                  "{{instance}}")],
                        unit=c.SHORT, minimum=0), width=12),
    c.Cell(c.timeseries("Agent memory",
                        "Resident memory of each agent process.",
                        [c.target(f"process_resident_memory_bytes{{{TARGET}}}", "{{instance}}")],
                        unit=c.BYTES, minimum=0), width=12),
])

dashboard = c.dashboard(
    uid=c.UID_AGENT, title="kvscope / agent",
    description="kvscope itself: agents and collectors up, poll durations and errors, engine "
                "scrapes, series count and exposition size, the agent's own CPU and memory.",
    variables=[c.query_variable("job", "Job", "label_values(kvscope_build_info, job)",
                                multi=True, include_all=True),
               c.query_variable("node", "Node",
                                'label_values(kvscope_build_info{job=~"$job"}, instance)',
                                multi=True, include_all=True)],
    rows=[agents, collectors, cost],
    alertnames="Kvscope.*",
)
