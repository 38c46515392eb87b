"""Inference-engine collector: scrape each engine's /metrics, normalize into kvscope_engine_*.

The package, by concern:

* discovery.py: static targets and this node's pods that ask to be scraped, vetted;
* accumulate.py: per-target state kept between scrapes (counters across engine restarts, parse
  caches), all of it bounded;
* schema.py: the exported name, type and HELP of every family;
* families.py: results into families, by table;
* collector.py: the collector, scraping every target concurrently under its own timeout.

The mapping from each engine's names to the normalized facts is parsers/engines.py.
"""

from kvscope.collectors.engines.accumulate import Accumulator, TargetState
from kvscope.collectors.engines.collector import EnginesCollector
from kvscope.collectors.engines.discovery import Discovered, Target, targets_from_pods

__all__ = ["Accumulator", "Discovered", "EnginesCollector", "Target", "TargetState",
           "targets_from_pods"]
