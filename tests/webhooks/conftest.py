"""Fixtures of the webhook tests: a receiver to deliver to, and the session's Redis for a
delivery worker under the test's own key prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from tests.support.webhook_receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver: a real HTTP server that answers 200 unless told otherwise."""
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
async def worker_redis(redis: Redis, keyspace: Keyspace) -> AsyncIterator[Redis]:
    """The session's Redis, with the test's ``keyspace`` emptied afterwards (each module
    that uses it names its own ``keyspace`` fixture)."""
    yield redis
    keys = [key async for key in redis.scan_iter(match=f"{keyspace.prefix}:*")]
    if keys:
        await redis.delete(*keys)
