"""Connecting to ClickHouse: a server over HTTP(S), or chDB embedded in this process.

Both are clickhouse-connect clients, so everything above this module runs the same SQL on
either.  chDB hosts one engine per process, on one directory at a time, and a directory
can be open in only one process; the errors say so instead of chDB's terse messages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from analytics.chdb_config import SESSION_SETTINGS, write_config
from analytics.errors import AnalyticsError, ConfigError
from analytics.tables import AUDIT_TABLE as AUDIT_TABLE
from analytics.tables import DATABASE as DATABASE
from analytics.tables import DECISIONS_TABLE as DECISIONS_TABLE
from analytics.tables import MIGRATIONS_TABLE as MIGRATIONS_TABLE
from analytics.tables import ROLLUP_TABLES as ROLLUP_TABLES
from analytics.tables import TENANT_ROLLUP_TABLES as TENANT_ROLLUP_TABLES

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

QUERY_SOCKET_NAME = "query.sock"

_MAX_MESSAGE = 500


def connect(url: str) -> Client:
    """A client for ``http(s)://user:pass@host:port`` or ``chdb:///absolute/path``."""
    # imported here: the limiter uses this module's names and URL helpers without a client
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ClickHouseError

    path = chdb_path(url)
    try:
        if path is not None:
            # sized for the box it shares with the limiter: analytics/chdb_config.py
            return clickhouse_connect.get_client(
                dsn=f"chdb://{path}",
                settings=dict(SESSION_SETTINGS),
                chdb_options={"config-file": str(write_config(path))},
            )
        return clickhouse_connect.get_client(dsn=url)
    except (ClickHouseError, OSError) as exc:
        reason = describe(exc)
        if path is not None and "already initialized with path" in reason:
            reason = f"this process has chDB open on another directory ({reason})"
        elif path is not None and "EmbeddedServer" in reason:
            # all chDB says when another process holds the directory
            reason = f"another process (such as `ratewatch up`) may have it open ({reason})"
        raise AnalyticsError(f"cannot open ClickHouse at {redact(url)}: {reason}") from exc


def chdb_path(url: str) -> Path | None:
    """The directory of a ``chdb:///path`` URL; None for a server URL; ConfigError if bad."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"ClickHouse URL {redact(url)!r} has no host")
        return None
    if scheme != "chdb":
        raise ConfigError(
            f"ClickHouse URL {redact(url)!r} must start with http://, https:// or chdb:///"
        )
    if parts.netloc or not parts.path.startswith("/") or parts.query:
        raise ConfigError(f"chDB URL {url!r} must be chdb:///absolute/path (three slashes)")
    return Path(parts.path)


def chdb_url(directory: Path) -> str:
    return f"chdb://{directory.resolve()}"


def query_socket_path(chdb_directory: Path) -> Path:
    """Where the process owning a chDB directory answers read-only queries."""
    return chdb_directory / QUERY_SOCKET_NAME


def redact(url: str) -> str:
    """``url`` without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def describe(exc: BaseException) -> str:
    """A driver error as one short line: ClickHouse messages span lines and end in noise."""
    text = " ".join(str(exc).split())
    text = re.sub(r"\s*\(version [\d.]+(?: \(official build\))?\)", "", text)
    # chDB nests the same "Code: N. DB::Exception:" prefix twice
    text = re.sub(r"^(Code: \d+\. DB::Exception: )+", r"\1", text)
    text = re.sub(r"(\([A-Z_]+\))\.? \1$", r"\1", text)
    # a syntax error lists every token the parser would have taken
    text = re.sub(r"\s*Expected one of: .*?(?=\s*\([A-Z_]+\)$)", "", text)
    if len(text) > _MAX_MESSAGE:
        name = re.search(r" \([A-Z_]+\)$", text)  # the error's name is worth keeping
        tail = name.group() if name else ""
        text = text[: _MAX_MESSAGE - 1 - len(tail)] + "…" + tail
    return text or type(exc).__name__
