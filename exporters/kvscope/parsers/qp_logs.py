"""Classify engine log lines that report RDMA queue-pair failures, and read pods from log paths.

None of the transfer engines exports a "QP create failed" counter, so the lines they log are the
signal. Patterns, per framework (formats from each project's source):
- DLSlime: `\\033[1;91m[Error]\\033[m <file>: <func>: Line<n>: Failed to create QP` (<= 0.0.1.post7)
  and `[ERROR] <file>:<line>: <func>: [<dev>] Failed to create QP <qpn>: <strerror>` later;
  `Failed to modify QP to INIT|RTR|RTS`. Colour codes are stripped first.
- Mooncake: glog lines `E0523 06:18:19.069025  2716 rdma_endpoint.cpp:408] ...` with
  `Failed to create QP` or `[Handshake] Failed to modify QP to RESET|INIT|RTR|RTS`.
- UCX (and NIXL, whose UCX backend prints UCX's lines): `UCX  ERROR ... failed to create RC QP
  TX wr:... sge:...`, `iface=0x...: failed to create QP`, `mlx5dv_create_qp(...) failed`.
- perftest: `Unable to create QP.`, `Failed to create QP.`, `Couldn't create IB resources`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_LINE = 8192  # longer lines are truncated before matching; failure messages are short

_GLOG = re.compile(r"(?:^|\s)[EWF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.-]+:\d+\] ")
_DLSLIME_TAG = re.compile(r"\[(?:Error|ERROR|Fatal|FATAL)\]")
_UCX_TAG = re.compile(r"\bUCX\s+(?:ERROR|WARN|DIAG)\b")
_CREATE = re.compile(r"[Ff]ailed to create (?:\w+ )?QP\b")
_MODIFY = re.compile(r"Failed to modify QP(?:\[\d+\])? to (RESET|INIT|RTR|RTS)")
_UCX_CREATE = re.compile(r"failed to create (?:\w+ )?QP|mlx5dv_create_qp\(.*\) failed")
_PERFTEST = re.compile(r"Unable to create QP\.|^\s*Failed to create QP\.\s*$|"
                       r"Couldn't create IB resources")

# /var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log
_PODS_PATH = re.compile(r"/pods/(?P<ns>[^_/]+)_(?P<pod>[^_/]+)_[^/]+/(?P<container>[^/]+)/[^/]+$")
# /var/log/containers/<pod>_<namespace>_<container>-<64 hex id>.log
_CONTAINERS_PATH = re.compile(
    r"/containers/(?P<pod>[^_/]+)_(?P<ns>[^_/]+)_(?P<container>.+)-[0-9a-f]{64}\.log$")


@dataclass(frozen=True)
class QpFailure:
    kind: str  # "create" | "modify"
    framework: str  # dlslime | mooncake | ucx | perftest | other


@dataclass(frozen=True)
class PodRef:
    namespace: str
    pod: str
    container: str


def _framework(line: str) -> str:
    if _DLSLIME_TAG.search(line) and ("Line" in line or ".cpp" in line):
        return "dlslime"
    if _GLOG.search(line):
        return "mooncake"
    if _UCX_TAG.search(line):
        return "ucx"
    return "other"


def classify(raw: str) -> QpFailure | None:
    """The QP failure a log line reports, or None. Never raises."""
    line = ANSI.sub("", raw[:MAX_LINE])
    if _MODIFY.search(line):
        return QpFailure("modify", _framework(line))
    framework = _framework(line)
    if framework == "ucx" and _UCX_CREATE.search(line):
        return QpFailure("create", "ucx")
    if framework != "ucx" and _CREATE.search(line):
        if framework == "other" and _PERFTEST.search(_cri_message(line)):
            return QpFailure("create", "perftest")
        return QpFailure("create", framework)
    if _PERFTEST.search(_cri_message(line)):
        return QpFailure("create", "perftest")
    return None


_CRI = re.compile(r"^\S+Z (?:stdout|stderr) [FP] ")


def _cri_message(line: str) -> str:
    """The message of a CRI log line (`<RFC3339> stderr F <message>`); other lines unchanged."""
    return _CRI.sub("", line, count=1)


def pod_from_path(path: str) -> PodRef | None:
    for pattern in (_PODS_PATH, _CONTAINERS_PATH):
        m = pattern.search(path)
        if m:
            return PodRef(m.group("ns"), m.group("pod"), m.group("container"))
    return None
