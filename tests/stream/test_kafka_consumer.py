"""The analytics consumer (`ratewatch stream`) against a real broker (tansu) and real chDB:
every event stored once with its fields, through a SIGKILL and a rebalance; malformed
events dead-lettered while the rest is written; the store's ledger and batch cuts.

chDB belongs to one process: while a `ratewatch stream` runs, the test reads through its
query socket.  Tests isolate themselves by topic and consumer group.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    TopicPartition,
)

from analytics.clickhouse import DECISIONS_TABLE, ROLLUP_TABLES
from analytics.errors import AnalyticsError
from analytics.event_store import CONSUMED_TABLE, ClickHouseEventStore
from analytics.query_client import answers, query
from stream.events import DECISIONS_DLQ_TOPIC, DECISIONS_TOPIC, decode, encode
from stream.handlers import BatchHandler, Record
from stream.kafka_consumer import ConsumerSettings, DecisionConsumer, _Partition
from tests.support.credentials import BOOTSTRAP_KEY, create_key
from tests.support.event_store import ROLLUPS, Letters, open_store, store_scalar, store_totals
from tests.support.events import numbered_decision
from tests.support.kafka import KafkaBroker, create_topic, produce, unique_topic
from tests.support.polling import eventually_awaited, wait_until
from tests.support.servers import RatewatchProcess, RedisServer, free_port, start_limiter

pytestmark = pytest.mark.timeout(60)


async def _lag(bootstrap: str, topic: str, group: str) -> int:
    """Messages of ``topic`` after ``group``'s commits.  The fetch's high watermark, not
    ``end_offsets``: tansu answers ListOffsets with the last record batch's base offset + 1."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        committed = {tp: await consumer.committed(tp) or 0 for tp in partitions}
        consumer.assign(partitions)
        for tp, offset in committed.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + 10
        while any(consumer.highwater(tp) is None for tp in partitions):
            assert time.monotonic() < deadline, "no high watermark from the broker"
            await consumer.getmany(timeout_ms=100)
        return sum(consumer.highwater(tp) - offset for tp, offset in committed.items())
    finally:
        await consumer.stop()


def caught_up(bootstrap: str, topic: str, group: str) -> bool:
    """Whether ``group`` committed every message of ``topic``: nothing more will be written."""
    return asyncio.run(_lag(bootstrap, topic, group)) == 0


class StreamProcess:
    """``ratewatch stream`` as a real process; ready once its query socket answers."""

    def __init__(self, bootstrap: str, topic: str, group: str, workdir: Path) -> None:
        self.args = ["stream", "--kafka", bootstrap, "--topic", topic, "--group", group]
        # a killed member's partitions move after this, and a group forms in half of it
        self.args += ["--session-timeout", "6", "--data-dir", str(workdir / "d")]
        self.socket = workdir / "d" / "clickhouse" / "query.sock"
        self.log_path = workdir / "stream.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> StreamProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ratewatch", *self.args], stdout=log, stderr=log
            )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"ratewatch stream exited: {self.log()}")
            return answers(self.socket)

        wait_until(ready, 30, "ratewatch stream's query socket", 0.05)
        return self

    def query(self, sql: str) -> list[dict[str, Any]]:
        return query(self.socket, sql, timeout=20)

    def scalar(self, sql: str) -> Any:
        return next(iter(self.query(sql)[0].values()))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(sig)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(5)
        self.process = None
        return code


@pytest.fixture
def topic(kafka_broker: KafkaBroker) -> str:
    name = unique_topic()
    asyncio.run(create_topic(kafka_broker.bootstrap, name, partitions=3))
    return name


@pytest.fixture
def group() -> str:
    return "rw-test-group-" + uuid.uuid4().hex[:8]


@pytest.fixture
def consumer(
    kafka_broker: KafkaBroker, topic: str, group: str, tmp_path: Path
) -> Iterator[StreamProcess]:
    process = StreamProcess(kafka_broker.bootstrap, topic, group, tmp_path)
    yield process
    process.stop()


def totals(stream: StreamProcess, where: str) -> dict[str, int]:
    """Rows of the raw table and requests of every rollup and the ledger, ``where`` it holds."""
    sql = f"SELECT count() AS n FROM {DECISIONS_TABLE} WHERE {where}"
    result = {"raw": int(stream.scalar(sql))}
    result["unique"] = int(
        stream.scalar(f"SELECT uniqExact(event_id) FROM {DECISIONS_TABLE} WHERE {where}")
    )
    for table in ROLLUPS:
        result[table] = int(stream.scalar(f"SELECT sum(requests) FROM {table} WHERE {where}"))
    return result


# -- through a real broker -----------------------------------------------------------------


def test_every_event_is_stored_once_with_its_fields(
    kafka_broker: KafkaBroker, topic: str, group: str, consumer: StreamProcess
) -> None:
    events = [numbered_decision(i, tenant="fields") for i in range(3000)]
    sent = asyncio.run(produce(kafka_broker.bootstrap, topic, [encode(e) for e in events]))
    consumer.start()
    wait_until(lambda: caught_up(kafka_broker.bootstrap, topic, group), 30, "the topic", 0.2)

    n = len(events)
    expected = {"raw": n, "unique": n, **dict.fromkeys(ROLLUPS, n)}
    assert totals(consumer, "tenant = 'fields'") == expected
    assert consumer.scalar(f"SELECT count() FROM {CONSUMED_TABLE} WHERE source = '{topic}'") == n
    rows = consumer.query(
        "SELECT toString(event_id) AS event_id, toUnixTimestamp64Milli(ts) AS ts, v, tenant,"
        " key, algorithm, `limit`, `window`, cost, allowed, remaining, reset_in, reason, ip,"
        " route, user_agent, user_id, latency_us, instance, source, source_partition,"
        f" source_offset FROM {DECISIONS_TABLE} WHERE tenant = 'fields'"
    )
    stored = {row["event_id"]: row for row in rows}
    for e, where in zip(events, sent, strict=True):
        assert stored[e.event_id] == {
            "event_id": e.event_id,
            "ts": e.ts,
            "v": e.v,
            "tenant": e.tenant,
            "key": e.key,
            "algorithm": e.algorithm,
            "limit": e.limit,
            "window": e.window,
            "cost": e.cost,
            "allowed": e.allowed,
            "remaining": e.remaining,
            "reset_in": e.reset_in,
            "reason": e.reason,
            "ip": e.ip or "",
            "route": e.route or "",
            "user_agent": e.user_agent or "",
            "user_id": e.user_id or "",
            "latency_us": e.latency_us,
            "instance": e.instance,
            "source": topic,
            "source_partition": where.partition,
            "source_offset": where.offset,
        }
    assert consumer.stop() == 0
    assert "0 skipped as stored before" in consumer.log()


async def produce_steadily(bootstrap: str, topic: str, messages: list[bytes], rate: int) -> None:
    """``messages`` at about ``rate`` per second, in tenths of a second."""
    step = max(1, rate // 10)
    start = time.monotonic()
    for i, first in enumerate(range(0, len(messages), step)):
        # paced on purpose: traffic that keeps arriving while the consumer reads
        await asyncio.sleep(max(0.0, start + i / 10 - time.monotonic()))
        await produce(bootstrap, topic, messages[first : first + step])


@pytest.mark.timeout(90)
def test_a_consumer_killed_mid_batch_resumes_without_losing_or_doubling_a_row(
    kafka_broker: KafkaBroker, topic: str, group: str, consumer: StreamProcess
) -> None:
    """Killed while an insert has reached the raw table but not every view, with batches cut
    at the end of the log (traffic arriving as it consumes); on restart more records are
    there, so only the recorded cut lets the same insert complete rather than double."""
    n, steady = 60_000, 30_000
    messages = [encode(numbered_decision(i, tenant="killed")) for i in range(n)]
    state = (
        f"SELECT (SELECT count() FROM {DECISIONS_TABLE}) AS raw,"
        f" (SELECT sum(requests) FROM {ROLLUP_TABLES['minute']}) AS rollup,"
        f" (SELECT count() FROM {CONSUMED_TABLE}) AS ledger"
    )
    consumer.start()
    wait_until(lambda: "RateWatch stream:" in consumer.log(), 30, "the group to form", 0.05)
    traffic = threading.Thread(
        target=asyncio.run,
        args=(produce_steadily(kafka_broker.bootstrap, topic, messages[:steady], 10_000),),
    )
    traffic.start()
    try:
        wait_until(
            lambda: (lambda s: s["rollup"] < s["raw"])(consumer.query(state)[0]),
            30,
            "an insert under way",
            0.002,
        )
        consumer.stop(signal.SIGKILL)
    finally:
        traffic.join()
    asyncio.run(produce(kafka_broker.bootstrap, topic, messages[steady:]))
    consumer.start()  # the same data dir and group; joins once the dead member expired
    left = consumer.query(state)[0]
    assert left["ledger"] < left["raw"] < steady, left
    # (the views usually lag the raw table here; it may have just caught up before the kill)

    wait_until(lambda: caught_up(kafka_broker.bootstrap, topic, group), 60, "the topic", 0.2)
    expected = {"raw": n, "unique": n, **dict.fromkeys(ROLLUPS, n)}
    assert totals(consumer, "tenant = 'killed'") == expected
    assert consumer.scalar(f"SELECT sum(latency_us) FROM {DECISIONS_TABLE}") == n * (n - 1) // 2
    assert consumer.scalar(f"SELECT count() FROM {CONSUMED_TABLE}") == n
    assert consumer.stop() == 0
    assert "recorded batch cuts" in consumer.log()


def test_malformed_messages_go_to_the_dead_letter_topic_and_the_rest_is_written(
    kafka_broker: KafkaBroker, topic: str, group: str, consumer: StreamProcess
) -> None:
    good = [encode(numbered_decision(i, tenant="dlq")) for i in range(200)]
    bad = [
        b"{not json",
        b'{"v": 1, "event_id": "x"}',  # JSON, but not a decision event
        encode(numbered_decision(1000, tenant="dlq", event_id="not-a-uuid")),  # no column holds it
    ]
    messages = good[:100] + bad + good[100:]
    sent = asyncio.run(produce(kafka_broker.bootstrap, topic, messages, partition=1))
    consumer.start()
    wait_until(lambda: caught_up(kafka_broker.bootstrap, topic, group), 30, "the topic", 0.2)

    expected = {"raw": 200, "unique": 200, **dict.fromkeys(ROLLUPS, 200)}
    assert totals(consumer, "tenant = 'dlq'") == expected
    letters = asyncio.run(read_dead_letters(kafka_broker.bootstrap, topic, 3))
    assert [(d.headers["partition"], d.headers["offset"]) for d in letters] == [
        ("1", str(where.offset)) for where in sent[100:103]
    ]
    assert [d.value for d in letters[:2]] == bad[:2]
    assert decode(letters[2].value) == decode(bad[2])  # re-encoded by the store
    assert "malformed" in letters[0].headers["error"].lower()
    assert "missing required field" in letters[1].headers["error"]
    assert "UUID" in letters[2].headers["error"]

    assert consumer.running()  # and still consuming
    asyncio.run(
        produce(
            kafka_broker.bootstrap, topic, [encode(numbered_decision(i, "dlq")) for i in range(5)]
        )
    )
    wait_until(lambda: caught_up(kafka_broker.bootstrap, topic, group), 30, "the topic", 0.2)
    assert consumer.scalar(f"SELECT count() FROM {DECISIONS_TABLE} WHERE tenant = 'dlq'") == 205


class DeadLetter(NamedTuple):
    value: bytes
    headers: dict[str, str]


async def read_dead_letters(bootstrap: str, source: str, count: int) -> list[DeadLetter]:
    """The dead letters of ``source``, once ``count`` arrived, in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(DECISIONS_DLQ_TOPIC) or set()
        consumer.assign([TopicPartition(DECISIONS_DLQ_TOPIC, p) for p in partitions])
        found: list[tuple[int, DeadLetter]] = []
        deadline = time.monotonic() + 20
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    headers = {k: v.decode() for k, v in r.headers}
                    if headers.get("source") == source:
                        found.append((int(headers["offset"]), DeadLetter(r.value, headers)))
        assert len(found) == count, found
        return [letter for _, letter in sorted(found, key=lambda item: item[0])]
    finally:
        await consumer.stop()


@pytest.mark.timeout(90)
async def test_a_rebalance_between_two_members_loses_and_doubles_nothing(
    kafka_broker: KafkaBroker, topic: str, group: str, tmp_path: Path
) -> None:
    """Two consumers of one group (in one process, sharing the store's thread): a member
    joins and another leaves while batches are written."""
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(executor, open_store, tmp_path / "ch")
    settings = ConsumerSettings(
        kafka_broker.bootstrap, topic=topic, group=group, session_timeout_ms=6000, max_records=2000
    )
    first = DecisionConsumer(settings, store, executor)
    second = DecisionConsumer(settings, store, executor)

    async def written() -> int:
        sql = f"SELECT count() FROM {DECISIONS_TABLE}"
        return await loop.run_in_executor(executor, store_scalar, store, sql)

    total = 0
    try:
        total += len(await produce(kafka_broker.bootstrap, topic, batch_of(0, 20_000)))
        await first.start()
        await eventually_awaited(lambda: _above(written, 0), 40, "progress", 0.05)
        await second.start()  # the group rebalances while the first writes
        total += len(await produce(kafka_broker.bootstrap, topic, batch_of(20_000, 10_000)))
        await eventually_awaited(
            lambda: _above(written, 20_000), 40, "both members' progress", 0.05
        )
        await first.stop()  # and again: the second takes every partition
        total += len(await produce(kafka_broker.bootstrap, topic, batch_of(30_000, 5_000)))

        async def done() -> bool:
            return await _lag(kafka_broker.bootstrap, topic, group) == 0

        await eventually_awaited(done, 40, "the topic", 0.05)
        await second.stop()
        assert await loop.run_in_executor(executor, store_totals, store) == [total] * 5
        unique = f"SELECT uniqExact(event_id) FROM {DECISIONS_TABLE}"
        assert await loop.run_in_executor(executor, store_scalar, store, unique) == total
        assert first.handler.stats.written > 0
        assert second.handler.stats.written > 0
    finally:
        for member in (first, second):
            await member.stop()
        await loop.run_in_executor(executor, store.close)
        executor.shutdown()


class FlakyStore:
    """The store, failing its first ``failures`` writes (before writing anything)."""

    def __init__(self, store: ClickHouseEventStore, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.tokens: list[str] = []

    def written_offsets(self, source: str, partition: int, offsets: Any) -> set[int]:
        return self.store.written_offsets(source, partition, offsets)

    def stored_event_ids(self, events: Any) -> set[str]:
        return self.store.stored_event_ids(events)

    def write(self, source: str, partition: int, events: Any, token: str) -> int:
        self.tokens.append(token)
        if self.failures:
            self.failures -= 1
            raise AnalyticsError("ClickHouse is away")
        return self.store.write(source, partition, events, token)

    def plan_batches(self, plans: Any) -> None:
        self.store.plan_batches(plans)

    def planned_batches(self, source: str, partition: int, start: int, limit: int) -> Any:
        return self.store.planned_batches(source, partition, start, limit)


async def test_a_failing_store_is_retried_with_the_same_batch_before_anything_goes_on(
    kafka_broker: KafkaBroker, topic: str, group: str, tmp_path: Path
) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(executor, open_store, tmp_path / "ch")
    flaky = FlakyStore(store, failures=3)
    settings = ConsumerSettings(
        kafka_broker.bootstrap,
        topic=topic,
        group=group,
        session_timeout_ms=6000,
        retry_initial=0.01,
    )
    member = DecisionConsumer(settings, flaky, executor)
    try:
        total = len(await produce(kafka_broker.bootstrap, topic, batch_of(0, 3000)))
        await member.start()

        async def drained() -> bool:
            return await _lag(kafka_broker.bootstrap, topic, group) == 0

        await eventually_awaited(drained, 30, "the topic", 0.1)
        await member.stop()
        assert member.store_failures == 3
        assert flaky.tokens[:4] == [flaky.tokens[0]] * 4  # the same cut, again and again
        totals_ = await loop.run_in_executor(executor, store_totals, store)
        assert totals_ == [total] * 5
    finally:
        await member.stop()
        await loop.run_in_executor(executor, store.close)
        executor.shutdown()


async def _above(count: Any, value: int) -> bool:
    return bool(await count() > value)


def batch_of(start: int, n: int) -> list[bytes]:
    return [encode(numbered_decision(i, tenant="rebalance")) for i in range(start, start + n)]


# -- end to end: checks through the HTTP API ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_checks_through_the_api_become_exactly_as_many_rows(
    redis_server: RedisServer,
    kafka_broker: KafkaBroker,
    tenant: str,
    group: str,
    tmp_path: Path,
) -> None:
    api_key = create_key(redis_server.url, tenant)
    serve = start_limiter(
        redis_server.url,
        tmp_path,
        "--kafka",
        kafka_broker.bootstrap,
        env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP_KEY},
    )
    stream = StreamProcess(kafka_broker.bootstrap, DECISIONS_TOPIC, group, tmp_path).start()
    try:
        headers = {"Authorization": f"Bearer {api_key}"}
        checks = [
            {"key": f"e2e:{i % 10}", "limit": 25, "window": 60, "route": "/pay", "ip": "10.9.8.7"}
            for i in range(400)
        ]
        with httpx.Client(base_url=serve.base_url, timeout=10, headers=headers) as client:
            answers_ = []
            for first in range(0, len(checks), 50):
                response = client.post("/v1/batch", json={"checks": checks[first : first + 50]})
                assert response.status_code == 200, response.text
                answers_ += response.json()["results"]
        allowed = sum(1 for a in answers_ if a["allowed"])
        assert allowed == 250  # 25 for each of 10 keys

        where = f"tenant = '{tenant}'"

        def stored() -> int:
            return int(stream.scalar(f"SELECT count() FROM {DECISIONS_TABLE} WHERE {where}"))

        wait_until(lambda: stored() >= 400, 60, "400 rows", 0.2)
        wait_until(
            lambda: caught_up(kafka_broker.bootstrap, DECISIONS_TOPIC, group), 30, "topic", 0.2
        )
        assert totals(stream, where) == {"raw": 400, "unique": 400, **dict.fromkeys(ROLLUPS, 400)}
        by_reason = {
            row["reason"]: row["n"]
            for row in stream.query(
                f"SELECT reason, count() AS n FROM {DECISIONS_TABLE} WHERE {where} GROUP BY reason"
            )
        }
        assert by_reason == {"ok": 250, "limit": 150}
        assert (
            stream.scalar(
                f"SELECT countIf(route = '/pay' AND ip = '10.9.8.7' AND `limit` = 25"
                f" AND `window` = 60) FROM {DECISIONS_TABLE} WHERE {where}"
            )
            == 400
        )
    finally:
        stream.stop()
        serve.stop()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_limiter_stopped_in_an_outage_and_restarted_still_makes_one_row_per_check(
    redis_server: RedisServer,
    kafka_broker: KafkaBroker,
    tenant: str,
    group: str,
    tmp_path: Path,
) -> None:
    """SIGTERM while a batch is in doubt: the next start replays it from the spool (it may
    have landed too), marked resent, and the consumer stores each check once."""
    api_key = create_key(redis_server.url, tenant)
    port = free_port()

    def serve() -> RatewatchProcess:
        """The limiter, again on the same port and spool."""
        return start_limiter(
            redis_server.url,
            tmp_path,
            "--kafka",
            kafka_broker.bootstrap,
            port=port,
            env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP_KEY},
        )

    def check(client: httpx.Client, keys: range) -> None:
        for i in keys:
            response = client.post("/v1/check", json={"key": f"e2e:{i}", "limit": 5, "window": 60})
            assert response.status_code == 200, response.text

    def stream_status(client: httpx.Client) -> dict[str, Any]:
        health = client.get("/health/detailed").json()
        status: dict[str, Any] = health["dependencies"]["decision_stream"]
        return status

    server = serve()
    stream = StreamProcess(kafka_broker.bootstrap, DECISIONS_TOPIC, group, tmp_path)
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        with httpx.Client(base_url=server.base_url, timeout=10, headers=headers) as client:
            check(client, range(0, 100))
            sent = "ratewatch_stream_events_sent_total 100.0"
            wait_until(lambda: sent in client.get("/metrics").text, 30, "100 sent", 0.05)
            kafka_broker.freeze()  # an outage, then SIGTERM with a batch in doubt
            check(client, range(100, 200))
            wait_until(lambda: stream_status(client)["spooled_events"] == 100, 30, "spooled")
            assert stream_status(client)["in_doubt"] > 0
        assert server.stop() == 0
        kafka_broker.thaw()
        server = serve()  # replays the spool, the batch in doubt marked resent

        stream.start()
        where = f"tenant = '{tenant}'"

        def stored() -> int:
            return int(stream.scalar(f"SELECT count() FROM {DECISIONS_TABLE} WHERE {where}"))

        wait_until(lambda: stored() >= 200, 60, "200 rows", 0.2)
        with httpx.Client(base_url=server.base_url, timeout=10, headers=headers) as client:
            wait_until(lambda: stream_status(client)["status"] == "up", 30, "replayed", 0.1)
        wait_until(
            lambda: caught_up(kafka_broker.bootstrap, DECISIONS_TOPIC, group), 30, "topic", 0.2
        )
        assert totals(stream, where) == {"raw": 200, "unique": 200, **dict.fromkeys(ROLLUPS, 200)}
    finally:
        if kafka_broker.frozen:
            kafka_broker.thaw()
        stream.stop()
        server.stop()


# -- the store: ledger and cuts on real chDB ------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClickHouseEventStore]:
    opened = open_store(tmp_path / "ch")
    yield opened
    opened.close()


def records(start: int, stop: int) -> list[Record]:
    return [Record(i, encode(numbered_decision(i))) for i in range(start, stop)]


def test_a_batch_replayed_with_other_cuts_is_skipped_by_the_ledger(
    store: ClickHouseEventStore,
) -> None:
    handler = BatchHandler(store, Letters())
    batch = records(0, 100)
    assert handler.handle("src", 0, batch[:60]) == 60
    assert handler.handle("src", 0, batch[30:80]) == 20  # a replay after a rebalance
    assert handler.handle("src", 0, batch[80:]) == 20
    assert handler.handle("src", 0, batch) == 0
    assert (handler.stats.written, handler.stats.skipped) == (100, 130)
    assert store_totals(store) == [100] * 5
    # the same offsets of another partition or source are other records
    assert handler.handle("src", 1, records(0, 10)) == 10
    assert handler.handle("other", 0, records(0, 10)) == 10
    assert store.written_offsets("src", 1, [5, 9, 10, 11]) == {5, 9}
    assert store.written_offsets("src", 0, []) == set()


def test_resent_records_are_written_only_if_their_event_is_not_stored(
    store: ClickHouseEventStore,
) -> None:
    """A batch in doubt, sent again at other offsets: the offsets are new, the events not."""
    handler = BatchHandler(store, Letters())
    events = [numbered_decision(i) for i in range(60)]
    assert handler.handle("src", 0, [Record(i, encode(e)) for i, e in enumerate(events)]) == 60
    assert store.stored_event_ids([*events[:3], numbered_decision(99)]) == {
        e.event_id for e in events[:3]
    }

    unstored = [numbered_decision(i) for i in range(60, 70)]
    again = events[20:] + unstored  # the resent batch: 40 stored, 10 not yet
    resent = [Record(100 + i, encode(e), resent=True) for i, e in enumerate(again)]
    assert handler.handle("src", 0, resent) == 10
    assert (handler.stats.written, handler.stats.skipped) == (70, 40)
    assert store_totals(store) == [70] * 5
    assert store.stored_event_ids(unstored) == {e.event_id for e in unstored}

    # the original and its resent copy in one batch, either way round: written once
    first, second = numbered_decision(80), numbered_decision(81)
    batch = [
        Record(200, encode(first)),
        Record(201, encode(first), resent=True),
        Record(202, encode(second), resent=True),
        Record(203, encode(second)),
        Record(204, encode(second), resent=True),
    ]
    assert handler.handle("src", 0, batch) == 2
    assert store_totals(store) == [72] * 5


def test_repeating_the_cut_completes_an_insert_cut_short(store: ClickHouseEventStore) -> None:
    """A process killed in an insert leaves the raw table's part without some of the views'
    parts.  A failing view makes the same state: only the same insert completes it."""
    store._run(lambda c: c.command("CREATE TABLE ratewatch.broken (x UInt8) ENGINE = Memory"))
    store._run(
        lambda c: c.command(
            "CREATE MATERIALIZED VIEW ratewatch.a_broken_mv TO ratewatch.broken"
            " AS SELECT throwIf(latency_us >= 0, 'view failed') AS x FROM ratewatch.decisions"
        )
    )
    handler = BatchHandler(store, Letters())
    batch = records(0, 50)
    with pytest.raises(AnalyticsError, match="view failed"):
        handler.handle("src", 0, batch)
    raw, ledger, *_ = store_totals(store)
    assert (raw, ledger) == (50, 0)  # the raw part committed, the ledger was never written
    store._run(lambda c: c.command("DROP VIEW ratewatch.a_broken_mv"))

    assert handler.handle("src", 0, batch) == 50
    assert store_totals(store) == [50] * 5


def test_events_no_column_holds_are_dead_lettered_and_the_rest_written(
    store: ClickHouseEventStore,
) -> None:
    letters = Letters()
    store.rejects = letters
    handler = BatchHandler(store, letters)
    batch = records(0, 10)
    batch[3] = Record(3, encode(numbered_decision(3, event_id="nope")))
    batch[6] = Record(6, b"\xff")
    assert handler.handle("src", 0, batch) == 8
    assert [(r.offset, "UUID" in error) for _, _, r, error in letters.sent] == [
        (6, False),
        (3, True),
    ]
    assert store_totals(store) == [8] * 5
    assert store.written_offsets("src", 0, range(10)) == set(range(10)) - {3, 6}


def test_a_failed_statement_costs_the_store_its_client(store: ClickHouseEventStore) -> None:
    handler = BatchHandler(store, Letters())
    handler.handle("src", 0, records(0, 5))
    broken = store._client.client
    assert broken is not None
    broken.close()
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever a closed client raises
        store.written_offsets("src", 0, [1, 2])
    assert store.written_offsets("src", 0, [1, 2, 7]) == {1, 2}  # on a new client


def test_batch_plans_are_recorded_and_read_back_in_order(store: ClickHouseEventStore) -> None:
    store.plan_batches([("src", 0, 0, 99), ("src", 1, 0, 49)])
    store.plan_batches([("src", 0, 100, 149), ("src", 0, 100, 149)])
    assert store.planned_batches("src", 0, 0, 10) == {0: 99, 100: 149}
    assert store.planned_batches("src", 0, 1, 10) == {100: 149}
    assert store.planned_batches("src", 0, 0, 1) == {0: 99}
    assert store.planned_batches("src", 2, 0, 10) == {}


# -- cutting batches ----------------------------------------------------------------------------


class FakeRecord(NamedTuple):
    offset: int
    partition: int = 0
    value: bytes = b""


def fetched(start: int, stop: int) -> list[Any]:
    return [FakeRecord(i) for i in range(start, stop)]


def cuts(batches: list[tuple[list[Any], bool]]) -> list[tuple[int, int, bool]]:
    return [(b[0].offset, b[-1].offset, recorded) for b, recorded in batches]


def test_recorded_cuts_are_followed_and_new_ones_stop_before_them() -> None:
    partition = _Partition({10: 19, 20: 24, 40: 49}, complete=True)
    batches, held = partition.split(fetched(10, 31), highwater=100)
    assert cuts(batches) == [(10, 19, True), (20, 24, True), (25, 30, False)]
    assert held == []
    batches, held = partition.split(fetched(31, 45), highwater=100)
    assert cuts(batches) == [(31, 39, False)]  # 40-49 is not complete yet: held
    assert [r.offset for r in held] == list(range(40, 45))
    batches, held = partition.split(held + fetched(45, 60), highwater=100)
    assert cuts(batches) == [(40, 49, True), (50, 59, False)]
    assert partition.plans == {}


def test_a_recorded_cut_the_partition_cannot_complete_any_more_is_cut_anew() -> None:
    partition = _Partition({10: 19}, complete=True)
    batches, held = partition.split(fetched(10, 15), highwater=15)
    assert (cuts(batches), held) == ([(10, 14, False)], [])


def test_plans_are_looked_up_again_past_the_last_one_loaded() -> None:
    assert not _Partition({10: 19}, complete=True).exhausted(50)
    assert _Partition({10: 19}, complete=False).exhausted(50)
    assert not _Partition({10: 19}, complete=False).exhausted(10)


# -- the command ----------------------------------------------------------------------------


def test_stream_needs_a_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RATEWATCH_KAFKA"}
    result = subprocess.run(
        [sys.executable, "-m", "ratewatch", "stream", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--kafka" in result.stderr
