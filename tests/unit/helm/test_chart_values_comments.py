"""Every value of the chart is commented (helm/kvscope/values.yaml): each key has a comment line
right above it or on its line. Kubernetes objects passed through as they are (resources, the
update strategy, probe timings, list items) are commented once, at their parent."""

from __future__ import annotations

import re
from pathlib import Path

VALUES = Path(__file__).resolve().parents[3] / "helm" / "kvscope" / "values.yaml"
KEY = re.compile(r"^(?P<indent> *)(?P<item>- )?(?P<key>[A-Za-z][\w./-]*):")
# Parents whose children are Kubernetes API fields, documented by the parent's comment.
PASS_THROUGH = {("resources",), ("updateStrategy",), ("nodeSelector",), ("probes", "startup"),
                ("probes", "liveness"), ("probes", "readiness")}


def uncommented_keys(text: str) -> list[str]:
    lines = text.splitlines()
    path: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    missing = []
    in_list_item: int | None = None
    for number, line in enumerate(lines):
        match = KEY.match(line)
        if match is None:
            if line.lstrip().startswith("- "):
                in_list_item = len(line) - len(line.lstrip())
            continue
        indent = len(match["indent"])
        if in_list_item is not None and indent > in_list_item:
            continue  # inside a list item (e.g. a toleration): an example object
        in_list_item = None
        if match["item"]:
            in_list_item = indent
            continue
        while path and path[-1][0] >= indent:
            path.pop()
        parents = tuple(key for _, key in path)
        path.append((indent, match["key"]))
        if any(parents[:len(p)] == p for p in PASS_THROUGH):
            continue
        above = lines[number - 1].strip() if number else ""
        if not above.startswith("#") and "#" not in line:
            missing.append(".".join((*parents, match["key"])))
    return missing


def test_every_value_is_commented() -> None:
    assert uncommented_keys(VALUES.read_text()) == []


def test_the_check_finds_an_uncommented_key() -> None:
    text = "# the image\nimage:\n  # its tag\n  tag: x\n  pullPolicy: Always\n"
    assert uncommented_keys(text) == ["image.pullPolicy"]
