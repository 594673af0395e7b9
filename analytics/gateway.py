"""The limiter's way to the analytics store: queries and erasures, awaited on its event loop.

``open_analytics(url)`` picks the transport from the ClickHouse URL.  For ``chdb:///dir``
another process (the pipeline worker of ``ratewatch up``) owns chDB, so requests go to its
query socket (``SocketAnalytics``); for ``http(s)://`` the limiter talks to the server
itself (``ClientAnalytics``).  Importing this module loads neither chDB nor
clickhouse-connect: the socket transport needs neither, and the client transport imports
them when it first connects.

Both raise AnalyticsError when the store cannot be reached or does not answer in time, and
QueryError (a subclass) when it answered that a request was refused or failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from analytics.clickhouse import chdb_path, query_socket_path, redact
from analytics.errors import AnalyticsError, QueryError
from analytics.query_client import (
    DEFAULT_ERASE_TIMEOUT,
    DEFAULT_TIMEOUT,
    QueryResult,
    erase_user_async,
    query_result_async,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from analytics.readonly import ReadOnlyQueries

_T = TypeVar("_T")


class Analytics(Protocol):
    """What the limiter asks of the analytics store."""

    description: str  # where requests go, for health output; no password

    async def query(self, sql: str) -> QueryResult:
        """The result of one read-only statement."""
        ...

    async def erase_user(self, tenant: str, user_id: str) -> dict[str, int]:
        """Erase ``user_id``'s data in ``tenant`` (``analytics.erasure``); rows removed per
        table."""
        ...

    async def close(self) -> None: ...


def open_analytics(
    url: str, *, timeout: float = DEFAULT_TIMEOUT, erase_timeout: float = DEFAULT_ERASE_TIMEOUT
) -> Analytics:
    """The transport for a ClickHouse URL; ConfigError if the URL is unusable.  Nothing is
    connected yet: an unreachable store shows in the first request."""
    directory = chdb_path(url)
    if directory is not None:
        return SocketAnalytics(
            query_socket_path(directory), timeout=timeout, erase_timeout=erase_timeout
        )
    return ClientAnalytics(url, timeout=timeout, erase_timeout=erase_timeout)


class SocketAnalytics:
    """Requests to the process that owns chDB, over its query socket: a connection per
    request, so concurrent requests never wait for each other here (the owner runs them one
    at a time)."""

    def __init__(
        self,
        socket_path: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        erase_timeout: float = DEFAULT_ERASE_TIMEOUT,
    ) -> None:
        self.socket_path = socket_path
        self.description = f"query socket {socket_path}"
        self._timeout = timeout
        self._erase_timeout = erase_timeout

    async def query(self, sql: str) -> QueryResult:
        async with _bounded(self._timeout, self.description):
            return await query_result_async(self.socket_path, sql)

    async def erase_user(self, tenant: str, user_id: str) -> dict[str, int]:
        async with _bounded(self._erase_timeout, self.description):
            return await erase_user_async(self.socket_path, tenant, user_id)

    async def close(self) -> None:
        pass  # no connection outlives its request


class ClientAnalytics:
    """Requests to a ClickHouse server (or chDB in this very process) through
    clickhouse-connect: queries on a read-only client (``analytics.readonly``), erasures on
    a writable one, both created when first needed and used on one worker thread, as
    clickhouse-connect clients (chDB's above all) are not shared across threads."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        erase_timeout: float = DEFAULT_ERASE_TIMEOUT,
    ) -> None:
        chdb_path(url)  # a bad URL fails here, not in the first request
        self.description = f"ClickHouse at {redact(url)}"
        self._url = url
        self._timeout = timeout
        self._erase_timeout = erase_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics")
        self._queries: ReadOnlyQueries | None = None  # only on the worker thread
        self._writer: Client | None = None  # only on the worker thread
        self._closed = False

    async def query(self, sql: str) -> QueryResult:
        return await self._on_worker(self._timeout, self._query, sql)

    async def erase_user(self, tenant: str, user_id: str) -> dict[str, int]:
        return await self._on_worker(self._erase_timeout, self._erase, tenant, user_id)

    async def close(self) -> None:
        """Close the clients, after a request still running (bounded by its timeout)."""
        if self._closed:
            return
        try:
            await self._on_worker(self._timeout, self._close_clients)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    async def _on_worker(self, seconds: float, call: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise AnalyticsError(f"{self.description}: the client is closed")
        loop = asyncio.get_running_loop()
        async with _bounded(seconds, self.description):
            return await loop.run_in_executor(self._executor, call, *args)

    def _query(self, sql: str) -> QueryResult:
        from analytics.readonly import ReadOnlyQueries

        if self._queries is None:
            self._queries = ReadOnlyQueries(self._url)
        try:
            return self._queries.run(sql)
        except QueryError as exc:
            raise _unreachable(exc, self.description) from exc.__cause__

    def _erase(self, tenant: str, user_id: str) -> dict[str, int]:
        from analytics.clickhouse import connect
        from analytics.erasure import erase_user

        if self._writer is None:
            self._writer = connect(self._url)
        try:
            return erase_user(self._writer, tenant, user_id)
        except QueryError as exc:
            # chDB hands a failed statement's output to the next one on the connection
            self._writer.close()
            self._writer = None
            raise _unreachable(exc, self.description) from exc.__cause__

    def _close_clients(self) -> None:
        if self._queries is not None:
            self._queries.close()
            self._queries = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _unreachable(exc: QueryError, description: str) -> AnalyticsError:
    """``exc``, or an AnalyticsError if the server never answered (not the request's fault,
    and worth retrying)."""
    from clickhouse_connect.driver.exceptions import OperationalError

    if isinstance(exc.__cause__, OperationalError):
        return AnalyticsError(f"{description} did not answer: {exc}")
    return exc


@asynccontextmanager
async def _bounded(seconds: float, description: str) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise AnalyticsError(f"no answer from {description} within {seconds:g}s") from None
