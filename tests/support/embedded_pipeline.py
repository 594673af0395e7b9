"""An embedded pipeline on a stream of its own, on the real Redis, and a limiter appending
decisions to it: what the consumer tests of the Valkey stream drive."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis

from limiter.algorithms import Algorithm
from limiter.keyspace import Keyspace
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from stream.batching import BatchBounds
from stream.deferral import Deferral
from stream.events import decode_entry
from stream.handlers import BatchHandler
from stream.redis_consumer import GROUP, StreamPipeline, ensure_group
from tests.support.event_store import CountingStore, Letters


async def in_thread(call: Callable[..., Any], *args: Any) -> Any:
    return call(*args)  # the test's chDB lives on this thread


async def decide(limiter: RedisStore, tenant: str, entries: int, label: str) -> None:
    """``entries`` stream entries of two decisions each, one check-script call each."""
    for i in range(entries):
        checks = [
            Check(tenant, f"{label}{i}-{j}", Algorithm.FIXED_WINDOW, 10, 60_000, 1)
            for j in range(2)
        ]
        await limiter.decide(checks)


async def pending(redis: Redis, stream: str) -> int:
    return int((await redis.xpending(stream, GROUP))["pending"])


class Embedded:
    """A pipeline on a stream of its own, and the limiter appending to it."""

    def __init__(
        self,
        redis: Redis,
        store: CountingStore,
        bounds: BatchBounds,
        in_store: Callable[..., Awaitable[Any]] = in_thread,
        deferral: Deferral | None = None,
    ) -> None:
        self.redis = redis
        self.stream = f"test:events:{secrets.token_hex(4)}"
        self.limiter = RedisStore(redis, Keyspace(), event_stream=self.stream)
        self.stop = asyncio.Event()
        self.handler = BatchHandler(store, Letters(), decoder=decode_entry)
        self.pipeline = StreamPipeline(
            redis,
            self.stream,
            self.handler,
            store,
            in_store,
            self.stop,
            bounds=bounds,
            deferral=deferral,
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.Task[None]]:
        await ensure_group(self.redis, self.stream)
        task = asyncio.create_task(self.pipeline.run())
        try:
            yield task
        finally:
            self.stop.set()
            await asyncio.wait_for(task, 20)
