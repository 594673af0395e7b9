"""The check script's pipelined connection (limiter/store/script_pipe.py), on the session's
Redis: calls in flight together, each answered with its own reply; the URL's user, password
and database; error replies as redis-py raises them; a call without a reply within the
timeout, and a connection lost with calls on it, failing those calls and no others; the
next call connecting again."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
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

from limiter.algorithms import Algorithm, Reason
from limiter.keyspace import Keyspace
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from limiter.store.script_pipe import PipeAddress, ScriptPipe, pipe_address, script_pipe
from tests.support.polling import eventually_awaited
from tests.support.servers import RedisServer

pytestmark = pytest.mark.timeout(60)

ECHO = "return {KEYS[1], ARGV[1]}"
SET_IN_DB = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])"


@pytest.fixture
async def user(redis: Redis) -> AsyncIterator[tuple[str, str]]:
    """A user of the session's Redis of this test's own: its connections are the pipe's."""
    name, password = "pipe-" + secrets.token_hex(4), secrets.token_hex(8)
    await redis.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"],
                            commands=["+@all"])  # fmt: skip
    yield name, password
    await redis.acl_deluser(name)


def user_url(redis_server: RedisServer, user: tuple[str, str], db: int = 0) -> str:
    return f"redis://{user[0]}:{user[1]}@127.0.0.1:{redis_server.port}/{db}"


async def held_by_pause(redis: Redis, name: str) -> bool:
    """Whether the user's connection has a command held by ``CLIENT PAUSE`` (flag b)."""
    return any(c["user"] == name and "b" in c["flags"] for c in await redis.client_list())


def pipe_of(url: str, timeout: float) -> ScriptPipe:
    pipe = script_pipe(url, timeout)
    assert pipe is not None
    return pipe


async def paused_after_a_call(pipe: ScriptPipe, redis: Redis, ms: int) -> tuple[str, str]:
    """The pipe connected by a first call, then Redis's writes held for ``ms``: the
    scripts ECHO and SET_IN_DB, loaded."""
    sha = await redis.script_load(ECHO)
    assert await pipe.evalsha(sha, 1, "k", "before") == [b"k", b"before"]
    await redis.client_pause(ms, all=False)  # holds the commands that write
    return sha, await redis.script_load(SET_IN_DB)


async def connections_of(redis: Redis, name: str) -> int:
    return sum(1 for client in await redis.client_list() if client["user"] == name)


async def test_calls_in_flight_together_are_each_answered_on_one_connection(
    redis_server: RedisServer, redis: Redis, user: tuple[str, str]
) -> None:
    pipe = pipe_of(user_url(redis_server, user), timeout=5.0)
    sha = await redis.script_load(ECHO)
    replies = await asyncio.gather(
        *(pipe.evalsha(sha, 1, f"key{i}", "x" * (i % 7) + str(i)) for i in range(500))
    )
    assert replies == [[f"key{i}".encode(), ("x" * (i % 7) + str(i)).encode()] for i in range(500)]
    assert await connections_of(redis, user[0]) == 1
    await pipe.aclose()


async def test_the_urls_user_password_and_database(
    redis_server: RedisServer, redis: Redis, user: tuple[str, str]
) -> None:
    pipe = pipe_of(user_url(redis_server, user, db=5), timeout=5.0)
    sha = await redis.script_load(SET_IN_DB)
    key = "pipe-db-" + secrets.token_hex(4)
    assert await pipe.evalsha(sha, 1, key, "there") == b"there"
    in_db5 = Redis(host="127.0.0.1", port=redis_server.port, db=5)
    assert await in_db5.get(key) == b"there"
    assert await redis.exists(key) == 0  # not in database 0
    await in_db5.delete(key)
    await in_db5.aclose()
    await pipe.aclose()


async def test_a_wrong_password_is_an_authentication_error(
    redis_server: RedisServer, user: tuple[str, str]
) -> None:
    pipe = pipe_of(user_url(redis_server, (user[0], "wrong")), timeout=5.0)
    with pytest.raises(AuthenticationError):
        await pipe.evalsha("0" * 40, 0)


async def test_error_replies_are_redis_pys_errors(redis_server: RedisServer, redis: Redis) -> None:
    pipe = ScriptPipe(PipeAddress(port=redis_server.port), timeout=5.0)
    with pytest.raises(NoScriptError):
        await pipe.evalsha("0" * 40, 0)
    failing = await redis.script_load("return redis.error_reply('PASTDEADLINE too late')")
    with pytest.raises(ResponseError, match=r"^PASTDEADLINE too late"):
        await pipe.evalsha(failing, 0)
    # an error answers its own call only: the connection goes on
    assert await pipe.evalsha(await redis.script_load(ECHO), 1, "k", "v") == [b"k", b"v"]
    await pipe.aclose()


async def test_a_call_without_a_reply_in_time_fails_and_the_next_connects_again(
    redis_server: RedisServer, redis: Redis, user: tuple[str, str]
) -> None:
    pipe = pipe_of(user_url(redis_server, user), timeout=0.2)
    sha, writing = await paused_after_a_call(pipe, redis, 1000)
    key = "pipe-paused-" + secrets.token_hex(4)
    calls = [pipe.evalsha(writing, 1, key, str(i)) for i in range(3)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    # all three were on the connection that timed out
    assert all(isinstance(result, RedisTimeoutError) for result in results), results
    await redis.execute_command("CLIENT", "UNPAUSE")
    assert await pipe.evalsha(sha, 1, "k", "after") == [b"k", b"after"]
    # the connection that timed out was closed: one is left
    assert await connections_of(redis, user[0]) == 1
    await pipe.aclose()


async def test_a_lost_connection_fails_the_calls_on_it_and_the_next_connects_again(
    redis_server: RedisServer, redis: Redis, user: tuple[str, str]
) -> None:
    pipe = pipe_of(user_url(redis_server, user), timeout=5.0)
    sha, writing = await paused_after_a_call(pipe, redis, 2000)
    held = asyncio.ensure_future(pipe.evalsha(writing, 1, "pipe-" + secrets.token_hex(4), "v"))
    await eventually_awaited(lambda: held_by_pause(redis, user[0]), 5, "the call held")
    # CLIENT KILL is not held by a pause of writes
    assert await redis.client_kill_filter(user=user[0]) == 1
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(held, 1.0)  # at once, not at the 5 s timeout
    await redis.execute_command("CLIENT", "UNPAUSE")
    assert await pipe.evalsha(sha, 1, "k", "after") == [b"k", b"after"]
    await pipe.aclose()


async def test_a_store_on_the_pipe_decides_as_on_redis_py(
    redis_server: RedisServer, redis: Redis
) -> None:
    pipe = ScriptPipe(PipeAddress(port=redis_server.port), timeout=5.0)
    prefix = "pipe-store-" + secrets.token_hex(4)
    on_pipe = RedisStore(redis, Keyspace(prefix + "a"), pipe=pipe)
    on_client = RedisStore(redis, Keyspace(prefix + "b"))
    await on_pipe.load()
    await on_client.load()
    checks = [
        Check("t", f"k{i % 4}", Algorithm.FIXED_WINDOW, 3, 60_000, 1,
              windows=((3, 60_000), (2, 3_600_000)) if i % 4 == 0 else ())
        for i in range(20)
    ]  # fmt: skip
    now = 1_700_000_000_000
    decided = await on_pipe.decide(checks, now)
    assert decided == await on_client.decide(checks, now)
    # k0 (a policy: 2 an hour) allows 2 of its 5 checks, k1-k3 (3 a minute) 3 of 5 each
    assert [o.reason for o in decided].count(Reason.LIMIT) == 3 + 3 * 2
    await redis.script_flush()  # the store loads its script again on NOSCRIPT
    assert await on_pipe.decide(checks[:1], now) == await on_client.decide(checks[:1], now)
    await pipe.aclose()


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://127.0.0.1:6390", PipeAddress("127.0.0.1", 6390)),
        ("valkey://u:p@h:1/3", PipeAddress("h", 1, None, "u", "p", 3)),
        ("redis://:secret@h", PipeAddress("h", 6379, None, None, "secret")),
        ("unix:///run/redis.sock?db=2", PipeAddress(path="/run/redis.sock", db=2)),
        ("rediss://h:1", None),  # TLS: redis-py's client
        ("redis://h:1?socket_keepalive=true", None),  # an option the pipe does not take
    ],
)
def test_the_urls_the_pipe_serves(url: str, address: PipeAddress | None) -> None:
    assert pipe_address(url) == address
