"""The Redis store keeps each check shape's arguments encoded (limiter/store/redis.py): a
batch of many shapes, past the bound where they are forgotten, with policies of several
windows among them, is decided exactly as each check alone.  The session's Redis."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from limiter.algorithms import Algorithm
from limiter.keyspace import Keyspace
from limiter.redis_client import redis_from_url
from limiter.store import redis as redis_store
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from tests.support.servers import RedisServer

pytestmark = pytest.mark.timeout(60)

NOW_MS = 1_700_000_000_000


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    client = redis_from_url(redis_server.url, timeout=10.0)
    store = RedisStore(client, Keyspace("shapes-" + secrets.token_hex(4)))
    await store.load()
    yield store
    await client.aclose(close_connection_pool=True)


def shaped(index: int) -> Check:
    """Checks of many shapes: limits, windows, costs, algorithms, block subjects and, one
    in three, a policy's second window that decides (it has less left)."""
    algorithm = list(Algorithm)[index % 3]
    limit = 10 + index
    window_ms = 1000 * (1 + index % 7)
    windows: tuple[tuple[int, int], ...] = ()
    if index % 3 == 0:
        windows = ((limit, window_ms), (limit - 5, 3_600_000 + 1000 * (index % 5)))
    return Check(
        "tenant",
        f"key{index}",
        algorithm,
        limit,
        window_ms,
        1 + index % 4,
        ip=f"192.0.2.{index % 250}" if index % 2 else None,
        windows=windows,
    )


async def test_many_shapes_past_the_bound_are_decided_as_each_alone(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "MAX_ENCODED_SHAPES", 50)
    checks = [shaped(index) for index in range(300)]
    together = [await store.decide(checks[i : i + 60], NOW_MS) for i in range(0, 300, 60)]
    outcomes = [outcome for part in together for outcome in part]
    for check, outcome in zip(checks, outcomes, strict=True):
        deciding_limit = check.windows[1][0] if check.windows else check.limit
        assert outcome.allowed, check
        assert outcome.remaining == deciding_limit - check.cost, check
    # each alone now, on counters the batch used once: every one counts its second use
    for check in checks:
        [alone] = await store.decide([check], NOW_MS)
        deciding_limit = check.windows[1][0] if check.windows else check.limit
        assert alone.remaining == deciding_limit - 2 * check.cost, check
