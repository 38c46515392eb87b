"""Parser for Alibaba's `eadm stat -d <dev>` and `eadm ver` output.

No text capture of eadm output is public (Alibaba documents it with screenshots only), so the
format is inferred: one `key : value` line per counter of the out-of-tree erdma driver
(`erdma_stats_names[]`, 55 names), and "Query kernel driver version: 0.2.38" for `ver`. The
parser is therefore tolerant: any line whose key is an identifier and whose value is an unsigned
integer counts, whatever the padding or separator (":" or "="); headers, blank lines and lines
with two separators are skipped. A non-numeric value ("N/A") is malformed only on a line that
names a counter (a driver name, or a key ending in `_cnt` as every driver counter does): a header
such as "Device: erdma_0" or "Port : 1" is skipped, not an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvscope.parsers.numbers import parse_u64

# The OOT driver's counter names, in its enum order (erdma_stats.c). Their exported names are
# the collector's (collectors/rdma_schema.EADM_NAMES).
OOT_COUNTERS: tuple[str, ...] = (
    "listen_create_cnt", "listen_ipv6_cnt", "listen_success_cnt", "listen_failed_cnt",
    "listen_destroy_cnt", "accept_total_cnt", "accept_success_cnt", "accept_failed_cnt",
    "reject_cnt", "reject_failed_cnt", "connect_total_cnt", "connect_success_cnt",
    "connect_failed_cnt", "connect_timeout_cnt", "connect_reset_cnt", "cmdq_submitted_cnt",
    "cmdq_comp_cnt", "cmdq_eq_notify_cnt", "cmdq_eq_event_cnt", "cmdq_cq_armed_cnt",
    "erdma_aeq_event_cnt", "erdma_aeq_notify_cnt", "verbs_alloc_mr_cnt",
    "verbs_alloc_mr_failed_cnt", "verbs_alloc_pd_cnt", "verbs_alloc_pd_failed_cnt",
    "verbs_alloc_uctx_cnt", "verbs_alloc_uctx_failed_cnt", "verbs_create_cq_cnt",
    "verbs_create_cq_failed_cnt", "verbs_create_qp_cnt", "verbs_create_qp_failed_cnt",
    "verbs_dealloc_pd_cnt", "verbs_dealloc_uctx_cnt", "verbs_dereg_mr_cnt",
    "verbs_dereg_mr_failed_cnt", "verbs_destroy_cq_cnt", "verbs_destroy_cq_failed_cnt",
    "verbs_destroy_qp_cnt", "verbs_destroy_qp_failed_cnt", "verbs_get_dma_mr_cnt",
    "verbs_get_dma_mr_failed_cnt", "verbs_reg_usr_mr_cnt", "verbs_reg_usr_mr_failed_cnt",
    "hw_tx_reqs_cnt", "hw_tx_packets_cnt", "hw_tx_bytes_cnt", "hw_disable_drop_cnt",
    "hw_bps_limit_drop_cnt", "hw_pps_limit_drop_cnt", "hw_rx_packets_cnt", "hw_rx_bytes_cnt",
    "hw_rx_disable_drop_cnt", "hw_rx_bps_limit_drop_cnt", "hw_rx_pps_limit_drop_cnt",
)
_KNOWN = frozenset(OOT_COUNTERS)

_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*[:=]\s*(\S.*?)\s*$")
_VERSION = re.compile(r"version\s*:?\s*v?(\d+(?:\.\d+)+)", re.IGNORECASE)


@dataclass(frozen=True)
class EadmStats:
    counters: Mapping[str, int] = field(default_factory=dict)
    # (key, value) of counter lines whose value is not an unsigned integer
    malformed_lines: tuple[tuple[str, str], ...] = ()
    error: str | None = None  # set when nothing usable came out

    @property
    def malformed(self) -> int:
        return len(self.malformed_lines)


def names_a_counter(key: str) -> bool:
    """True for a driver counter name; False for header keys such as "Device" or "Port"."""
    return key in _KNOWN or key.endswith("_cnt")


def parse_stat(text: str) -> EadmStats:
    counters: dict[str, int] = {}
    malformed: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.count(":") + line.count("=") != 1:
            continue  # blank, header, or ambiguous ("a : b : c"): not a counter line
        m = _LINE.match(line)
        if m is None:
            continue
        key, value = m.group(1), m.group(2)
        number = parse_u64(value)
        if number is not None:
            counters[key] = number
        elif names_a_counter(key):  # "N/A", "-3", or wider than the driver's 64 bits
            malformed.append((key, value[:80]))
    if not counters:
        what = "empty output" if not text.strip() else "no 'name : value' counter lines"
        return EadmStats({}, tuple(malformed), what)
    return EadmStats(counters, tuple(malformed))


def parse_version(text: str) -> str | None:
    m = _VERSION.search(text)
    return m.group(1) if m else None
