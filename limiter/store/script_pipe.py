"""One Redis connection that carries the check script's calls, pipelined.

redis-py's asyncio client spends about 75 µs of CPU per call on a 2-core box: a pool
checkout, a retry wrapper, a stream reader with a timeout around each read, the release.
The round trip itself costs about 30. The check path makes one call per coalesced group of
checks, so at low concurrency (one request at a time) each check pays that whole cost.

Here a call is its packed command written to the connection and a future, answered in the
order the calls were written (Redis answers a connection's commands in order); hiredis
parses, as it does for redis-py, and ``limiter.store.resp`` packs. Calls in flight together
share the connection.

Timeouts are redis-py's, per call: a call that has no reply within ``timeout`` fails, and
with it every call behind it on the connection, which is closed (its late replies would
answer the wrong calls); the next call connects again. One timer per connection, set for
the oldest call, does this: a call arms no timer of its own.

A new connection answers a ``PING`` before it carries a call, as redis-py's answers its
``CLIENT SETINFO``.

Only what the check path needs: ``EVALSHA`` on a single server, over TCP or a Unix socket,
with the URL's user, password and database. TLS, query options and Redis Cluster stay with
redis-py's client (``script_pipe`` returns None for them).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis.asyncio.connection import UnixDomainSocketConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from limiter.redis_client import redis_scheme
from limiter.store.resp import pack_command, pack_evalsha

# what parse_url may give that the pipe knows how to use
_PIPE_FIELDS = frozenset({"username", "password", "host", "port", "db", "path"})


@dataclass(frozen=True)
class PipeAddress:
    """Where the pipe connects: ``path`` (a Unix socket) or ``host`` and ``port``."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0


def pipe_address(url: str) -> PipeAddress | None:
    """The pipe's address for the Redis ``url``; None for one it leaves to redis-py (TLS,
    options in the query string)."""
    fields: dict[str, Any] = dict(parse_url(redis_scheme(url)))
    connection_class = fields.pop("connection_class", None)
    if connection_class not in (None, UnixDomainSocketConnection):
        return None
    if not fields.keys() <= _PIPE_FIELDS:
        return None
    return PipeAddress(**fields)


def script_pipe(url: str, timeout: float) -> ScriptPipe | None:
    """A pipe to the server at ``url`` (calls time out after ``timeout`` s), or None where
    the pipe does not serve that URL."""
    address = pipe_address(url)
    return None if address is None else ScriptPipe(address, timeout)


def _reply_error(error: hiredis.ReplyError) -> ResponseError:
    message = str(error)
    if message.startswith("NOSCRIPT"):  # the store loads the script again on it
        return NoScriptError(message)
    return ResponseError(message)


class _Connection(asyncio.Protocol):
    """One connection's calls in flight, oldest first, with their deadlines."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport's subclasses, but have its methods
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        """The reply to ``packed`` (a whole command), once it comes."""
        assert self._transport is not None  # called only while ``open``
        loop = self._loop
        future = loop.create_future()
        deadline = loop.time() + self._timeout
        self._waiting.append((future, deadline))
        self._transport.write(packed)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)
        return future

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()[0]
                if future.done():  # its caller stopped waiting
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(_reply_error(reply))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # not Redis's protocol
            self.fail(RedisConnectionError(f"Redis's reply could not be read: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis closed the connection: {exc or 'at its end'}"))

    def _expire(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if deadline > self._loop.time():
            self._timer = self._loop.call_at(deadline, self._expire)
            return
        self.fail(RedisTimeoutError(f"Redis did not answer within {self._timeout:g} s"))

    def fail(self, error: Exception) -> None:
        """Close the connection; every call in flight on it raises ``error``."""
        self.open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)


class ScriptPipe:
    def __init__(self, address: PipeAddress, timeout: float):
        self._address = address
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """``EVALSHA sha numkeys key… arg…``: the script's reply (a NoScriptError if the
        server does not have it, a ResponseError for any other error reply)."""
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connect()
        return await connection.call(pack_evalsha(sha, numkeys, keys_and_args))

    async def _connect(self) -> _Connection:
        async with self._connecting:  # calls that arrive meanwhile share the new connection
            connection = self._connection
            if connection is None or not connection.open:
                try:
                    connection = await asyncio.wait_for(self._open(), self._timeout)
                except TimeoutError:
                    raise RedisTimeoutError(
                        f"Redis did not accept a connection within {self._timeout:g} s"
                    ) from None
                self._connection = connection
            return connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        address = self._address
        connection: _Connection
        if address.path is not None:
            _, connection = await loop.create_unix_connection(
                lambda: _Connection(loop, self._timeout), address.path
            )
        else:
            _, connection = await loop.create_connection(
                lambda: _Connection(loop, self._timeout),
                address.host,
                address.port,
                family=socket.AF_UNSPEC,
            )
        try:
            await self._handshake(connection)
        except BaseException:
            connection.fail(RedisConnectionError("the connection's handshake failed"))
            raise
        return connection

    async def _handshake(self, connection: _Connection) -> None:
        address = self._address
        if address.password is not None:
            credentials = [address.password]
            if address.username:
                credentials.insert(0, address.username)
            try:
                await connection.call(pack_command("AUTH", *credentials))
            except ResponseError as exc:
                raise AuthenticationError(f"Redis refused the credentials: {exc}") from None
        if address.db:
            await connection.call(pack_command("SELECT", address.db))
        # answered before any call is written: a server whose kernel accepted the
        # connection but which does not run (stopped, or busy with a long script) fails the
        # connection here, and no call waits in it to run once the server is back
        await connection.call(pack_command("PING"))

    async def aclose(self) -> None:
        """Close the connection; calls in flight on it raise a ConnectionError."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.fail(RedisConnectionError("the client was closed"))
