"""The house rules on imports (ARCHITECTURE.md, "Inside the agent"), checked on the source:

* a collector imports no other collector and no HTTP server: what collectors share goes
  through collectors/shared.py, labels through collectors/labels.py;
* production code imports no simulator: only cli.py builds the simulated Backends;
* parsers are pure: no sources, no collectors.

Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "exporters" / "kvscope"
# Modules of collectors/ that are helpers every collector may use, not collectors.
COLLECTOR_HELPERS = frozenset({"__init__", "base", "labels", "shared", "dcgm_compat",
                               "registry"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every import in `path`, relative ones resolved."""
    package = module_name(path) if path.name == "__init__.py" else \
        module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # `from kvscope.collectors import gpu`
                yield node.lineno, f"{base}.{alias.name}"


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "podresources" not in p.parts)


def collector_unit(module: str) -> str | None:
    """The collector a module belongs to (`gpu`; `engines` for collectors.engines.*; `rdma` for
    a collector's own helper module such as collectors.rdma_schema), or None for the shared
    helpers and modules outside collectors/."""
    parts = module.split(".")
    if parts[:2] != ["kvscope", "collectors"] or len(parts) < 3:
        return None
    return None if parts[2] in COLLECTOR_HELPERS else parts[2].split("_")[0]


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(rule: str) -> list[str]:
    found = []
    for path in sources():
        me = module_name(path)
        where = path.relative_to(ROOT)
        for line, target in imports(path):
            if rule == "collectors":
                mine, theirs = collector_unit(me), collector_unit(target)
                if mine is not None and theirs is not None and theirs != mine:
                    found.append(f"{where}:{line} imports collector {target}")
                if mine is not None and within(target, "kvscope.web"):
                    found.append(f"{where}:{line} imports the web server ({target})")
            elif rule == "simulator":
                if within(me, "kvscope.sim") or me == "kvscope.cli":
                    continue
                if within(target, "kvscope.sim"):
                    found.append(f"{where}:{line} imports the simulator ({target})")
            elif rule == "parsers" and within(me, "kvscope.parsers"):
                for banned in ("kvscope.sources", "kvscope.collectors"):
                    if within(target, banned):
                        found.append(f"{where}:{line} imports {target}")
    return found


@pytest.mark.parametrize("rule", ["collectors", "simulator", "parsers"])
def test_import_rule_holds(rule: str) -> None:
    assert violations(rule) == []


def test_the_checker_sees_a_broken_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules would catch each kind of import they forbid (so an empty list means clean)."""
    fake = tmp_path / "kvscope"
    for rel, text in {
        "collectors/gpu.py": "def f():\n    from kvscope.collectors.nvlink import gpu_labels\n",
        "collectors/engines/__init__.py": "from . import discovery\n",
        "collectors/engines/discovery.py": "from kvscope.web import server\n",
        "collectors/rdma.py": "from kvscope.collectors.rdma_schema import EADM_NAMES\n",
        "app.py": "import kvscope.sim.scenarios\n",
        "parsers/pci.py": "from kvscope.sources import nvml\n",
    }.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert violations("collectors") == [
        "kvscope/collectors/engines/discovery.py:1 imports the web server (kvscope.web)",
        "kvscope/collectors/engines/discovery.py:1 imports the web server (kvscope.web.server)",
        "kvscope/collectors/gpu.py:2 imports collector kvscope.collectors.nvlink",
        "kvscope/collectors/gpu.py:2 imports collector kvscope.collectors.nvlink.gpu_labels"]
    assert violations("simulator") == ["kvscope/app.py:1 imports the simulator "
                                       "(kvscope.sim.scenarios)"]
    assert violations("parsers") == ["kvscope/parsers/pci.py:1 imports kvscope.sources",
                                     "kvscope/parsers/pci.py:1 imports kvscope.sources.nvml"]
