"""The PD role of a pod or engine: one rule, used by pod attribution and engine discovery alike.

A pod declares its role with the first configured label of `pd.role_labels` that it carries with
a non-empty value (`kvscope.io/pd-role`, `pd-role` by default):

* a value in `pd.prefill_values` (or `prefill`) is `prefill`, one in `pd.decode_values` (or
  `decode`) is `decode`, case-insensitively;
* any other value (`unified`, `aggregated`, `both`, `mixed`, ...) is `both`: the pod says it is
  part of a PD deployment and serves both phases;
* no such label: no role from labels (`label_role` returns None). Pod attribution then says
  `other` (not part of a PD deployment; `unknown` without the Kubernetes API); an engine target
  falls back to its `kvscope.io/role` annotation, the engine's own `engine_type` /
  `worker_type`, and then `both`, since an engine that says nothing runs both phases.

Only `prefill` and `decode` pods form PD pairs; `both` and `other` never do. Alerts and
dashboards select `role="prefill"` / `role="decode"` (or exclude `decode`), so the name of the
remaining roles changes no rule.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvscope.config import PdSettings

PREFILL = "prefill"
DECODE = "decode"
BOTH = "both"
OTHER = "other"
UNKNOWN = "unknown"  # no pod metadata (Kubernetes API off or unreachable)


def role_of_value(value: str | None, pd: PdSettings) -> str | None:
    """A declared role value as prefill, decode or both; None for an empty value."""
    text = (value or "").strip().lower()
    if not text:
        return None
    if text in (PREFILL, *pd.prefill_values):
        return PREFILL
    if text in (DECODE, *pd.decode_values):
        return DECODE
    return BOTH


def label_role(labels: Mapping[str, str], pd: PdSettings) -> str | None:
    """The role the first configured PD role label declares; None when the pod has none."""
    for key in pd.role_labels:
        role = role_of_value(labels.get(key), pd)
        if role is not None:
            return role
    return None
