"""Prometheus text (0.0.4) and OpenMetrics 1.0 exposition into typed samples.

Why not `prometheus_client.parser.text_string_to_metric_families`: it costs about 19 ms of CPU per
100 KB of engine exposition (measured on this project's benchmark host), so 16 engine targets
would cost 300 ms per cycle against a 50 ms budget, and the OpenMetrics parser rejects a whole
payload for one out-of-order line. This parser makes one pass over the lines, keeps only the
sample names the caller asks for (the normalizer's table), and skips a malformed line instead of
failing the payload: the count of skipped lines is part of the result. The tests check it
against prometheus_client's parser on every fixture.

What both formats share is all that matters here: `name{labels} value [timestamp]`. OpenMetrics
extras (`# UNIT`, `# EOF`, exemplars after ` # `) are accepted and ignored; timestamps are
ignored (the agent stamps its own scrape time).
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# A quoted label value may contain `}` (IBM's TGI fork: method="{'method': 'prefill'}") and
# escaped quotes, so the label block is matched as a sequence of tokens, not up to the first `}`.
_LINE = re.compile(
    r'([a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{((?:[^"}]|"(?:[^"\\\n]|\\.)*")*)\})?'
    r'[ \t]+([^ \t#]+)'
    r'(?:[ \t]+[^ \t#]+)?'  # timestamp
    r'[ \t]*(?:#.*)?$'  # OpenMetrics exemplar
)
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*,?')
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}


class Sample(NamedTuple):
    name: str
    labels: Mapping[str, str]
    value: float
    series: str = ""  # canonical identity: name and sorted labels (stable across scrapes)
    le: float | None = None  # bucket bound of a `_bucket` sample


# Series text (everything before the value) -> its parsed sample. An engine prints the same
# series every scrape with only the values changed, so a per-target cache turns the label parse
# into a dict lookup. Bounded: cleared when it grows past CACHE_LIMIT (label churn).
ParseCache = dict[str, Sample]
CACHE_LIMIT = 200_000


@dataclass
class Exposition:
    """One parsed payload: the kept samples by name, plus what the whole payload contained."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)  # family name -> TYPE
    names: set[str] = field(default_factory=set)  # every sample name seen, kept or not
    valid_lines: int = 0
    invalid_lines: int = 0
    openmetrics: bool = False

    def get(self, name: str) -> list[Sample]:
        return self.samples.get(name, [])


@dataclass(frozen=True)
class ParseError:
    """The payload is not an exposition at all; `reason` is a short label for errors_total."""

    reason: str
    message: str


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), value)


def parse_labels(block: str) -> dict[str, str] | None:
    """`a="1",b="x"` into a dict; None when the block is not a well-formed label list."""
    labels: dict[str, str] = {}
    pos = 0
    end = len(block.rstrip())
    while pos < end:
        m = _LABEL.match(block, pos)
        if m is None:
            return None
        value = m.group(2)
        labels[m.group(1)] = _unescape(value) if "\\" in value else value
        pos = m.end()
    return labels


def parse_value(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _comment(line: str, expo: Exposition) -> None:
    if line.startswith("# HELP"):
        return  # the most common comment, and nothing here needs it
    parts = line.split(None, 3)
    if len(parts) >= 4 and parts[1] == "TYPE":
        expo.types[parts[2]] = parts[3].strip()
    elif len(parts) >= 2 and parts[1] == "EOF":
        expo.openmetrics = True


def parse(text: str, keep: Container[str] | None = None,
          cache: ParseCache | None = None) -> Exposition | ParseError:
    """Parse `text`; samples whose name is not in `keep` are only noted in `names`.

    Never raises. A payload that has lines but not one valid sample is a ParseError; an empty
    payload is a valid, empty exposition (Mooncake's master serves nothing until a metric moves).
    """
    if "\x00" in text:
        return ParseError("parse", "binary data (NUL bytes) instead of exposition text")
    expo = Exposition()
    seen: dict[str, int] = {}  # name -> lines; names are validated once each, at the end
    run = ""  # name of the previous skipped line: families come in runs of lines
    for line in text.split("\n"):
        if cache is not None and _hit(line, cache, expo.samples, seen):
            continue
        if run and line.startswith(run) and line[len(run):len(run) + 1] in ("{", " "):
            seen[run] += 1
            continue
        if not line or line.isspace():
            continue
        if line[0] == "#":
            _comment(line, expo)
            continue
        run = _line(line, keep, cache, expo, seen)
    return _finish(expo, seen)


def _hit(line: str, cache: ParseCache, samples: dict[str, list[Sample]],
         seen: dict[str, int]) -> bool:
    """The hot path after the first scrape: one split and one lookup per line."""
    head, _, raw = line.rpartition(" ")
    known = cache.get(head)
    if known is None:
        return False
    if known.le != _SKIP:
        try:
            value = float(raw)
        except ValueError:
            return False
        samples.setdefault(known.name, []).append(
            Sample(known.name, known.labels, value, known.series, known.le))
    seen[known.name] = seen.get(known.name, 0) + 1
    return True


def _line(line: str, keep: Container[str] | None, cache: ParseCache | None, expo: Exposition,
          seen: dict[str, int]) -> str:
    """One sample line; returns the name when the line was skipped (the start of a run)."""
    brace = line.find("{")
    space = line.find(" ")
    cut = brace if brace != -1 and (space == -1 or brace < space) else space
    name = line[:cut] if cut != -1 else line
    seen[name] = seen.get(name, 0) + 1
    if keep is not None and name not in keep:
        if cache is not None and _NAME.fullmatch(name):
            _remember_skip(line, name, cache)
        return name
    sample = _sample(line.rstrip("\r")) if _NAME.fullmatch(name) else None
    if sample is None:
        expo.invalid_lines += 1
        seen[name] -= 1
        return ""
    if cache is not None:
        _remember(line, sample, cache)
    expo.samples.setdefault(sample.name, []).append(sample)
    return ""


def _finish(expo: Exposition, seen: dict[str, int]) -> Exposition | ParseError:
    for name, lines in seen.items():
        if not lines:
            continue
        if _NAME.fullmatch(name):
            expo.names.add(name)
            expo.valid_lines += lines
        else:
            expo.invalid_lines += lines
    if expo.valid_lines == 0 and expo.invalid_lines > 0:
        return ParseError("parse", f"no valid sample in {expo.invalid_lines} lines")
    return expo


_SKIP = -1.0  # `le` of a cache entry for a line whose name is not kept (real bounds are >= 0)


def _remember_skip(line: str, name: str, cache: ParseCache) -> None:
    head, _, _ = line.rpartition(" ")
    if head.endswith("}") or head == name:
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[head] = Sample(name, {}, 0.0, "", _SKIP)


def _remember(line: str, sample: Sample, cache: ParseCache) -> None:
    """Cache the series text only when the line is exactly `series value` (no timestamp, no
    exemplar), so that a hit can never take a timestamp for the value."""
    head, _, raw = line.rpartition(" ")
    if " #" in head or not (head.endswith("}") or head == sample.name):
        return
    value = parse_value(raw)
    if value is None or not (value == sample.value or math.isnan(value)):
        return
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[head] = sample


def _identify(name: str, labels: dict[str, str], value: float) -> Sample:
    series = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    le = le_bound(labels) if name.endswith("_bucket") else None
    return Sample(name, labels, value, series, le)


def _sample(line: str) -> Sample | None:
    fast = _fast_sample(line)
    if fast is not None:
        return fast
    m = _LINE.match(line)
    if m is None:
        return None
    name, block, raw = m.group(1), m.group(2), m.group(3)
    labels = parse_labels(block) if block else {}
    value = parse_value(raw)
    if labels is None or value is None:
        return None
    return _identify(name, labels, value)


def _fast_sample(line: str) -> Sample | None:  # noqa: PLR0911 - each return declines a shape
    """The common shape without escapes or exemplars, by string splitting (about 4x cheaper
    than the regex). None means "not sure": the caller falls back to the full grammar."""
    if "\\" in line or " #" in line:
        return None
    brace = line.find("{")
    if brace == -1:
        parts = line.split()
        if len(parts) not in (2, 3):
            return None
        value = parse_value(parts[1])
        return None if value is None else _identify(parts[0], {}, value)
    close = line.rfind("}")
    if close < brace:
        return None
    rest = line[close + 1:].split()
    if len(rest) not in (1, 2):
        return None
    try:
        value = float(rest[0])
    except ValueError:
        return None
    labels: dict[str, str] = {}
    block = line[brace + 1:close].rstrip(", ")
    if block:
        if block[-1] != '"':
            return None
        for item in block[:-1].split('",'):
            key, sep, val = item.partition('="')
            if not sep or '"' in val or not key.isidentifier():
                return None  # spaces, odd quoting: the full grammar decides
            labels[key] = val
    return _identify(line[:brace], labels, value)


def le_bound(labels: Mapping[str, str]) -> float | None:
    """The numeric upper bound of a histogram bucket (`1.0`, `1`, `2.097152e+06`, `+Inf`)."""
    raw = labels.get("le")
    if raw is None:
        return None
    value = parse_value(raw)
    return None if value is None or math.isnan(value) else value
