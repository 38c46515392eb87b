"""The #15 item 14 faults through the real command: `kvscope serve` refuses each with one line
on stderr and exit status 2, no traceback, before it listens; an encrypted TLS key does not
make OpenSSL prompt on the terminal and wait."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from agent import REPO, _env, kvscope


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    # --scenario keeps the run off this machine's hardware; a good config would serve forever,
    # so the timeout also catches a fault that is not refused.
    return kvscope("serve", "--scenario", "healthy", "--web.listen-address", "127.0.0.1:0",
                   *args, timeout=60)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, result.stderr[:2000]
    assert lines[0].startswith("kvscope: error: "), lines[0]
    return lines[0]


# Six levels of nine: 9**6 strings from 318 bytes (a billion laughs).
_LEVELS = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"&l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 6)]
BOMB = f"node_name: [{', '.join(_LEVELS)}]\n"


@pytest.mark.parametrize(("content", "expected"), [
    (BOMB.encode(), "more than 100000 values once YAML aliases are expanded"),
    (f"node_name: {'[' * 3000}{']' * 3000}\n".encode(), "nested deeper than 32 levels"),
    (b"node_name: caf\xe9\n", "not UTF-8 text (byte 14 is 0xe9)"),
    (b'node_name: "\\udc00"\n', "line 1, column 12: the escape for U+DC00 is not a character"),
    (b"log_level: info\nlog_level: debug\n",
     "line 2, column 1: duplicate key 'log_level' (first at line 1)"),
    (b"collectors: {gpu: {cadence: {fast: .inf}}}\n",
     "'collectors.gpu.cadence.fast': Input should be a finite number (got inf)"),
    (b"collectors: {rdma: {eadm_timeout: .nan}}\n",
     "'collectors.rdma.eadm_timeout': Input should be a finite number (got nan)"),
    ("web: {listen_address: ':\u0669\u0664\u0664\u0667'}\n".encode(),
     "'web.listen_address': must be [host]:port"),
    (f"staleness_factor: {'9' * 5000}\n".encode(), "a number of 5000 characters"),
    (f"log_level: {'x' * 100_000}\n".encode(), "... (100000 characters))"),
])
def test_serve_refuses_a_hostile_config_file_in_one_line(tmp_path: Path, content: bytes,
                                                         expected: str) -> None:
    config = tmp_path / "kvscope.yml"
    config.write_bytes(content)
    # --web.listen-address on the command line wins over the file; the file's own listen
    # address is what the Unicode-digit case checks, so that case gets no flag.
    flags = () if b"listen_address" in content else ("--web.listen-address", "127.0.0.1:0")
    result = kvscope("serve", "--scenario", "healthy", "--config", str(config), *flags,
                     timeout=60)
    line = _one_line(result)
    assert line.startswith(f"kvscope: error: config file {config}"), line
    assert expected in line, line


def test_serve_refuses_dev_zero_as_the_config_file() -> None:
    started = time.monotonic()
    line = _one_line(_serve("--config", "/dev/zero"))
    assert line == "kvscope: error: config file /dev/zero: larger than 1 MiB; is it the right file?"
    assert time.monotonic() - started < 60


def test_a_unicode_digit_port_flag_is_refused() -> None:
    result = kvscope("serve", "--scenario", "healthy", "--web.listen-address",
                     "127.0.0.1:\uff19\uff14\uff14\uff17", timeout=60)
    assert "'web.listen_address': must be [host]:port" in _one_line(result)


@pytest.fixture(scope="module")
def encrypted_key_web_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    (base / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase")))
    web = base / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n")
    return web


def test_an_encrypted_key_is_refused_without_a_prompt(encrypted_key_web_config: Path) -> None:
    line = _one_line(_serve("--web.config.file", str(encrypted_key_web_config)))
    assert "TLS key " in line and "is encrypted (passphrase-protected); kvscope never prompts" \
        in line, line


@pytest.mark.skipif(not hasattr(termios, "TIOCSCTTY"), reason="needs a Linux-style pty")
def test_an_encrypted_key_does_not_wait_at_a_terminal(encrypted_key_web_config: Path) -> None:
    # Started by hand on a terminal, OpenSSL printed "Enter PEM pass phrase:" and waited for
    # a person. The child gets a pty as its controlling terminal, as in a shell.
    primary, secondary = os.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    cmd = [sys.executable, "-m", "kvscope.cli", "serve", "--scenario", "healthy",
           "--web.listen-address", "127.0.0.1:0", "--web.config.file",
           str(encrypted_key_web_config)]
    proc = subprocess.Popen(cmd, stdin=secondary, stdout=secondary, stderr=secondary,
                            env=_env(), cwd=REPO, preexec_fn=controlling_terminal)  # noqa: PLW1509
    os.close(secondary)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("kvscope waited at the terminal for a passphrase")
    finally:
        output = _drain(primary)
        os.close(primary)
    assert code == 2, output
    assert "Enter PEM pass phrase" not in output, output
    assert "is encrypted (passphrase-protected)" in output, output


def _drain(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):  # EIO once the child has closed its side
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
