"""dcgm.compat in the config file and on the command line: clear errors, YAML's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvscope.config import ConfigError, load


@pytest.mark.parametrize(("text", "compat"), [
    ("dcgm: {compat: 4.9}\n", "4.9"), ("dcgm: {compat: 4.8}\n", "4.8"),
    ('dcgm: {compat: "4.10"}\n', "4.10"), ('dcgm: {compat: "4.8.3"}\n', "4.8.3"), ("", "4.8")])
def test_compat_from_yaml(tmp_path: Path, text: str, compat: str) -> None:
    path = tmp_path / "kvscope.yml"
    path.write_text(text)
    assert load(path).dcgm.compat == compat


def test_unquoted_4_10_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "kvscope.yml"
    path.write_text("dcgm: {compat: 4.10}\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert "'dcgm.compat'" in str(err.value) and 'compat: "4.10"' in str(err.value)


def test_unknown_generation_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load(None, {"dcgm.compat": "4.7"})
    message = str(err.value)
    assert "'dcgm.compat'" in message and "'4.8.3'" in message and "4.7" in message
    assert "\n" not in message
