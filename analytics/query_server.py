"""The owner of chDB answers other processes' read-only queries, and erasures of one user's
data, on a Unix socket.

chDB can be open in only one process at a time, so the process that writes to it (the
pipeline worker of ``ratewatch up``) runs this server beside its writer; the limiter's
analytics API and ``ratewatch sql`` connect with ``analytics.query_client`` (which also
defines the wire format).  Queries run on a read-only client; the one operation that
writes, ``erase_user`` (``analytics.erasure``), on a writable client of its own, created
when first needed.  Every chDB call of the server runs on one worker thread, never on the
event loop: a query blocks for as long as the engine works on it, and chDB connection
handles are not meant to be shared across threads.  The socket is created mode 0600, so
only the owner's user can query or erase.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from analytics.clickhouse import connect
from analytics.erasure import check_subject, erase_user
from analytics.errors import AnalyticsError, ConfigError
from analytics.query_client import DEFAULT_ERASE_TIMEOUT, ERASE_USER, MAX_REQUEST_BYTES, answers
from analytics.readonly import DEFAULT_MAX_EXECUTION_SECONDS, ReadOnlyQueries

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# sun_path holds 108 bytes on Linux (104 on macOS) including the terminating NUL
_MAX_SOCKET_PATH = 103


class QueryServer:
    """Serves read-only queries and erasures on ``socket_path`` from new clients of
    ``clickhouse_url`` (for chDB, the same directory as the owning process's writer)."""

    def __init__(
        self,
        clickhouse_url: str,
        socket_path: Path,
        *,
        max_execution_seconds: int = DEFAULT_MAX_EXECUTION_SECONDS,
        idle_timeout: float = 60.0,
        erase_timeout: float = DEFAULT_ERASE_TIMEOUT,
    ) -> None:
        self.socket_path = socket_path
        self._url = clickhouse_url
        self._max_execution_seconds = max_execution_seconds
        # the engine stops a query at max_execution_time; this only answers a stuck one
        self._query_timeout = max_execution_seconds + 5.0
        self._idle_timeout = idle_timeout
        self._erase_timeout = erase_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb-queries")
        self._queries: ReadOnlyQueries | None = None
        self._writer: Client | None = None  # only on the executor's thread
        self._listener: socket.socket | None = None
        # every accepted connection has a task from the moment it is accepted, so closing
        # the server can end them all (asyncio.Server cannot promise that before 3.12)
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the read-only client and listen; ConfigError if another process serves
        ``socket_path`` or the path is too long for a Unix socket."""
        _claim(self.socket_path)
        loop = asyncio.get_running_loop()
        self._queries = await loop.run_in_executor(
            self._executor, ReadOnlyQueries, self._url, self._max_execution_seconds
        )
        try:
            self._listener = _listen(self.socket_path)
        except BaseException:
            await self.close()
            raise
        loop.add_reader(self._listener.fileno(), self._accept, self._listener)
        logger.info("answering read-only queries on %s", self.socket_path)

    async def close(self) -> None:
        """Stop listening, end open connections, close the client, remove the socket."""
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._queries is not None:
            # queued behind a running query, which max_execution_time bounds
            await asyncio.get_running_loop().run_in_executor(self._executor, self._queries.close)
            self._queries = None
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_writer)
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> QueryServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _accept(self, listener: socket.socket) -> None:
        # accept and track in one step: no connection exists that close() cannot see
        while True:
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                logger.exception("accepting a query connection failed")
                return
            task = asyncio.get_running_loop().create_task(self._serve(connection))
            self._connections.add(task)
            task.add_done_callback(functools.partial(self._finished, connection))

    def _finished(self, connection: socket.socket, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        connection.close()  # a no-op unless the task was cancelled before it began

    async def _serve(self, connection: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(
                sock=connection, limit=MAX_REQUEST_BYTES
            )
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self._idle_timeout)
                except TimeoutError:
                    break
                except ValueError:  # the line outgrew the reader's limit
                    await _send(writer, _error(f"request longer than {MAX_REQUEST_BYTES} bytes"))
                    break
                if not line:
                    break
                await _send(writer, await self._answer(line))
        except ConnectionError:
            pass
        finally:
            if writer is None:
                connection.close()
            else:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return _error("a request is one JSON object per line")
        if not isinstance(request, dict):
            return _error('a request needs "sql": a string')
        op = request.get("op")
        try:
            if op is None:
                return await self._query(request)
            if op == ERASE_USER:
                return await self._erase(request)
        except AnalyticsError as exc:
            return _error(str(exc))
        return _error(f"unknown op {json.dumps(op)[:60]}; the one op is {ERASE_USER!r}")

    async def _query(self, request: dict[str, Any]) -> dict[str, Any]:
        sql = request.get("sql")
        if not isinstance(sql, str):
            return _error('a request needs "sql": a string')
        queries = self._queries
        if queries is None:
            return _error("the query server is closing")
        result = await self._run(self._query_timeout, queries.run, sql)
        return {"ok": True, "columns": result.columns, "types": result.types, "rows": result.rows}

    async def _erase(self, request: dict[str, Any]) -> dict[str, Any]:
        tenant, user_id = check_subject(request.get("tenant"), request.get("user_id"))
        if self._queries is None:
            return _error("the query server is closing")
        deleted = await self._run(self._erase_timeout, self._erase_now, tenant, user_id)
        logger.info("erased %s rows of a user's analytics data", sum(deleted.values()))
        return {"ok": True, "deleted": deleted}

    async def _run(self, seconds: float, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` on the chDB thread; AnalyticsError if it fails or takes longer
        than ``seconds`` (it then goes on, and later requests queue behind it)."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, call, *args), seconds
            )
        except AnalyticsError:
            raise
        except TimeoutError:
            raise AnalyticsError(f"no result within {seconds:g}s") from None
        except Exception as exc:  # a bug must not end the server; the caller gets a line
            logger.exception("a request failed unexpectedly")
            raise AnalyticsError(f"internal error: {type(exc).__name__}: {exc}") from exc

    def _erase_now(self, tenant: str, user_id: str) -> dict[str, int]:
        client = self._writer
        if client is None:
            client = self._writer = connect(self._url)
        try:
            return erase_user(client, tenant, user_id)
        except BaseException:
            # chDB hands what a failed statement had output to the next one on the same
            # connection, so a failure costs the connection (as in analytics.readonly)
            self._close_writer()
            raise

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _listen(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)  # before listen(): nobody else ever gets to connect
        listener.setblocking(False)
        listener.listen(64)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    return listener


def _claim(path: Path) -> None:
    """Make ``path`` free for a new socket, refusing if a live server holds it."""
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ConfigError(f"socket path {str(path)!r} is too long for a Unix socket")
    if answers(path):
        raise ConfigError(f"another process already answers queries on {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left over by a process that did not close


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": " ".join(message.split())}


async def _send(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
    writer.write(json.dumps(response, ensure_ascii=False).encode() + b"\n")
    await writer.drain()
