"""Asking the process that owns chDB for a read-only query or an erasure, over its socket.

chDB can be open in only one process, so the others (the limiter's analytics API,
``ratewatch sql``) send their requests to the owner.  This module is the client side, in
blocking and asyncio flavours, and the wire format; it imports nothing heavy: the limiter
process may use it without loading chDB, clickhouse-connect or polars.

Protocol: newline-delimited JSON over a stream socket, any number of requests per
connection, each answered in order.  A request without "op" is a query.
  request   {"sql": "SELECT ..."}
  response  {"ok": true, "columns": [...], "types": [...], "rows": [[...], ...]}
  request   {"op": "erase_user", "tenant": "T", "user_id": "U"}
            (strings of 1 to 512 characters; analytics.erasure defines what is erased)
  response  {"ok": true, "deleted": {"decisions": 3, "decisions_per_minute": 2,
                                     "decisions_per_hour": 2, "decisions_per_day": 1}}
  any       {"ok": false, "error": "one line"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analytics.errors import AnalyticsError, QueryError

DEFAULT_TIMEOUT = 60.0
# an erasure waits for its deletes to be applied, which takes longer than a query
DEFAULT_ERASE_TIMEOUT = 300.0
MAX_REQUEST_BYTES = 1 << 20
# a result of the server's max_result_rows fits many times over; a bound all the same
MAX_RESPONSE_BYTES = 1 << 28
ERASE_USER = "erase_user"


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
    line = _exchange(socket_path, _request_line({"sql": sql}), timeout)
    return _query_result(_response(line, socket_path), socket_path)


def erase_user(
    socket_path: Path | str, tenant: str, user_id: str, timeout: float = DEFAULT_ERASE_TIMEOUT
) -> dict[str, int]:
    """Have the owner erase ``user_id``'s analytics data in ``tenant``; the rows removed per
    table.  QueryError if it refused or failed; AnalyticsError if nothing answered."""
    request = _request_line({"op": ERASE_USER, "tenant": tenant, "user_id": user_id})
    line = _exchange(socket_path, request, timeout)
    return _deleted(_response(line, socket_path), socket_path)


async def query_result_async(socket_path: Path | str, sql: str) -> QueryResult:
    """``query_result`` for an event loop, without a thread.  Unbounded: wrap it in
    ``asyncio.timeout``; cancelling it hangs up."""
    line = await _exchange_async(socket_path, _request_line({"sql": sql}))
    return _query_result(_response(line, socket_path), socket_path)


async def erase_user_async(socket_path: Path | str, tenant: str, user_id: str) -> dict[str, int]:
    """``erase_user`` for an event loop, without a thread.  Unbounded: wrap it in
    ``asyncio.timeout``; cancelling it hangs up, and the owner still finishes the erasure it
    started (a repeated erasure is harmless)."""
    request = _request_line({"op": ERASE_USER, "tenant": tenant, "user_id": user_id})
    line = await _exchange_async(socket_path, request)
    return _deleted(_response(line, socket_path), socket_path)


def _request_line(request: dict[str, Any]) -> bytes:
    line = json.dumps(request).encode() + b"\n"
    if len(line) > MAX_REQUEST_BYTES:
        raise QueryError(f"the request is longer than {MAX_REQUEST_BYTES} bytes")
    return line


def _exchange(socket_path: Path | str, request: bytes, timeout: float) -> bytes:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(request)
            with sock.makefile("rb") as stream:
                return stream.readline(MAX_RESPONSE_BYTES)
    except TimeoutError:
        raise AnalyticsError(f"no answer from {socket_path} within {timeout:g}s") from None
    except OSError as exc:
        raise AnalyticsError(f"cannot query through {socket_path}: {exc.strerror or exc}") from None


async def _exchange_async(socket_path: Path | str, request: bytes) -> bytes:
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_unix_connection(
            str(socket_path), limit=MAX_RESPONSE_BYTES
        )
        writer.write(request)
        await writer.drain()
        return await reader.readline()
    except ValueError:  # the reader's limit
        raise AnalyticsError(
            f"the answer from {socket_path} is longer than {MAX_RESPONSE_BYTES} bytes"
        ) from None
    except OSError as exc:
        raise AnalyticsError(f"cannot query through {socket_path}: {exc.strerror or exc}") from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _response(line: bytes, socket_path: Path | str) -> dict[str, Any]:
    """The answer's document if it says ok; QueryError with the owner's message if not."""
    if not line:
        raise AnalyticsError(f"{socket_path} closed the connection without an answer")
    try:
        response = json.loads(line)
    except ValueError:
        raise AnalyticsError(f"unreadable answer from {socket_path}: {line[:200]!r}") from None
    if not isinstance(response, dict):
        raise AnalyticsError(f"unreadable answer from {socket_path}: {line[:200]!r}")
    if not response.get("ok"):
        raise QueryError(" ".join(str(response.get("error", "the request failed")).split()))
    return response


def _query_result(response: dict[str, Any], socket_path: Path | str) -> QueryResult:
    try:
        return QueryResult(response["columns"], response["types"], response["rows"])
    except KeyError as exc:
        raise AnalyticsError(f"answer from {socket_path} lacks {exc}") from None


def _deleted(response: dict[str, Any], socket_path: Path | str) -> dict[str, int]:
    deleted = response.get("deleted")
    if not isinstance(deleted, dict) or not all(
        isinstance(count, int) and not isinstance(count, bool) for count in deleted.values()
    ):
        raise AnalyticsError(f"answer from {socket_path} lacks the deleted row counts")
    return {str(table): count for table, count in deleted.items()}


def answers(socket_path: Path | str, timeout: float = 1.0) -> bool:
    """Whether a process accepts connections on ``socket_path`` (a leftover file does not)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            return True
    except OSError:
        return False


def analyst_query(url: str, query: str) -> QueryResult:
    """One analyst's read-only ``query`` on the store at ``url``: through the chDB owner's
    socket if one answers (``ratewatch up`` runs), else on a read-only client of our own."""
    from analytics.clickhouse import chdb_path, query_socket_path
    from analytics.errors import AnalyticsError

    path = chdb_path(url)
    if path is not None:
        socket_path = query_socket_path(path)
        if answers(socket_path):
            return query_result(socket_path, query)
        if not path.is_dir():
            raise AnalyticsError(
                f"no analytics data at {path}: run `ratewatch migrate` or `ratewatch up` first"
            )
    from analytics.readonly import ReadOnlyQueries

    queries = ReadOnlyQueries(url)
    try:
        return queries.run(query)
    finally:
        queries.close()
