"""Running the limiter's ASGI app: one process, or several workers on one socket.

A Python process answers checks on one core.  With ``--workers N`` the parent binds the
listening socket once and forks N workers that accept on it (the kernel spreads the
connections); each worker has its own event loop, Redis connections, coalescer and auth
cache, and all decide on the same Redis, so limits hold across them.  Prometheus metrics
are then kept in files under ``<data-dir>/run/metrics`` (prometheus_client's multiprocess
mode) and ``/metrics`` adds up every worker's.  A worker that dies is replaced.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ratewatch.processes.http_protocol import ConnectionLimits

from limiter.errors import ConfigError
from ratewatch.processes.tls import TlsFiles, server_context

log = logging.getLogger("ratewatch.serve")

# set before prometheus_client is first imported: it picks its value storage at import
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(data_dir: Path, workers: int) -> Path | None:
    """A fresh directory for the workers' metric files (None for a single process)."""
    if workers == 1:
        return None
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the metrics dir was set")
    directory = data_dir.resolve() / "run" / f"metrics-{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[METRICS_DIR_VARIABLE] = str(directory)
    return directory


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def parse_trusted_proxies(text: str | None) -> str | None:
    """``--trusted-proxies``: addresses or networks, comma separated, or ``*`` (any peer);
    the peers whose ``X-Forwarded-For`` names the client.  None: the peer is the client."""
    if text is None or not text.strip():
        return None
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"trusted proxy {entry!r} in {text!r} is not an address, a network or *"
            ) from None
    return ",".join(entries)


def run_server(
    app: Any,
    sock: socket.socket,
    limits: ConnectionLimits,
    keep_alive_timeout: float,
    tls: TlsFiles | None = None,
    trusted_proxies: str | None = None,
) -> bool:
    """Serve ``app`` on ``sock`` (over HTTPS with ``tls``) until SIGINT/SIGTERM; whether it
    started.  ``limits`` bound slow and numerous clients
    (``ratewatch/processes/http_protocol.py``)."""
    import uvicorn

    from ratewatch.processes.http_protocol import BoundedHttpToolsProtocol

    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=BoundedHttpToolsProtocol.bounded(limits, app if hasattr(app, "check_lane") else None),
        timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type]
        ws="none",  # no WebSocket route: the protocol and its library stay unloaded
        lifespan="on",
        access_log=False,
        log_level="warning",
        # the client's address is read only to count failed authentication; proxy headers
        # are believed only from the peers named (they would cost on every request)
        proxy_headers=trusted_proxies is not None,
        forwarded_allow_ips=trusted_proxies,
        server_header=False,
        timeout_graceful_shutdown=10,
        ssl_certfile=tls.cert if tls is not None else None,
        ssl_keyfile=tls.key if tls is not None else None,
    )
    if tls is not None:
        # uvicorn's own context sets no minimum version: ours (TLS 1.2 at least) replaces it
        config.load()
        config.ssl = server_context(tls)
    server = uvicorn.Server(config)
    # uvicorn re-raises SIGINT/SIGTERM once it has shut down; with these handlers in place
    # that returns here and the process exits normally.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    server.run(sockets=[sock])
    return bool(server.started)


def run_workers(workers: int, serve: Callable[[int], bool], metrics_dir: Path | None) -> int:
    """Fork ``workers`` processes running ``serve(index)``; replace any that dies until
    SIGINT/SIGTERM, then stop them all.  The exit status."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: dict[int, int] = {}  # pid -> worker index

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            code = 0 if serve(index) else 1
            os._exit(code)
        children[pid] = index

    try:
        for index in range(workers):
            spawn(index)
        while not stopping:
            time.sleep(0.2)
            for pid, index in list(children.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done and not stopping:
                    del children[pid]
                    _mark_dead(pid, metrics_dir)
                    log.warning(
                        "worker %d (pid %d) exited with %d: replacing it",
                        index,
                        pid,
                        os.waitstatus_to_exitcode(status),
                    )
                    time.sleep(0.5)
                    spawn(index)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _mark_dead(pid: int, metrics_dir: Path | None) -> None:
    if metrics_dir is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]
