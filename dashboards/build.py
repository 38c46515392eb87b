"""Generate the dashboards' JSON: `python -m dashboards.build [--check]` from the repository root.

Each `dashboards/<slug>.dashboard.py` defines a module-level `dashboard` (grafanalib's
convention); its JSON goes to `dashboards/generated/<slug>.json`, which is committed and which
the Helm chart ships, one ConfigMap per file. `--check` writes nothing and exits 1 when a
committed file differs from what the code generates, or when a generated file has no source.

We load the modules ourselves instead of using grafanalib's `generate-dashboards`, which does
not put the dashboards' directory on `sys.path` (grafanalib#58), so shared defaults cannot be
imported, and which would emit an empty `__inputs` that we never ship.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "generated"
SUFFIX = ".dashboard.py"


@dataclass(frozen=True)
class Source:
    slug: str
    path: Path

    @property
    def output(self) -> Path:
        return GENERATED / f"{self.slug}.json"


def sources(directory: Path = HERE) -> list[Source]:
    return [Source(path.name.removesuffix(SUFFIX), path)
            for path in sorted(directory.glob(f"*{SUFFIX}"))]


def load(source: Source) -> ModuleType:
    """Import one `*.dashboard.py` (its name has dots, so not through a normal import)."""
    root = str(HERE.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    name = f"dashboards._generated_{source.slug.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, source.path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"{source.path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "dashboard"):
        raise RuntimeError(f"{source.path}: defines no module-level `dashboard`")
    return module


def to_json_data(module: ModuleType) -> dict[str, Any]:
    """The dashboard as plain JSON data, without `__inputs` (the sidecar cannot resolve it)."""
    from grafanalib._gen import DashboardEncoder

    data: dict[str, Any] = json.loads(json.dumps(module.dashboard, cls=DashboardEncoder))
    data.pop("__inputs", None)
    return data


def render(module: ModuleType) -> str:
    return json.dumps(to_json_data(module), sort_keys=True, indent=2) + "\n"


def stale(rendered: dict[Path, str]) -> list[str]:
    """Every committed file that differs from its source, is missing, or has no source."""
    problems = []
    for path, body in rendered.items():
        if not path.exists():
            problems.append(f"{path.name}: missing")
        elif path.read_text(encoding="utf-8") != body:
            problems.append(f"{path.name}: differs from its .dashboard.py")
    problems += [f"{path.name}: no {path.stem}{SUFFIX} generates it"
                 for path in sorted(GENERATED.glob("*.json")) if path not in rendered]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__.split(
        "\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="fail when the committed JSON is stale; write nothing")
    args = parser.parse_args(argv)
    rendered = {source.output: render(load(source)) for source in sources()}
    if args.check:
        problems = stale(rendered)
        for problem in problems:
            print(f"dashboards/generated/{problem}", file=sys.stderr)
        if problems:
            print("dashboards: generated JSON is stale; run `python -m dashboards.build`",
                  file=sys.stderr)
            return 1
        return 0
    GENERATED.mkdir(exist_ok=True)
    for path, body in rendered.items():
        path.write_text(body, encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent)}")
    for path in sorted(GENERATED.glob("*.json")):
        if path not in rendered:
            path.unlink()
            print(f"removed {path.relative_to(HERE.parent)} (no source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
