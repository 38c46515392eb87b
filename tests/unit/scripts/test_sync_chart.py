"""scripts/sync_chart.py: the chart's copies of rules and dashboards follow their sources, and
--check (run here on the real checkout: this is the CI check) fails when they do not."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "sync_chart.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_chart", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sync_chart"] = module
    spec.loader.exec_module(module)
    return module


sync_chart = _load()


def test_the_checkout_chart_carries_the_current_rules_and_dashboards() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "alerts" / "src").mkdir(parents=True)
    (tmp_path / "alerts" / "src" / "gpu.yaml").write_text("groups: []\n")
    (tmp_path / "alerts" / "thresholds.yaml").write_text("rate_window: 5m\n")
    (tmp_path / "dashboards" / "generated").mkdir(parents=True)
    (tmp_path / "dashboards" / "generated" / "gpu-node.json").write_text('{"uid": "a"}\n')
    return tmp_path


def _check(repo: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = sync_chart.main(["--check", "--repo", str(repo)])
    return code, capsys.readouterr().err


def test_sync_copies_every_source_byte_for_byte(repo: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(repo, capsys)[0] == 1
    assert sync_chart.main(["--repo", str(repo)]) == 0
    files = repo / "helm" / "kvscope" / "files"
    assert (files / "rules" / "gpu.yaml").read_text() == "groups: []\n"
    assert (files / "thresholds.yaml").read_text() == "rate_window: 5m\n"
    assert (files / "dashboards" / "gpu-node.json").read_text() == '{"uid": "a"}\n'
    assert _check(repo, capsys) == (0, "")


def test_check_names_each_difference(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sync_chart.main(["--repo", str(repo)])
    files = repo / "helm" / "kvscope" / "files"
    (files / "rules" / "gpu.yaml").write_text("groups: [edited]\n")
    (repo / "dashboards" / "generated" / "pd-serving.json").write_text("{}\n")
    (repo / "alerts" / "thresholds.yaml").unlink()
    code, err = _check(repo, capsys)
    assert code == 1
    assert "helm/kvscope/files/rules/gpu.yaml: differs from its source" in err
    assert "helm/kvscope/files/dashboards/pd-serving.json: missing (its source is new)" in err
    assert "helm/kvscope/files/thresholds.yaml: its source is gone" in err
    assert "run python3 scripts/sync_chart.py" in err


def test_sync_removes_copies_whose_source_is_gone(repo: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    sync_chart.main(["--repo", str(repo)])
    (repo / "alerts" / "src" / "gpu.yaml").unlink()
    sync_chart.main(["--repo", str(repo)])
    assert not (repo / "helm" / "kvscope" / "files" / "rules" / "gpu.yaml").exists()
    assert _check(repo, capsys)[0] == 0


def test_no_sources_at_all_is_in_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(tmp_path, capsys) == (0, "")
    assert sync_chart.main(["--repo", str(tmp_path)]) == 0
