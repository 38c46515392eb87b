"""Volcano HyperNodes (topology.volcano.sh/v1alpha1) -> this node's chain of switches.

A HyperNode is a network performance domain (a switch, usually): `spec.tier` (1 is closest to
the nodes) and `spec.members`, each `{type: Node|HyperNode, selector: {exactMatch: {name},
regexMatch: {pattern}, labelMatch: {matchLabels}}}`. The chain for a node is the tier-lowest
HyperNode that has the node as a member, then the HyperNode that has that one as a member, and
so on to the top. Two nodes' chains show where they meet: tier 1 (same leaf), tier 2, or only at
the core.

Pure and total: malformed objects are skipped, cycles end the chain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HyperNode:
    name: str
    tier: int
    members: tuple[tuple[str, Mapping[str, Any]], ...]  # (type, selector)


def parse_hypernodes(items: Iterable[Any]) -> list[HyperNode]:
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        meta, spec = item.get("metadata"), item.get("spec")
        if not isinstance(meta, dict) or not isinstance(spec, dict):
            continue
        name, tier = meta.get("name"), spec.get("tier")
        if not isinstance(name, str) or not isinstance(tier, int | str):
            continue
        try:
            tier_n = int(tier)
        except ValueError:
            continue
        members = []
        for m in spec.get("members") or []:
            if isinstance(m, dict) and isinstance(m.get("selector"), dict):
                members.append((str(m.get("type", "Node")), m["selector"]))
        out.append(HyperNode(name, tier_n, tuple(members)))
    return out


def _matches(selector: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> bool:
    exact = selector.get("exactMatch")
    if isinstance(exact, dict) and exact.get("name") == name:
        return True
    regex = selector.get("regexMatch")
    if isinstance(regex, dict) and isinstance(regex.get("pattern"), str):
        try:
            # Volcano uses Go's regexp.MatchString: a match anywhere unless anchored.
            if re.search(regex["pattern"], name):
                return True
        except re.error:
            return False
    label = selector.get("labelMatch")
    if isinstance(label, dict) and isinstance(label.get("matchLabels"), dict):
        wanted = label["matchLabels"]
        return bool(wanted) and all(labels.get(str(k)) == str(v) for k, v in wanted.items())
    return False


def _parent(hypernodes: list[HyperNode], kind: str, name: str,
            labels: Mapping[str, str], above: int) -> HyperNode | None:
    found = [h for h in hypernodes if h.tier > above
             and any(t == kind and _matches(sel, name, labels) for t, sel in h.members)]
    return min(found, key=lambda h: (h.tier, h.name)) if found else None


def switch_chain(hypernodes: list[HyperNode], node_name: str,
                 node_labels: Mapping[str, str]) -> list[tuple[int, str]]:
    """[(tier, hypernode name), ...] from the node's leaf up to the top."""
    chain: list[tuple[int, str]] = []
    current = _parent(hypernodes, "Node", node_name, node_labels, above=-1)
    seen: set[str] = set()
    while current is not None and current.name not in seen:
        seen.add(current.name)
        chain.append((current.tier, current.name))
        current = _parent(hypernodes, "HyperNode", current.name, {}, above=current.tier)
    return chain
