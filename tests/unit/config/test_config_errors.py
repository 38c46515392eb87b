"""Config mistakes are one line with what is allowed where the mistake is: in nested sections,
inside lists, in the web config; YAML errors keep line, column and reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from agent import kvscope
from kvscope.config import Config, _model_at, _unwrap, describe
from kvscope.web.webconfig import WebConfig


def _typo_everywhere(model: type[BaseModel], path: tuple[Any, ...] = ()) -> Iterator[
        tuple[tuple[Any, ...], type[BaseModel]]]:
    """(path of a section, its model) for every section a config file can hold, lists included
    (index 0)."""
    yield path, model
    for name, field in model.model_fields.items():
        inner = _unwrap(field.annotation)
        step: tuple[Any, ...] = (name,)
        element = _unwrap(inner, 0)
        if element is not inner:  # tuple[X, ...] / dict[str, X]: one level down
            step, inner = (name, 0), _unwrap(element)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from _typo_everywhere(inner, path + step)


def _nest(path: tuple[Any, ...], leaf: dict[str, Any]) -> Any:
    data: Any = leaf
    for part in reversed(path):
        data = [data] if isinstance(part, int) else {part: data}
    return data


@pytest.mark.parametrize("root", [Config, WebConfig])
def test_every_section_lists_its_own_keys(root: type[BaseModel]) -> None:
    sections = list(_typo_everywhere(root))
    assert len(sections) > (10 if root is Config else 2)
    for path, model in sections:
        with pytest.raises(ValidationError) as err:
            root.model_validate(_nest(path, {"zz_typo": 1}))
        line = describe(err.value, root)
        dotted = ".".join(str(p) for p in (*path, "zz_typo"))
        assert line.startswith(f"unknown key '{dotted}' (allowed here: "), line
        assert f"allowed here: {', '.join(sorted(model.model_fields))})" in line, line
        assert "none" not in line
        assert _model_at(path, root) is model


@pytest.mark.parametrize(("content", "expected"), [
    # inside a list
    ("collectors:\n  rdma:\n    qp_profiles:\n      - {name: x, send_sge: 1, recv_sge: 1, "
     "send_wr: 1, recv_wr: 1, inlin_data: 64}\n",
     "unknown key 'collectors.rdma.qp_profiles.0.inlin_data' (allowed here: clamps_to_device, "
     "description, inline_data, name, recv_sge, recv_wr, send_sge, send_wr)"),
    ("collectors:\n  engines:\n    targets:\n      - {urll: 'http://127.0.0.1:8000/metrics'}\n",
     "unknown key 'collectors.engines.targets.0.urll' (allowed here: engine, model, role, url)"),
    # nested sections
    ("collectors:\n  gpu:\n    cadence: {fats: 1}\n",
     "unknown key 'collectors.gpu.cadence.fats' (allowed here: fast, slow, static)"),
    ("collectors:\n  engines:\n    annotations: {scrap: x}\n",
     "unknown key 'collectors.engines.annotations.scrap' (allowed here: engine, model, path, "
     "port, role, scrape)"),
    ("paths: {sysf: /host/sys}\n", "unknown key 'paths.sysf' (allowed here: procfs, sysfs)"),
    # YAML: line, column and reason
    ("collectors:\n  gpu: {enabled: true\n",
     "line 3, column 1: not valid YAML: while parsing a flow mapping (line 2, column 8): "
     "expected ',' or '}', but got '<stream end>'"),
    ("collectors:\n  gpu:\n    enabled: true\n   timeout: 2\n",
     "line 4, column 4: not valid YAML: while parsing a block mapping (line 2, column 3): "
     "expected <block end>, but found '<block mapping start>'"),
    ("node_name: a: b\n", "line 1, column 13: not valid YAML: mapping values are not allowed "
     "here"),
])
def test_config_file_mistakes_through_the_cli(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "kvscope.yml"
    config.write_text(content)
    result = kvscope("collect", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"kvscope: error: config file {config}"), lines[0]
    assert expected in lines[0], lines[0]


def test_web_config_typo_lists_web_config_keys_not_the_main_configs(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\ntls_server_confg: {}\n")
    result = kvscope("demo", "--web.config.file", str(web), "--web.listen-address",
                     "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kvscope: error: web config {web}: unknown key 'tls_server_confg' (allowed here: "
        "auth_excluded_paths, basic_auth_users, http_server_config, tls_server_config)")
