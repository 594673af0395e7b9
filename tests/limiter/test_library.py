"""``Limiter`` as a library, on the memory store and on a real Redis."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from limiter import Algorithm, InvalidInput, Limiter, MemoryStore, RedisStore
from limiter.keyspace import Keyspace

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis"])
async def limits(request: pytest.FixtureRequest, redis: Redis, tenant: str) -> Limiter:
    if request.param == "memory":
        return Limiter(MemoryStore(), tenant=tenant)
    store = RedisStore(redis, Keyspace())
    await store.load()
    return Limiter(store, tenant=tenant)


async def test_limit_then_deny_with_retry_after(limits: Limiter) -> None:
    decisions = [await limits.check("user:1", limit=3, window=60) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].retry_after is not None
    assert decisions[-1].retry_after >= 1
    assert decisions[-1].reason == "limit"


@pytest.mark.parametrize("algorithm", list(Algorithm))
async def test_every_algorithm(limits: Limiter, algorithm: Algorithm) -> None:
    decisions = [await limits.check("a", limit=2, window=10, algorithm=algorithm) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0, "window": 10}, "limit 0"),
        ({"limit": 1, "window": 0}, "window 0"),
        ({"limit": 10, "window": 10, "cost": -1}, "cost -1"),
    ],
)
async def test_bad_arguments_name_the_value(
    limits: Limiter, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await limits.check("k", **kwargs)
