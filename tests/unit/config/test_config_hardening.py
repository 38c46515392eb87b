"""Hostile or broken config files (#15 item 14): each is refused at load with one short line,
in bounded time and memory, whatever the file holds. The main config and the web config share
the reader, so each bound holds for both."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from kvscope.config import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_VALUES,
    WEEK_SECONDS,
    Config,
    ConfigError,
    _unwrap,
    load,
    parse_port,
    read_file,
)
from kvscope.web.webconfig import load_web_config

# An error line quotes at most 80 characters of a value; with the path, the key and the
# reason, a line stays far below this.
SHORT_LINE = 400


def _alias_bomb(levels: int) -> str:
    """A billion-laughs document: level n holds nine aliases of level n-1, so the text grows by
    ~33 bytes a level while the expanded value grows ninefold."""
    parts = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels + 1)]
    return f"node_name: [{', '.join(parts)}]\n"


def _refusal(tmp_path: Path, content: str | bytes, name: str = "kvscope.yml") -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load(path)
    line = str(err.value)
    assert "\n" not in line and len(line) < SHORT_LINE, line[:1000]
    assert line.startswith(f"config file {path}"), line
    return line


def test_an_alias_bomb_is_refused_where_it_crosses_the_bound(tmp_path: Path) -> None:
    # 9**6 = 531,441 strings from 318 bytes. Before the bound, the error line quoted the whole
    # expanded value: 3.7 MB here, 80 MB at 413 bytes, a MemoryError at 525.
    content = _alias_bomb(5)
    assert len(content) < 330 and MAX_VALUES < 9**6
    line = _refusal(tmp_path, content)
    assert f"more than {MAX_VALUES} values once YAML aliases are expanded" in line, line
    assert "line 1, column " in line


def test_a_flat_list_is_refused_at_the_value_that_crosses_the_bound(tmp_path: Path) -> None:
    # Counting per finished node let a list of 500,000 values be parsed whole (and held as
    # PyYAML nodes) before the check ran at its end; the count is now kept value by value.
    content = f"node_name: [{','.join(['1'] * 500_000)}]\n"
    line = _refusal(tmp_path, content)
    column = int(re.search(r"line 1, column (\d+):", line).group(1))  # type: ignore[union-attr]
    # node_name's mapping, its key and the list are 3 values; items are 2 characters apart.
    assert column == len("node_name: [") + 2 * (MAX_VALUES - 3) + 1, line


def test_moderate_aliases_stay_allowed(tmp_path: Path) -> None:
    # The decision: aliases are bounded, not banned; one anchor reused is ordinary YAML.
    config = tmp_path / "kvscope.yml"
    config.write_text("collectors:\n"
                      "  gpu: {cadence: &cadence {fast: 2, slow: 20}}\n"
                      "  nvlink: {cadence: *cadence}\n"
                      "  rdma: {cadence: {<<: *cadence, slow: 40}}\n")
    cfg = load(config)
    assert cfg.collectors.nvlink.cadence.slow == 20
    assert (cfg.collectors.rdma.cadence.fast, cfg.collectors.rdma.cadence.slow) == (2, 40)


@pytest.mark.parametrize("content", ["a: &a [*a]\n", "a: &a {b: [1, *a]}\n"])
def test_a_recursive_alias_is_refused(tmp_path: Path, content: str) -> None:
    assert "alias *a is inside the node it names" in _refusal(tmp_path, content)


@pytest.mark.parametrize("where", ["value", "key"])
def test_error_lines_quote_at_most_80_characters(tmp_path: Path, where: str) -> None:
    long = "x" * 200_000
    # An explicit key (`? `) may be longer than the 1,024 characters of a plain one.
    content = f"log_level: {long}\n" if where == "value" else f"collectors:\n  ? {long}\n  : 1\n"
    line = _refusal(tmp_path, content)
    assert f"{'x' * 80}... (200000 characters)" in line or \
        f"{'x' * 80}'... (200000 characters)" in line, line
    assert "x" * 81 not in line


def test_a_large_list_is_quoted_by_its_first_items(tmp_path: Path) -> None:
    line = _refusal(tmp_path, f"node_name: [{', '.join(['item'] * 5_000)}]\n")
    assert "(got ['item', 'item', 'item', 'item', ...])" in line, line


def test_deep_nesting_is_refused_before_the_stack_runs_out(tmp_path: Path) -> None:
    # 3,000 levels gave a RecursionError with a 3,000-line traceback.
    line = _refusal(tmp_path, f"node_name: {'[' * 3000}{']' * 3000}\n")
    assert f"nested deeper than {MAX_DEPTH} levels" in line, line
    # The bound is exact: the top-level mapping is the first of MAX_DEPTH levels.
    def nested(levels: int) -> str:
        return "node_name: " + "{a: " * (levels - 1) + "1" + "}" * (levels - 1) + "\n"

    assert "'node_name': Input should be a valid string" in _refusal(tmp_path, nested(MAX_DEPTH))
    assert "nested deeper than" in _refusal(tmp_path, nested(MAX_DEPTH + 1))


def test_reading_stops_at_the_size_cap(tmp_path: Path) -> None:
    padding = "# padding\n" * (MAX_FILE_BYTES // 10 + 1)
    line = _refusal(tmp_path, f"log_level: info\n{padding}")
    assert line.endswith(": larger than 1 MiB; is it the right file?"), line
    just_under = "log_level: info\n" + "#" * (MAX_FILE_BYTES - 20) + "\n"
    assert len(just_under.encode()) <= MAX_FILE_BYTES
    (tmp_path / "ok.yml").write_text(just_under)
    assert load(tmp_path / "ok.yml").log_level == "info"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_an_endless_file_is_not_read_to_its_end() -> None:
    # /dev/zero as the config file read 1.9 GB before failing.
    with pytest.raises(ConfigError, match=r"^config file /dev/zero: larger than 1 MiB"):
        load(Path("/dev/zero"))


@pytest.mark.parametrize(("content", "expected"), [
    (b"node_name: caf\xe9\n", "not UTF-8 text (byte 14 is 0xe9); save it as UTF-8"),
    (b"\xff\xfen\x00:\x00", "not UTF-8 text (byte 0 is 0xff)"),
    # Valid UTF-8 that names a lone surrogate: loaded, then it failed when the label was encoded.
    (b'log_level: info\nnode_name: "\\ud800x"\n',
     "line 2, column 12: the escape for U+D800 is not a character"),
    (b"log_level: info\nnode_name: a\x07b\n",
     "line 2: not valid YAML: special characters are not allowed (character #x0007)"),
])
def test_text_that_is_not_utf8_is_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    assert expected in _refusal(tmp_path, content)


@pytest.mark.parametrize(("content", "expected"), [
    ("log_level: info\nnode_name: a\nlog_level: debug\n",
     "line 3, column 1: duplicate key 'log_level' (first at line 1)"),
    ("collectors:\n  gpu:\n    enabled: true\n    timeout: 2\n    enabled: false\n",
     "line 5, column 5: duplicate key 'enabled' (first at line 3)"),
    ("collectors: {rdma: {devices: {include: a, include: b}}}\n",
     "line 1, column 43: duplicate key 'include' (first at line 1)"),
])
def test_duplicate_keys_are_refused_with_the_key_and_lines(tmp_path: Path, content: str,
                                                           expected: str) -> None:
    # The last one silently won, so a second `enabled:` further down turned a collector off.
    assert expected in _refusal(tmp_path, content)


def test_duplicate_keys_in_the_web_config(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\nbasic_auth_users: {}\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1: duplicate key 'basic_auth_users'"):
        load_web_config(web)


@pytest.mark.parametrize("digits", ["9" * 5000, "0x" + "f" * 200, ":".join(["1"] * 200)])
def test_numbers_too_long_to_be_meant_are_one_line(tmp_path: Path, digits: str) -> None:
    # 5,000 digits: int() raised ValueError past PyYAML, exit 1 with a traceback.
    line = _refusal(tmp_path, f"staleness_factor: {digits}\n")
    assert f"line 1, column 19: a number of {len(digits)} characters (at most 100)" in line


def _float_fields(model: type[BaseModel], path: str = "") -> Iterator[str]:
    """Dotted names of every float setting in the config, sections inside sections included."""
    for name, field in model.model_fields.items():
        inner = _unwrap(field.annotation)
        if inner is float:
            yield f"{path}{name}"
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from _float_fields(inner, f"{path}{name}.")


FLOAT_FIELDS = sorted(_float_fields(Config))
# Cadences, timeouts, waits and windows: the Seconds type. The one other float is a factor.
SECONDS_FIELDS = [f for f in FLOAT_FIELDS if f != "staleness_factor"]


def test_every_float_setting_is_seen() -> None:
    assert len(FLOAT_FIELDS) > 15 and "collectors.engines.target_timeout" in FLOAT_FIELDS
    assert "kubernetes.timeout" in FLOAT_FIELDS and "collectors.gpu.cadence.fast" in FLOAT_FIELDS


def _nested(dotted: str, value: object) -> dict[str, object]:
    data: object = value
    for part in reversed(dotted.split(".")):
        data = {part: data}
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("field", SECONDS_FIELDS)
@pytest.mark.parametrize(("value", "reason"), [
    (math.inf, "Input should be a finite number"),
    (math.nan, "Input should be a finite number"),
    ("inf", "Input should be a finite number"),
    (WEEK_SECONDS + 1, f"Input should be less than or equal to {WEEK_SECONDS}"),
    (0, "Input should be greater than 0"),
    (-1, "Input should be greater than 0"),
])
def test_seconds_are_finite_positive_and_at_most_a_week(field: str, value: object,
                                                        reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)) as err:
        Config.model_validate(_nested(field, value))
    assert ".".join(str(p) for p in err.value.errors()[0]["loc"]) == field


def test_seconds_take_a_millisecond_and_a_whole_week() -> None:
    cadence = Config.model_validate(_nested("collectors.rdma.cadence", {
        "fast": 0.001, "slow": 1, "static": WEEK_SECONDS})).collectors.rdma.cadence
    assert (cadence.fast, cadence.static) == (0.001, WEEK_SECONDS)


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_no_float_setting_takes_an_infinity_or_nan(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match="Input should be a finite number"):
        Config.model_validate(_nested(field, value))


@pytest.mark.parametrize("yaml_value", [".inf", ".nan", "-.inf", ".Inf"])
def test_yaml_infinities_are_refused_for_a_cadence(tmp_path: Path, yaml_value: str) -> None:
    line = _refusal(tmp_path, f"collectors:\n  gpu:\n    cadence: {{fast: {yaml_value}}}\n")
    assert "'collectors.gpu.cadence.fast': Input should be" in line, line


def test_absurd_byte_counts_fail_at_load_not_inside_the_grpc_client(tmp_path: Path) -> None:
    # 10**12 loaded, then each topology poll logged "value too large to convert to int".
    line = _refusal(tmp_path, "collectors: {topology: {pod_resources_max_message_bytes: "
                              "1000000000000}}\n")
    assert "Input should be less than or equal to 2147483647" in line, line
    line = _refusal(tmp_path, "collectors: {rdma: {log_max_bytes_per_poll: 1e30}}\n")
    assert "'collectors.rdma.log_max_bytes_per_poll'" in line, line


@pytest.mark.parametrize("port", [
    "\u0669\u0664\u0664\u0667",  # Arabic-Indic 9447: int() reads it
    "\uff19\uff14\uff14\uff17",  # fullwidth 9447
    "\u00b2", "+80", " 80", "-1", "65536", "009447", "",
])
def test_ports_are_ascii_digits(tmp_path: Path, port: str) -> None:
    assert parse_port(port) is None
    line = _refusal(tmp_path, f"web:\n  listen_address: \"127.0.0.1:{port}\"\n")
    assert "'web.listen_address': must be [host]:port" in line, line


@pytest.mark.parametrize(("port", "value"), [("0", 0), ("9447", 9447), ("65535", 65535),
                                             ("08080", 8080)])
def test_ascii_ports_are_read(port: str, value: int) -> None:
    assert parse_port(port) == value


def test_the_web_config_shares_the_bounds(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(_alias_bomb(5).replace("node_name", "basic_auth_users"))
    with pytest.raises(ConfigError) as err:
        load_web_config(web)
    assert str(err.value).startswith(f"web config {web} line 1, column ")
    assert f"more than {MAX_VALUES} values" in str(err.value)
    web.write_text("tls_server_config: " + "[" * 100 + "]" * 100 + "\n")
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
        read_file(web, "web config")


def test_an_inline_encrypted_key_is_refused_at_load(tmp_path: Path) -> None:
    import trustme
    from cryptography.hazmat.primitives import serialization

    cert = trustme.CA().issue_cert("localhost")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"a passphrase"))

    def indent(pem: bytes) -> str:
        return "".join(f"    {line}\n" for line in pem.decode().splitlines())

    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert: |\n{indent(cert.cert_chain_pems[0].bytes())}"
                   f"  key: |\n{indent(encrypted)}")
    with pytest.raises(ConfigError) as err:
        load_web_config(web)
    assert str(err.value) == (
        f"web config {web}: TLS key inline key is encrypted (passphrase-protected); kvscope "
        "never prompts: give a key without a passphrase (openssl pkey -in KEY -out PLAIN), "
        "readable by the agent only")


def test_a_long_user_name_is_clipped_in_the_hash_error(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  ? {'u' * 5000}\n  : not-a-hash\n")
    with pytest.raises(ConfigError) as err:
        load_web_config(web)
    assert f"basic_auth_users.{'u' * 80}... (5000 characters) " in str(err.value)
    assert len(str(err.value)) < SHORT_LINE
