"""Start `kvscope` as a real process for end-to-end tests, and wait for it to be ready."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kvscope(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvscope.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(), cwd=REPO, check=False)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "exporters") + os.pathsep + env.get("PYTHONPATH", "")
    env["NODE_NAME"] = "e2e-node"
    return env


class Agent:
    """A `kvscope` server process; use as a context manager."""

    def __init__(self, *args: str, scheme: str = "http",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        self.args = [*args, "--web.listen-address", f"127.0.0.1:{self.port}"]
        self.ssl_context = ssl_context
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Agent:
        self.start()
        self.wait_listening()
        return self

    def start(self) -> Agent:
        """Launch the process without waiting for it: start several, then wait for each."""
        # stderr goes to a file, not a pipe: an agent that logs a lot must never block on a
        # full pipe that nobody reads while the test is busy scraping it.
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by __exit__)
        self.proc = subprocess.Popen([sys.executable, "-m", "kvscope.cli", *self.args],
                                     stdout=subprocess.DEVNULL, stderr=self._log, text=True,
                                     env=_env(), cwd=REPO)
        return self

    def wait_listening(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited: {self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("agent did not start listening")

    def get(self, path: str,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ssl_context) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError("agent never became ready")

    def stderr(self) -> str:
        self._log.seek(0)
        return self._log.read()

    def terminate(self, timeout: float = 10) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, self.stderr()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self._log.close()
