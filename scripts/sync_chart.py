#!/usr/bin/env python3
"""Copy the alert rules and dashboards into the Helm chart, which cannot read outside itself.

    python3 scripts/sync_chart.py           update helm/kvscope/files/ from the sources
    python3 scripts/sync_chart.py --check   exit 1, listing each difference, when the chart's
                                            copies are not exactly the sources

Sources (each may be absent or empty: the chart then ships none, and says so in NOTES.txt):
    alerts/src/*.yaml          rule templates with ${name} placeholders -> files/rules/
    alerts/thresholds.yaml     the placeholders' defaults               -> files/thresholds.yaml
    dashboards/generated/*.json                                         -> files/dashboards/

Copies are byte for byte; files in the chart with no source are removed. Standard library only.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHART_FILES = Path("helm/kvscope/files")


@dataclass(frozen=True)
class Tree:
    """One source directory (or file) mirrored into the chart."""

    source: Path  # relative to the repository
    target: Path
    pattern: str | None  # a glob for directories; None for a single file


TREES = (
    Tree(Path("alerts/src"), CHART_FILES / "rules", "*.yaml"),
    Tree(Path("alerts/thresholds.yaml"), CHART_FILES / "thresholds.yaml", None),
    Tree(Path("dashboards/generated"), CHART_FILES / "dashboards", "*.json"),
)


def wanted(repo: Path) -> dict[Path, bytes]:
    """Every chart file the sources call for (relative path -> content)."""
    out: dict[Path, bytes] = {}
    for tree in TREES:
        source = repo / tree.source
        if tree.pattern is None:
            if source.is_file():
                out[tree.target] = source.read_bytes()
            continue
        if source.is_dir():
            for path in sorted(source.glob(tree.pattern)):
                if path.is_file():
                    out[tree.target / path.name] = path.read_bytes()
    return out


def present(repo: Path) -> dict[Path, bytes]:
    """The chart's current copies, for the same patterns."""
    out: dict[Path, bytes] = {}
    for tree in TREES:
        target = repo / tree.target
        if tree.pattern is None:
            if target.is_file():
                out[tree.target] = target.read_bytes()
            continue
        if target.is_dir():
            for path in sorted(target.glob(tree.pattern)):
                if path.is_file():
                    out[tree.target / path.name] = path.read_bytes()
    return out


def differences(repo: Path) -> list[str]:
    """One line per chart file that is missing, stale or different; empty when in sync."""
    want, have = wanted(repo), present(repo)
    lines = []
    for path in sorted(want.keys() | have.keys()):
        if path not in have:
            lines.append(f"{path}: missing (its source is new)")
        elif path not in want:
            lines.append(f"{path}: its source is gone")
        elif want[path] != have[path]:
            lines.append(f"{path}: differs from its source")
    return lines


def sync(repo: Path) -> list[str]:
    """Make the chart's copies equal the sources; return what changed."""
    changed = differences(repo)
    want, have = wanted(repo), present(repo)
    for path in have.keys() - want.keys():
        (repo / path).unlink()
    for path, content in want.items():
        if have.get(path) != content:
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_bytes(content)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="report differences and exit 1 instead of copying")
    parser.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        lines = differences(args.repo)
        for line in lines:
            print(f"sync_chart: {line}", file=sys.stderr)
        if lines:
            print("sync_chart: the chart is out of date: run python3 scripts/sync_chart.py",
                  file=sys.stderr)
            return 1
        return 0
    for line in sync(args.repo):
        print(f"sync_chart: updated {line.split(':', 1)[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
