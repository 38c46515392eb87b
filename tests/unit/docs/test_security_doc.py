"""docs/security.md names the tests that prove each fix of issue #15: every one it names must
exist, so the table cannot keep pointing at a test that was renamed or removed, and every item
1-16 has a row."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "security.md"

# `tests/x/test_y.py::test_z` and, after it in the same cell, `::test_w` (same file).
_CELL_REF = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`")


def _references() -> list[tuple[str, str | None]]:
    refs: list[tuple[str, str | None]] = []
    for row in DOC.read_text().splitlines():
        current: str | None = None
        for file, name, same_file in _CELL_REF.findall(row):
            if file:
                current = file
                refs.append((file, name or None))
            elif same_file:
                assert current is not None, f"'::{same_file}' without a file before it: {row}"
                refs.append((current, same_file))
    return refs


def test_every_named_test_exists() -> None:
    refs = _references()
    assert len(refs) > 30
    for file, name in refs:
        path = REPO / file
        assert path.is_file(), file
        if name is not None:
            assert re.search(rf"^(async )?def {name}\(", path.read_text(), re.M), \
                f"{file}::{name} is named in docs/security.md but does not exist"


def test_every_item_of_the_issue_has_a_row() -> None:
    rows = re.findall(r"^\| (\d+) \|", DOC.read_text(), re.M)
    assert rows == [str(n) for n in range(1, 17)]


def test_the_readme_links_it() -> None:
    assert "(docs/security.md)" in (REPO / "README.md").read_text()
