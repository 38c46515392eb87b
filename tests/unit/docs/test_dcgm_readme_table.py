"""The README's side-by-side table of DCGM names is the compat table, rendered.

After changing collectors/dcgm_compat.py, regenerate:
`python tests/unit/docs/test_dcgm_readme_table.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"
START, END = "<!-- dcgm-generations -->", "<!-- /dcgm-generations -->"


def render() -> str:
    from kvscope.collectors.dcgm_compat import FIELDS, Naming

    def cell(naming: Naming, previous: Naming | None = None) -> str:
        name = "same" if previous is not None and naming.name == previous.name else (
            f"`{naming.name}`")
        notes = [naming.kind, naming.unit]
        if naming.status in ("confirmed", "derived", "unconfirmed"):
            notes.append(f"*{naming.status}*")
        if naming.default:
            notes.append("default")
        return f"{name} ({', '.join(notes)})"

    rows = ["| reading | 4.8 (4.8.0-4.8.2) | 4.8.3 (4.8.3-4.8.4) | 4.9 | 4.10 |",
            "|---|---|---|---|---|"]
    for f in FIELDS:
        g = f.generations
        rows.append(f"| {f.key} (DCGM field {f.dcgm_id}) | {cell(g['4.8'])} | "
                    f"{cell(g['4.8.3'], g['4.8'])} | {cell(g['4.9'], g['4.8.3'])} | "
                    f"{cell(g['4.10'], g['4.9'])} |")
    return "\n".join(rows)


def current() -> str:
    text = README.read_text()
    return text[text.index(START) + len(START):text.index(END)].strip()


def test_readme_table_matches_the_code() -> None:
    assert current() == render(), "run: python tests/unit/docs/test_dcgm_readme_table.py"


if __name__ == "__main__":
    sys.path.insert(0, str(README.parent / "exporters"))
    text = README.read_text()
    head, rest = text.split(START)
    _, tail = rest.split(END)
    README.write_text(f"{head}{START}\n{render()}\n{END}{tail}")
