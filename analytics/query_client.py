"""Asking the process that owns chDB for a read-only query, over its Unix socket.

chDB can be open in only one process, so the others (the limiter's analytics API,
``ratewatch sql``) send their queries to the owner.  This module is the client side and
the wire format, and imports nothing heavy: the limiter process may use it without loading
chDB, clickhouse-connect or polars.

Protocol: newline-delimited JSON over a stream socket, any number of requests per
connection, each answered in order.
  request   {"sql": "SELECT ..."}
  response  {"ok": true, "columns": [...], "types": [...], "rows": [[...], ...]}
            {"ok": false, "error": "one line"}
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analytics.errors import AnalyticsError, QueryError

DEFAULT_TIMEOUT = 60.0
MAX_REQUEST_BYTES = 1 << 20


@dataclass(frozen=True)
class QueryResult:
    """Column names and ClickHouse types, and the rows as JSON values (ClickHouse's JSON:
    DateTime and UUID as strings, 64-bit integers as numbers, NaN as null)."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def query(
    socket_path: Path | str, sql: str, timeout: float = DEFAULT_TIMEOUT
) -> list[dict[str, Any]]:
    """The rows of ``sql`` as dicts, answered by the process serving ``socket_path``."""
    return query_result(socket_path, sql, timeout).dicts()


def query_result(
    socket_path: Path | str, sql: str, timeout: float = DEFAULT_TIMEOUT
) -> QueryResult:
    """Like ``query`` with the column names and types.  QueryError for a refused or failed
    query; AnalyticsError if nothing answers on the socket (in time)."""
    request = json.dumps({"sql": sql}).encode() + b"\n"
    if len(request) > MAX_REQUEST_BYTES:
        raise QueryError(f"the query is longer than {MAX_REQUEST_BYTES} bytes")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(request)
            with sock.makefile("rb") as stream:
                line = stream.readline()
    except TimeoutError:
        raise AnalyticsError(f"no answer from {socket_path} within {timeout:g}s") from None
    except OSError as exc:
        raise AnalyticsError(f"cannot query through {socket_path}: {exc.strerror or exc}") from None
    if not line:
        raise AnalyticsError(f"{socket_path} closed the connection without an answer")
    try:
        response = json.loads(line)
    except ValueError:
        raise AnalyticsError(f"unreadable answer from {socket_path}: {line[:200]!r}") from None
    if not response.get("ok"):
        raise QueryError(str(response.get("error", "the query failed")))
    return QueryResult(response["columns"], response["types"], response["rows"])


def answers(socket_path: Path | str, timeout: float = 1.0) -> bool:
    """Whether a process accepts connections on ``socket_path`` (a leftover file does not)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            return True
    except OSError:
        return False
