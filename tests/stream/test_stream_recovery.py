"""The embedded pipeline's recovery: a worker killed in the middle of a write leaves its
batch pending; the next one writes it with the recorded cut, adding nothing twice."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from analytics.clickhouse import chdb_url, connect
from analytics.errors import AnalyticsError
from analytics.event_store import ClickHouseEventStore
from analytics.migrate import migrate
from limiter.algorithms import Algorithm
from limiter.keyspace import Keyspace
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from stream.events import decode_entry
from stream.handlers import BatchHandler, Record, entry_record
from stream.redis_consumer import CONSUMER, GROUP, StreamPipeline, cut, ensure_group
from tests.support.polling import eventually_awaited

ROLLUPS = ("decisions_per_minute", "decisions_per_hour", "decisions_per_day")


class Letters:
    def __init__(self) -> None:
        self.sent: list[Record] = []

    def send(self, source: str, partition: int, record: Record, error: str) -> None:
        self.sent.append(record)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClickHouseEventStore]:
    url = chdb_url(tmp_path / "ch")
    client = connect(url)
    migrate(client)
    opened = ClickHouseEventStore(client)
    yield opened
    opened.close()


def totals(store: ClickHouseEventStore) -> list[int]:
    sql = ["SELECT count() FROM ratewatch.decisions"]
    sql += [f"SELECT sum(requests) FROM ratewatch.{table}" for table in ROLLUPS]
    return [int(store._run(lambda c, s=s: c.query(s).result_rows[0][0])) for s in sql]


async def in_thread(call: Callable[..., Any], *args: Any) -> Any:
    return call(*args)  # the test's chDB lives on this thread


async def test_a_write_cut_short_by_a_crash_is_completed_once(
    redis: Redis, store: ClickHouseEventStore, tenant: str
) -> None:
    stream = f"test:events:{secrets.token_hex(4)}"
    limiter = RedisStore(redis, Keyspace(), event_stream=stream)
    for i in range(30):  # 30 entries of 4 decisions
        await limiter.decide([Check(tenant, f"k{i}-{j}", Algorithm.FIXED_WINDOW, 10, 60_000, 1)
                              for j in range(4)])  # fmt: skip
    await ensure_group(redis, stream)
    # the first worker reads everything, records its cut and dies inside the write
    reply = await redis.xreadgroup(GROUP, CONSUMER, {stream: ">"}, count=1000)
    records = [entry_record(entry_id, fields) for entry_id, fields in reply[0][1]]
    handler = BatchHandler(store, Letters(), decoder=decode_entry)
    store.plan_batches([(stream, 0, records[0].offset, records[-1].offset)])
    store._run(lambda c: c.command("CREATE TABLE ratewatch.broken (x UInt8) ENGINE = Memory"))
    store._run(lambda c: c.command(
        "CREATE MATERIALIZED VIEW ratewatch.broken_mv TO ratewatch.broken AS SELECT "
        "throwIf(latency_us >= 0, 'killed') AS x FROM ratewatch.decisions"))  # fmt: skip
    with pytest.raises(AnalyticsError, match="killed"):
        handler.handle(stream, 0, records)
    store._run(lambda c: c.command("DROP VIEW ratewatch.broken_mv"))
    assert totals(store)[0] == 120  # raw rows in, the rollups incomplete

    pipeline = StreamPipeline(redis, stream, handler, store, in_thread, asyncio.Event())
    assert await pipeline.recover() == 30
    assert totals(store) == [120, 120, 120, 120]
    assert (await redis.xpending(stream, GROUP))["pending"] == 0
    assert await pipeline.recover() == 0


def test_cut_follows_recorded_cuts_and_fills_between_them() -> None:
    records = [Record(offset, b"") for offset in (1, 2, 3, 5, 8, 9, 10, 12)]
    batches = cut(records, {2: 5, 9: 10})
    assert [([r.offset for r in batch], planned) for batch, planned in batches] == [
        ([1], False), ([2, 3, 5], True), ([8], False), ([9, 10], True), ([12], False)]  # fmt: skip


async def decide(limiter: RedisStore, tenant: str, entries: int, label: str) -> None:
    for i in range(entries):  # one entry of 2 decisions per call
        key = f"{label}{i}"
        await limiter.decide([Check(tenant, f"{key}-{j}", Algorithm.FIXED_WINDOW, 10, 60_000, 1)
                              for j in range(2)])  # fmt: skip


async def pending(redis: Redis, stream: str) -> int:
    return int((await redis.xpending(stream, GROUP))["pending"])


async def test_the_running_pipeline_writes_and_acknowledges_new_entries_until_stopped(
    redis: Redis, store: ClickHouseEventStore, tenant: str
) -> None:
    stream = f"test:events:{secrets.token_hex(4)}"
    limiter = RedisStore(redis, Keyspace(), event_stream=stream)
    await decide(limiter, tenant, 5, "before")  # appended before the group exists
    await ensure_group(redis, stream)
    stop = asyncio.Event()
    handler = BatchHandler(store, Letters(), decoder=decode_entry)
    pipeline = StreamPipeline(redis, stream, handler, store, in_thread, stop, block_ms=20)

    async def stored_and_acknowledged() -> bool:
        return totals(store)[0] == 20 and await pending(redis, stream) == 0

    running = asyncio.create_task(pipeline.run())
    try:
        await decide(limiter, tenant, 5, "after")
        await eventually_awaited(stored_and_acknowledged, 20, "20 rows, every entry acknowledged")
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    assert totals(store) == [20, 20, 20, 20]


async def test_a_pipeline_stopped_while_the_store_fails_leaves_its_batch_pending(
    redis: Redis, store: ClickHouseEventStore, tenant: str
) -> None:
    stream = f"test:events:{secrets.token_hex(4)}"
    limiter = RedisStore(redis, Keyspace(), event_stream=stream)
    await decide(limiter, tenant, 6, "k")
    await ensure_group(redis, stream)
    stop = asyncio.Event()

    class Failing:
        """The store, failing the batch's cut as the worker is told to stop."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def plan_batches(self, plans: Any) -> None:
            stop.set()
            raise ConnectionError("the store is away")

    handler = BatchHandler(store, Letters(), decoder=decode_entry)
    failing = StreamPipeline(redis, stream, handler, Failing(), in_thread, stop)
    await asyncio.wait_for(failing.run(), 10)  # returns, the batch unwritten
    assert totals(store)[0] == 0
    assert await pending(redis, stream) == 6

    pipeline = StreamPipeline(redis, stream, handler, store, in_thread, asyncio.Event())
    assert await pipeline.recover() == 6
    assert totals(store) == [12, 12, 12, 12]
    assert await pending(redis, stream) == 0
