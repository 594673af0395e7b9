"""Both consumers write in batches sized for ClickHouse: a trickle once, when its first
decision is the age bound old; a flood cut at the size bound; what is held written when the
consumer stops; and a batch above the ledger's end written without looking the ledger up.
The embedded pipeline runs on the real Redis, the Kafka consumer on tansu, both into chDB."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytest
from aiokafka import TopicPartition  # type: ignore[import-untyped]
from redis.asyncio import Redis

from analytics.errors import AnalyticsError
from stream.batching import BatchBounds, Pending
from stream.events import encode
from stream.handlers import entry_record
from stream.kafka_consumer import ConsumerSettings, DecisionConsumer
from stream.redis_consumer import CONSUMER, GROUP, ensure_group
from tests.support.embedded_pipeline import Embedded, decide, pending
from tests.support.event_store import CountingStore, open_store, store_totals
from tests.support.events import numbered_decision
from tests.support.kafka import KafkaBroker, create_topic, produce, unique_topic
from tests.support.polling import eventually, eventually_equal

pytestmark = pytest.mark.timeout(60)


# -- the bounds ---------------------------------------------------------------------------------


def test_a_batch_is_due_once_full_or_once_its_first_item_is_old() -> None:
    pending: Pending[str] = Pending(BatchBounds(max_decisions=10, max_age=1.0))
    assert (pending.deadline(), pending.due(0.0)) == (None, False)
    pending.add(["a", "b"], read_at=5.0, sizes=[4, 4])
    assert (pending.due(5.9), pending.due(6.0), pending.deadline()) == (False, True, 6.0)
    pending.add(["c"], read_at=5.5, sizes=[4])
    assert pending.due(5.6)  # 12 decisions
    assert pending.take() == ["a", "b"]  # with "c" it would be 12
    assert (pending.decisions, pending.deadline()) == (4, 6.5)  # "c" keeps its read time
    assert pending.take_all() == ["c"]
    assert (len(pending), pending.decisions, pending.deadline()) == (0, 0, None)


def test_a_batch_of_min_decisions_is_due_at_min_age_a_smaller_one_at_max_age() -> None:
    bounds = BatchBounds(max_decisions=100, min_decisions=10, min_age=1.0, max_age=5.0)
    pending: Pending[str] = Pending(bounds)
    pending.add(["a"], read_at=0.0, sizes=[4])
    assert (pending.due(1.0), pending.deadline()) == (False, 5.0)
    # a small batch is looked at again from min_age on, every min_age, up to its deadline
    assert [pending.next_look(now) for now in (0.0, 2.5, 4.5)] == [1.0, 3.5, 5.0]
    assert pending.due(5.0)
    pending.add(["b"], read_at=0.5, sizes=[6])  # 10 decisions: due at min_age
    assert (pending.deadline(), pending.next_look(0.5)) == (1.0, 1.0)
    assert (pending.due(0.9), pending.due(1.0)) == (False, True)


def test_the_batch_after_a_busy_one_is_due_at_min_age_then_small_ones_wait() -> None:
    bounds = BatchBounds(max_decisions=100, min_decisions=10, min_age=1.0, max_age=5.0)
    pending: Pending[str] = Pending(bounds)
    pending.add(["busy"], read_at=0.0, sizes=[12])
    assert pending.due(1.0)
    assert pending.take() == ["busy"]
    pending.add(["tail"], read_at=1.5, sizes=[2])  # the stream fell quiet
    assert (pending.deadline(), pending.due(2.5)) == (2.5, True)
    assert pending.take() == ["tail"]
    pending.add(["quiet"], read_at=3.0, sizes=[2])  # after a small batch: max_age again
    assert (pending.deadline(), pending.due(4.0), pending.due(8.0)) == (8.0, False, True)


def test_a_min_age_at_or_above_max_age_leaves_max_age_to_decide() -> None:
    pending: Pending[str] = Pending(BatchBounds(max_age=0.2))  # min_age 1 s by default
    pending.add(["a"], read_at=0.0, sizes=[5_000])
    assert (pending.deadline(), pending.next_look(0.0), pending.due(0.2)) == (0.2, 0.2, True)


def test_an_item_larger_than_the_size_bound_is_a_batch_of_its_own() -> None:
    pending: Pending[str] = Pending(BatchBounds(max_decisions=3))
    pending.add(["big", "small", "more"], read_at=0.0, sizes=[5, 1, 2])
    assert [pending.take(), pending.take()] == [["big"], ["small", "more"]]


def test_items_of_a_source_given_up_are_discarded() -> None:
    pending: Pending[int] = Pending(BatchBounds())
    pending.add([1, 2, 3, 4], read_at=0.0)
    assert pending.discard(lambda n: n % 2 == 0) == 2
    assert (pending.decisions, pending.take_all()) == (2, [1, 3])


@pytest.mark.parametrize(
    ("bounds", "named"),
    [
        ({"max_decisions": 0}, "not 0"),
        ({"max_decisions": 2_000_000}, "not 2000000"),
        ({"max_decisions": 1.5}, "not 1.5"),
        ({"max_age": -0.5}, "not -0.5"),
        ({"max_age": 61}, "not 61"),
        ({"max_age": math.nan}, "not nan"),
        ({"min_decisions": 0}, "min decisions must be 1 to 1000000 decisions, not 0"),
        ({"min_age": -1}, "min age must be 0 to 60 seconds, not -1"),
    ],
)
def test_bad_bounds_are_refused_naming_the_value(bounds: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        BatchBounds(**bounds)


# -- the embedded pipeline on the Valkey stream -----------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    opened = open_store(tmp_path / "ch")
    yield CountingStore(opened)
    opened.close()


async def test_a_trickle_is_one_insert_once_its_first_decision_is_the_age_bound_old(
    redis: Redis, store: CountingStore, tenant: str
) -> None:
    embedded = Embedded(redis, store, BatchBounds(max_age=1.0))
    handler = embedded.handler
    async with embedded.running():
        started = time.monotonic()
        await decide(embedded.limiter, tenant, 3, "a")  # three reads' worth, one by one
        await eventually(lambda: handler.stats.written == 6, 20, "the trickle's 6 rows")
        assert time.monotonic() - started >= 1.0  # held for the age bound, not per read
        assert (handler.stats.batches, store.writes) == (1, [6])
        await decide(embedded.limiter, tenant, 2, "b")
        await eventually(lambda: handler.stats.written == 10, 20, "the next 4 rows")
        assert store.writes == [6, 4]
        # one cut recorded per batch; the ledger's end looked up once, and no batch needed
        # a lookup of its offsets
        # three statements a batch: its cut, its insert, its ledger rows; the ledger's end
        # looked up once, and no batch needed a lookup of its offsets
        assert store.calls["plan_batches"] == 2
        assert store.calls["insert"] == store.calls["add_to_ledger"] == 2
        assert store.calls["last_written_offset"] == 1
        assert store.calls["written_offsets"] == handler.stats.lookups == 0
        await eventually_equal(
            lambda: pending(redis, embedded.stream), 0, 20, "the acknowledgements"
        )
    # raw rows, ledger rows (one per entry), rollups
    assert store_totals(store.store) == [10, 5, 10, 10, 10]


async def test_a_busy_batch_is_inserted_at_min_age_a_trickle_only_at_max_age(
    redis: Redis, store: CountingStore, tenant: str
) -> None:
    bounds = BatchBounds(min_decisions=6, min_age=0.3, max_age=4.0)
    embedded = Embedded(redis, store, bounds)
    handler = embedded.handler
    async with embedded.running():
        started = time.monotonic()
        await decide(embedded.limiter, tenant, 1, "small")  # 2 decisions: fewer than 6
        await eventually(lambda: handler.stats.written == 2, 20, "the trickle's 2 rows")
        assert time.monotonic() - started >= 4.0  # held for max_age
        started = time.monotonic()
        await decide(embedded.limiter, tenant, 4, "busy")  # 8 decisions
        await eventually(lambda: handler.stats.written == 10, 20, "the busy batch's 8 rows")
        assert time.monotonic() - started < 4.0  # due at min_age, long before max_age
        assert store.writes == [2, 8]


async def test_a_caught_up_worker_reads_a_trickle_once_per_batch_not_once_per_entry(
    redis: Redis, store: CountingStore, tenant: str
) -> None:
    embedded = Embedded(redis, store, BatchBounds(max_age=2.0))
    group = embedded.pipeline._group
    reads: list[int] = []
    read_new = group.read_new

    async def counted(block_ms: int | None = None, count: int | None = None) -> list[Any]:
        entries = await read_new(block_ms, count)
        reads.append(len(entries))
        return entries

    group.read_new = counted  # type: ignore[method-assign]
    async with embedded.running():
        await eventually(lambda: bool(reads), 20, "the first read")
        reads.clear()
        for i in range(5):  # an entry every 20 ms, as a trickle of requests makes them
            await decide(embedded.limiter, tenant, 1, f"t{i}-")
            await asyncio.sleep(0.02)
        await eventually(lambda: embedded.handler.stats.written == 10, 20, "the 10 rows")
        assert embedded.handler.stats.batches == 1
        # the first entry as it came, the four others together once the batch was due
        assert [n for n in reads if n] == [1, 4]


async def test_a_flood_is_cut_at_the_size_bound(
    redis: Redis, store: CountingStore, tenant: str
) -> None:
    embedded = Embedded(redis, store, BatchBounds(max_decisions=100, max_age=0.3))
    await decide(embedded.limiter, tenant, 125, "f")  # 250 decisions waiting for the worker
    async with embedded.running():
        await eventually(lambda: embedded.handler.stats.written == 250, 30, "250 rows")
        await eventually_equal(
            lambda: pending(redis, embedded.stream), 0, 20, "the acknowledgements"
        )
    assert store.writes == [100, 100, 50]
    assert embedded.handler.stats.batches == math.ceil(250 / 100)
    assert store.calls["plan_batches"] == 3
    assert store.calls["written_offsets"] == 0
    assert store_totals(store.store) == [250, 125, 250, 250, 250]


async def test_a_stopping_pipeline_writes_what_it_holds_at_once(
    redis: Redis, store: CountingStore, tenant: str
) -> None:
    embedded = Embedded(redis, store, BatchBounds(max_age=60))
    async with embedded.running() as task:
        await decide(embedded.limiter, tenant, 2, "s")
        await eventually_equal(lambda: pending(redis, embedded.stream), 2, 20, "the entries read")
        assert store.writes == []  # held: the batch is due in a minute
        embedded.stop.set()
        await asyncio.wait_for(task, 10)
        assert store.writes == [4]
        assert await pending(redis, embedded.stream) == 0


async def test_the_next_batch_is_read_while_one_is_written(
    redis: Redis, tenant: str, tmp_path: Path
) -> None:
    executor = ThreadPoolExecutor(max_workers=1)  # the store's thread, not the loop's
    loop = asyncio.get_running_loop()
    opened = await loop.run_in_executor(executor, open_store, tmp_path / "ch")
    gate = threading.Event()
    store = CountingStore(opened, gate)

    async def in_store(call: Callable[..., Any], *args: Any) -> Any:
        return await loop.run_in_executor(executor, call, *args)

    embedded = Embedded(redis, store, BatchBounds(max_age=1.0), in_store)
    try:
        async with embedded.running():
            await decide(embedded.limiter, tenant, 2, "first")
            await eventually(lambda: store.calls["insert"] == 1, 20, "the first batch's write")
            await decide(embedded.limiter, tenant, 3, "next")
            # read (delivered, not yet acknowledged) while the first batch is being written
            await eventually_equal(lambda: pending(redis, embedded.stream), 5, 20, "the next read")
            assert store.writes == []
            gate.set()
            await eventually(lambda: embedded.handler.stats.written == 10, 20, "10 rows")
        assert store.writes == [4, 6]
        assert await pending(redis, embedded.stream) == 0
    finally:
        gate.set()
        await loop.run_in_executor(executor, opened.close)
        executor.shutdown()


async def test_a_recorded_cut_longer_than_a_page_of_pending_entries_is_written_whole(
    redis: Redis, store: CountingStore, tenant: str
) -> None:
    """A killed worker's batch, its insert cut short, re-read in pages smaller than it:
    only the whole cut under its token completes the rollups without doubling the rows."""
    embedded = Embedded(redis, store, BatchBounds())
    await decide(embedded.limiter, tenant, 30, "p")
    await ensure_group(redis, embedded.stream)
    reply: Any = await redis.xreadgroup(GROUP, CONSUMER, {embedded.stream: ">"}, count=1000)
    records = [entry_record(entry_id, fields) for entry_id, fields in reply[0][1]]
    raw = store.store
    raw.plan_batches([(embedded.stream, 0, records[0].offset, records[-1].offset)])
    raw._run(lambda c: c.command("CREATE TABLE ratewatch.broken (x UInt8) ENGINE = Memory"))
    raw._run(lambda c: c.command(
        "CREATE MATERIALIZED VIEW ratewatch.broken_mv TO ratewatch.broken AS SELECT "
        "throwIf(latency_us >= 0, 'killed') AS x FROM ratewatch.decisions"))  # fmt: skip
    with pytest.raises(AnalyticsError, match="killed"):
        embedded.handler.handle(embedded.stream, 0, records)
    raw._run(lambda c: c.command("DROP VIEW ratewatch.broken_mv"))
    assert store_totals(raw)[:2] == [60, 0]  # the raw rows in; no ledger, no rollups

    assert await embedded.pipeline.recover(count=7) == 30
    assert store_totals(raw) == [60, 30, 60, 60, 60]
    assert store.writes[-1] == 60  # the recorded cut again, whole
    assert await pending(redis, embedded.stream) == 0


# -- the Kafka consumer -------------------------------------------------------------------------


class Kafka:
    """A consumer of a one-partition topic of its own, its store on one thread."""

    def __init__(
        self,
        broker: KafkaBroker,
        directory: Path,
        bounds: BatchBounds,
        gate: threading.Event | None = None,
        partitions: int = 1,
    ) -> None:
        self.gate = gate
        self.partitions = partitions
        self.bootstrap = broker.bootstrap
        self.topic = unique_topic()
        self.directory = directory
        self.settings = ConsumerSettings(
            broker.bootstrap,
            topic=self.topic,
            group="rw-test-group-" + uuid.uuid4().hex[:8],
            session_timeout_ms=6000,
            batch=bounds,
        )
        self.executor = ThreadPoolExecutor(max_workers=1)

    @asynccontextmanager
    async def consuming(self) -> AsyncIterator[tuple[DecisionConsumer, CountingStore]]:
        await create_topic(self.bootstrap, self.topic, partitions=self.partitions)
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(self.executor, open_store, self.directory)
        store = CountingStore(opened, self.gate)
        member = DecisionConsumer(self.settings, store, self.executor)
        try:
            yield member, store
        finally:
            if self.gate is not None:
                self.gate.set()
            await member.stop()
            await loop.run_in_executor(self.executor, opened.close)
            self.executor.shutdown()

    async def produce(self, first: int, count: int, partition: int = 0) -> None:
        events = [encode(numbered_decision(i)) for i in range(first, first + count)]
        await produce(self.bootstrap, self.topic, events, partition=partition)


async def test_kafka_a_trickle_is_one_insert_per_age_bound_without_ledger_lookups(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    kafka = Kafka(kafka_broker, tmp_path / "ch", BatchBounds(max_age=0.5))
    async with kafka.consuming() as (member, store):
        stats = member.handler.stats
        await member.start()
        await kafka.produce(0, 5)
        await eventually(lambda: stats.written == 5, 30, "the first 5 rows")
        await kafka.produce(5, 3)
        await eventually(lambda: stats.written == 8, 30, "the next 3 rows")
        await eventually(lambda: member.commits == 2, 10, "the second batch's commit")
        assert store.writes == [5, 3]
        assert stats.batches == 2
        assert store.calls["plan_batches"] == 2
        assert store.calls["insert"] == store.calls["add_to_ledger"] == 2
        assert store.calls["last_written_offset"] == 1
        assert store.calls["written_offsets"] == stats.lookups == 0


async def test_kafka_a_batch_over_partitions_adds_their_ledger_rows_in_one_statement(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    kafka = Kafka(kafka_broker, tmp_path / "ch", BatchBounds(max_age=1.0), partitions=3)
    async with kafka.consuming() as (member, store):
        for partition in range(3):
            await kafka.produce(partition * 10, 10, partition)
        await member.start()
        await eventually(lambda: member.handler.stats.written == 30, 30, "30 rows")
        await eventually(lambda: member.commits == 1, 10, "the batch's commit")
        # one batch: the cuts in one statement, an insert per partition, one ledger statement
        assert store.writes == [10, 10, 10]
        assert (store.calls["plan_batches"], store.calls["add_to_ledger"]) == (1, 1)
        totals = await asyncio.get_running_loop().run_in_executor(
            kafka.executor, store_totals, store.store
        )
        assert totals == [30] * 5


async def test_kafka_a_flood_is_cut_at_the_size_bound(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    kafka = Kafka(kafka_broker, tmp_path / "ch", BatchBounds(max_decisions=1000, max_age=1.0))
    async with kafka.consuming() as (member, store):
        await kafka.produce(0, 2500)
        await member.start()
        await eventually(lambda: member.handler.stats.written == 2500, 30, "2500 rows")
        await eventually(lambda: member.commits == 3, 10, "the third batch's commit")
        assert store.writes == [1000, 1000, 500]
        assert member.handler.stats.batches == math.ceil(2500 / 1000)
        assert store.calls["written_offsets"] == 0
        totals = await asyncio.get_running_loop().run_in_executor(
            kafka.executor, store_totals, store.store
        )
        assert totals == [2500] * 5


async def test_kafka_a_stopping_consumer_writes_and_commits_what_it_holds(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    kafka = Kafka(kafka_broker, tmp_path / "ch", BatchBounds(max_age=60))
    async with kafka.consuming() as (member, store):
        await kafka.produce(0, 4)
        await member.start()
        await eventually(lambda: len(member._pending) == 4, 30, "the records fetched")
        assert store.writes == []  # held: the batch is due in a minute
        await member.stop()
        assert store.writes == [4]
        assert member.commits == 1


async def test_kafka_the_next_batch_is_fetched_while_one_is_written(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    gate = threading.Event()
    kafka = Kafka(kafka_broker, tmp_path / "ch", BatchBounds(max_age=0.3), gate)
    async with kafka.consuming() as (member, store):
        await member.start()
        await kafka.produce(0, 5)
        await eventually(lambda: store.calls["insert"] == 1, 30, "the first batch's write")
        await kafka.produce(5, 7)
        await eventually(lambda: len(member._pending) == 7, 30, "the next fetch, held")
        assert store.writes == []
        gate.set()
        await eventually(lambda: member.handler.stats.written == 12, 30, "12 rows")
        assert store.writes == [5, 7]


class _Fetched(NamedTuple):
    partition: int
    offset: int


class _Positions:
    """A consumer's view of its partitions: which are assigned, and the next offset of each."""

    def __init__(self, topic: str, positions: dict[int, int]) -> None:
        self.topic = topic
        self.positions = positions

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(self.topic, p) for p in self.positions}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp.partition]


async def test_kafka_a_fetch_delivered_after_its_partition_was_reset_is_dropped() -> None:
    """Fetched records lie before their partition's position; after a rebalance or a seek
    back the position is behind them, and they are fetched again from there."""
    settings = ConsumerSettings("127.0.0.1:1", topic="t")
    consumer = _Positions("t", {0: 10, 1: 3})  # partition 0 sought back to 10; 2 revoked
    fetched = [_Fetched(0, 12), _Fetched(0, 13), _Fetched(1, 1), _Fetched(1, 2), _Fetched(2, 5)]
    with ThreadPoolExecutor(max_workers=1) as executor:
        member = DecisionConsumer(settings, cast(Any, None), executor)
        current = await member._current(consumer, cast(Any, fetched))
    assert current == [_Fetched(1, 1), _Fetched(1, 2)]
