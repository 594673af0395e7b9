"""The Kafka decision sink against a real broker (tansu): nothing lost, nothing doubled,
order per key kept, and ``emit`` never waiting on the broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from limiter.algorithms import Algorithm, Outcome, Reason
from limiter.emit import Decision
from limiter.errors import ConfigError
from limiter.metrics import LimiterMetrics
from limiter.settings import LimiterSettings
from limiter.sinks.events import EventIds, to_event, to_records
from limiter.sinks.kafka import KafkaSink
from limiter.store.base import Check
from stream.events import DECISIONS_TOPIC, RESENT_HEADER, decode, encode
from stream.handlers import BatchHandler, Record
from tests.support.credentials import BOOTSTRAP_KEY, create_key
from tests.support.event_store import Letters, open_store, store_totals
from tests.support.kafka import KafkaBroker, Received, create_topic, read_topic, unique_topic
from tests.support.polling import eventually, wait_until
from tests.support.servers import RatewatchProcess, RedisServer, free_port, start_limiter

KEYS = 7


def decision(seq: int, tenant: str = "t1") -> Decision:
    """Decision number ``seq``; its key is one of KEYS, its sequence rides in latency_us."""
    check = Check(
        tenant,
        f"user:{seq % KEYS}",
        Algorithm.TOKEN_BUCKET,
        100,
        60_000,
        1,
        "10.0.0.1",
        route="/r",
        user_agent="ua",
    )
    outcome = Outcome(seq % 3 != 0, 42, 1_500, -1, Reason.OK if seq % 3 else Reason.LIMIT)
    return Decision(1_700_000_000_000 + seq, check, outcome, seq)


def emit_range(
    sink: KafkaSink, start: int, stop: int, per_call: int = 3, base: int | None = None
) -> int:
    """Emit decisions start..stop-1, a few per call; returns how many calls returned.
    ``base``: their timestamps from then on (else 2023's, which ClickHouse's TTL drops)."""
    returned = 0
    for first in range(start, stop, per_call):
        batch = [decision(s) for s in range(first, min(first + per_call, stop))]
        if base is not None:
            batch = [d._replace(ts_ms=base + d.latency_us) for d in batch]
        sink.emit(batch)
        returned += 1
    return returned


def counted(metrics: LimiterMetrics, what: str) -> float:
    """A stream counter, e.g. ``sent``: ratewatch_stream_events_<what>_total."""
    value = metrics.registry.get_sample_value(f"ratewatch_stream_events_{what}_total")
    return value or 0.0


def sent(metrics: LimiterMetrics) -> float:
    return counted(metrics, "sent")


def assert_exactly_once_in_key_order(received: list[Received], expected: range) -> None:
    ids = [r.event.event_id for r in received]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicates"
    assert sorted(r.event.latency_us for r in received) == list(expected)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for r in received:  # sorted by partition and offset; one key is in one partition
        by_key[r.key].append(r.event.latency_us)
    assert len(by_key) == min(KEYS, len(expected))
    for key, seqs in by_key.items():
        assert seqs == sorted(seqs), f"order broken for {key!r}"


@pytest.fixture
async def topic(kafka_broker: KafkaBroker) -> AsyncIterator[str]:
    name = unique_topic()
    await create_topic(kafka_broker.bootstrap, name)
    yield name
    if kafka_broker.frozen:  # whatever the test did, the broker is thawed for the next
        kafka_broker.thaw()


def make_sink(bootstrap: str, spool: Path, topic: str, **options: Any) -> KafkaSink:
    return KafkaSink(bootstrap, spool, LimiterMetrics(), "test-instance", topic, **options)


def test_the_event_says_what_the_decision_was() -> None:
    event = to_event(decision(4), "0190d9b8-0000-7000-8000-000000000000", "i-1")
    assert event.ts == 1_700_000_000_004
    assert (event.tenant, event.key, event.algorithm) == ("t1", "user:4", "token_bucket")
    assert (event.limit, event.window, event.cost, event.remaining) == (100, 60, 1, 42)
    assert (event.allowed, event.reason, event.reset_in) == (True, "ok", 2)  # 1.5 s, ceiled
    assert (event.ip, event.route, event.user_agent) == ("10.0.0.1", "/r", "ua")
    assert event.user_id is None
    assert (event.latency_us, event.instance) == (4, "i-1")


def test_the_encoded_record_is_that_event_keyed_by_tenant_and_key() -> None:
    (record,) = to_records([decision(4)], EventIds(), "i-1")
    event_id = decode(record.value).event_id
    assert record.value == encode(to_event(decision(4), event_id, "i-1"))  # the same JSON
    assert (record.key, record.ts_ms) == (b"t1:user:4", 1_700_000_000_004)


def test_a_traced_checks_event_carries_its_trace_id() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    plain = decision(4)
    traced = plain._replace(check=plain.check._replace(trace_id=trace_id))
    (record,) = to_records([traced], EventIds(), "i-1")
    assert decode(record.value).trace_id == trace_id
    assert to_event(traced, decode(record.value).event_id, "i-1").trace_id == trace_id
    (untraced,) = to_records([plain], EventIds(), "i-1")
    assert decode(untraced.value).trace_id is None


@pytest.mark.parametrize("bootstrap", ["kafka:9092", "a:1,b:2", "kafka"])
def test_settings_take_kafka_bootstrap_servers(bootstrap: str) -> None:
    assert LimiterSettings(redis_url="redis://r", kafka=bootstrap).kafka == bootstrap


@pytest.mark.parametrize("bootstrap", ["", "PLAINTEXT://k:9092", "k:port", "a:1,"])
def test_settings_name_a_bad_kafka_bootstrap(bootstrap: str) -> None:
    with pytest.raises(ConfigError, match="kafka bootstrap server"):
        LimiterSettings(redis_url="redis://r", kafka=bootstrap)


def test_event_ids_are_unique_uuids() -> None:
    ids = EventIds()
    made = [ids.next(1_700_000_000_000 + i // 1000) for i in range(100_000)]
    assert len(set(made)) == len(made)
    parsed = uuid.UUID(made[0])
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert EventIds().next(0) != EventIds().next(0)


async def test_every_decision_arrives_once_in_key_order(
    kafka_broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    sink = make_sink(kafka_broker.bootstrap, tmp_path / "spool", topic)
    await sink.start()
    assert sink.status()["status"] == "up"
    emit_range(sink, 0, 3000)
    await eventually(lambda: sent(sink._metrics) == 3000, 30, "3000 events acknowledged")
    assert sink.status()["spooled_events"] == 0
    await sink.close()

    assert_exactly_once_in_key_order(
        await read_topic(kafka_broker.bootstrap, topic, 3000), range(3000)
    )
    assert counted(sink._metrics, "spooled") == 0


async def test_a_frozen_broker_never_holds_up_emit_and_nothing_is_lost(
    kafka_broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    sink = make_sink(kafka_broker.bootstrap, tmp_path / "spool", topic)
    await sink.start()
    emit_range(sink, 0, 500)
    await eventually(lambda: sent(sink._metrics) == 500, 30, "the first 500 acknowledged")

    kafka_broker.freeze()
    calls = (1500 + 2) // 3
    assert emit_range(sink, 500, 2000) == calls  # every emit returned while frozen
    await eventually(lambda: sink.status()["status"] == "spooling", 30, "the sink to spool")
    await eventually(lambda: sink.status()["spooled_events"] == 1500, 30, "all 1500 spooled")
    assert sink.status()["queued"] == 0
    assert sink.status()["connected"] is False
    assert sent(sink._metrics) == 500

    kafka_broker.thaw()
    await eventually(lambda: sink.status()["status"] == "up", 60, "the spool replayed")
    assert sink.status()["spooled_events"] == 0
    assert sink.status()["connected"] is True
    emit_range(sink, 2000, 2100)  # and direct sending again
    await eventually(lambda: sent(sink._metrics) == 2100, 30, "every event acknowledged")
    await sink.close()

    assert_exactly_once_in_key_order(
        await read_topic(kafka_broker.bootstrap, topic, 2100), range(2100)
    )
    assert not list((tmp_path / "spool").glob("*.seg"))


async def test_a_full_queue_spills_to_the_spool_in_order(
    kafka_broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    sink = make_sink(kafka_broker.bootstrap, tmp_path / "spool", topic, max_queue=100)
    await sink.start()
    assert emit_range(sink, 0, 5000, per_call=10) == 500  # no await: the sender cannot run
    assert sink.status()["status"] == "spooling"
    await eventually(lambda: sent(sink._metrics) == 5000, 60, "every event acknowledged")
    await sink.close()
    assert_exactly_once_in_key_order(
        await read_topic(kafka_broker.bootstrap, topic, 5000), range(5000)
    )


async def test_close_in_an_outage_keeps_the_spool_and_the_next_sink_replays_it(
    kafka_broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first = make_sink(kafka_broker.bootstrap, spool, topic, close_timeout=1.0)
    await first.start()
    emit_range(first, 0, 300)
    await eventually(lambda: sent(first._metrics) == 300, 30, "the first 300 acknowledged")
    kafka_broker.freeze()
    emit_range(first, 300, 1000)
    await eventually(lambda: first.status()["spooled_events"] == 700, 30, "700 spooled")
    in_doubt = first.status()["in_doubt"]
    await first.close()
    assert list(spool.glob("*.seg"))
    kafka_broker.thaw()

    second = make_sink(kafka_broker.bootstrap, spool, topic)
    await second.start()
    assert second.status()["status"] == "spooling"  # leftovers first
    second.emit([decision(1000)])
    await eventually(lambda: second.status()["status"] == "up", 60, "the leftovers replayed")
    await eventually(lambda: sent(second._metrics) >= 701, 30, "the new event acknowledged")
    await second.close()

    received = await read_topic(kafka_broker.bootstrap, topic, 1001)
    # the batch in flight when the broker froze was written when it woke up, and is in
    # the spool too: without idempotence, those (and only those) may arrive twice
    assert isinstance(in_doubt, int)
    unique = {r.event.event_id: r for r in received}
    assert len(received) - len(unique) <= in_doubt
    assert_exactly_once_in_key_order(list(unique.values()), range(1001))


class Message(NamedTuple):
    partition: int
    offset: int
    value: bytes
    resent: bool  # carries the ratewatch-resent header


async def read_messages(bootstrap: str, topic: str, at_least: int) -> list[Message]:
    """Every message of ``topic`` with its headers, as ``read_topic`` reads them."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = sorted(await consumer._client._wait_on_metadata(topic))
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        received: list[Message] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                received += [
                    Message(tp.partition, m.offset, m.value, (RESENT_HEADER, b"1") in m.headers)
                    for m in messages
                ]
            if len(received) >= at_least:
                ends = await consumer.end_offsets(assigned)
                if all([await consumer.position(tp) >= ends[tp] for tp in assigned]):
                    return sorted(received)
        raise TimeoutError(f"{len(received)} of at least {at_least} messages on {topic}")
    finally:
        await consumer.stop()


async def test_records_sent_again_after_a_send_in_doubt_carry_the_resent_header(
    kafka_broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    """A round in doubt when the sink closes is replayed by the next one with the header
    (it may have landed: the consumer checks); what was never sent carries none; and the
    consumer's handler, fed the topic, stores every decision once."""
    spool = tmp_path / "spool"
    now = int(time.time() * 1000) - 60_000
    first = make_sink(kafka_broker.bootstrap, spool, topic, close_timeout=1.0)
    await first.start()
    emit_range(first, 0, 300, base=now)
    await eventually(lambda: sent(first._metrics) == 300, 30, "the first 300 acknowledged")
    kafka_broker.freeze()
    emit_range(first, 300, 600, base=now)  # one round, sent to the frozen broker: in doubt
    await eventually(lambda: first.status()["in_doubt"] == 300, 30, "300 in doubt")
    emit_range(first, 600, 1000, base=now)  # spooled, never sent
    await eventually(lambda: first.status()["spooled_events"] == 700, 30, "700 spooled")
    await first.close()
    kafka_broker.thaw()

    second = make_sink(kafka_broker.bootstrap, spool, topic)
    await second.start()
    emit_range(second, 1000, 1001, base=now)
    await eventually(lambda: second.status()["status"] == "up", 60, "the leftovers replayed")
    await eventually(lambda: sent(second._metrics) == 701, 30, "the new event acknowledged")
    await second.close()

    messages = await read_messages(kafka_broker.bootstrap, topic, 1001)
    seqs = [(decode(m.value).latency_us, m.resent) for m in messages]
    assert sorted(seq for seq, resent in seqs if resent) == list(range(300, 600))
    plain = [seq for seq, resent in seqs if not resent]
    assert len(plain) == len(set(plain))  # the round in doubt may have landed, once
    assert set(plain) - set(range(300, 600)) == {*range(300), *range(600, 1001)}

    store = open_store(tmp_path / "ch")
    try:
        handler = BatchHandler(store, Letters())
        for partition in sorted({m.partition for m in messages}):
            batch = [
                Record(m.offset, m.value, m.resent) for m in messages if m.partition == partition
            ]
            # cut before the first resent record: its original is stored by then, if it landed
            cut = next((i for i, r in enumerate(batch) if r.resent), len(batch))
            handler.handle(topic, partition, batch[:cut])
            handler.handle(topic, partition, batch[cut:])
        assert handler.stats.written == 1001
        assert handler.stats.skipped == len(messages) - 1001
        assert store_totals(store) == [1001] * 5  # raw rows, ledger, rollups
    finally:
        store.close()


async def test_an_unreachable_broker_spools_and_a_full_spool_counts_drops(
    tmp_path: Path,
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    sink = make_sink(nowhere, tmp_path / "spool", "t", spool_max_bytes=64 * 1024, close_timeout=1)
    await sink.start()  # not an error: it spools
    assert sink.status()["status"] == "spooling"
    emit_range(sink, 0, 2000)
    await eventually(lambda: sink.status()["queued"] == 0, 30, "the queue spooled")
    await sink.close()

    status = sink.status()
    spooled, dropped = status["spooled_events"], counted(sink._metrics, "dropped")
    assert isinstance(spooled, int)
    assert 0 < spooled < 2000
    assert spooled + dropped == 2000
    assert status["dropped"] == dropped
    assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.seg")) <= 64 * 1024


async def test_a_sink_started_without_broker_hands_its_spool_to_the_next(
    kafka_broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    offline = make_sink(f"127.0.0.1:{free_port()}", spool, topic, close_timeout=1)
    await offline.start()
    emit_range(offline, 0, 400)
    await offline.close()

    online = make_sink(kafka_broker.bootstrap, spool, topic)
    await online.start()
    emit_range(online, 400, 450)  # after the leftovers, in order
    await eventually(lambda: sent(online._metrics) == 450, 60, "leftovers and new events sent")
    await online.close()
    assert_exactly_once_in_key_order(
        await read_topic(kafka_broker.bootstrap, topic, 450), range(450)
    )


# -- end to end: `ratewatch serve --kafka` -------------------------------------------------


def serve_with_kafka(
    redis_server: RedisServer, kafka_broker: KafkaBroker, workdir: Path, port: int
) -> RatewatchProcess:
    return start_limiter(
        redis_server.url,
        workdir,
        "--kafka",
        kafka_broker.bootstrap,
        port=port,
        env={"RATEWATCH_BOOTSTRAP_KEY": BOOTSTRAP_KEY},
    )


def check_all(client: httpx.Client, keys: range) -> list[dict[str, Any]]:
    results = []
    for i in keys:
        body = {"key": f"e2e:{i}", "limit": 5, "window": 60, "route": "/pay", "ip": "10.1.2.3"}
        response = client.post("/v1/check", json={**body, "user_agent": "pytest"})
        assert response.status_code == 200, response.text
        results.append(response.json())
    return results


def stream_status(client: httpx.Client) -> dict[str, Any]:
    stream: dict[str, Any] = client.get("/health/detailed").json()["dependencies"][
        "decision_stream"
    ]
    return stream


def tenant_events(kafka_broker: KafkaBroker, tenant: str, at_least: int) -> list[Received]:
    return asyncio.run(
        read_topic(
            kafka_broker.bootstrap,
            DECISIONS_TOPIC,
            at_least,
            within=60,
            where=lambda event: event.tenant == tenant,
        )
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_checks_through_the_api_reach_the_topic_through_an_outage_and_a_restart(
    redis_server: RedisServer, kafka_broker: KafkaBroker, tenant: str, tmp_path: Path
) -> None:
    api_key = create_key(redis_server.url, tenant)
    port = free_port()
    server = serve_with_kafka(redis_server, kafka_broker, tmp_path, port)
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        with httpx.Client(base_url=server.base_url, timeout=10, headers=headers) as client:
            assert stream_status(client)["status"] == "up"
            answers = check_all(client, range(0, 200))
            events = tenant_events(kafka_broker, tenant, 200)
            assert len(events) == 200
            first = next(r.event for r in events if r.event.key == "e2e:0")
            assert (first.tenant, first.algorithm) == (tenant, "sliding_window")
            assert (first.limit, first.window, first.cost) == (5, 60, 1)
            assert (first.allowed, first.reason) == (answers[0]["allowed"], "ok")
            assert (first.remaining, first.reset_in) == (4, answers[0]["reset_in"])
            assert (first.ip, first.route, first.user_agent) == ("10.1.2.3", "/pay", "pytest")
            assert first.instance
            assert first.latency_us > 0
            assert uuid.UUID(first.event_id).version == 7

            kafka_broker.freeze()  # an outage: every check still answered
            check_all(client, range(200, 500))
            wait_until(lambda: stream_status(client)["status"] == "spooling", 30, "spooling")
            health = client.get("/health/detailed").json()
            assert health["status"] == "degraded"
            metrics = client.get("/metrics").text
            assert "ratewatch_stream_up 0.0" in metrics
            kafka_broker.thaw()
            wait_until(lambda: stream_status(client)["status"] == "up", 60, "the spool replayed")
            events = tenant_events(kafka_broker, tenant, 500)
            assert sorted(r.event.key for r in events) == sorted(f"e2e:{i}" for i in range(500))
            assert len({r.event.event_id for r in events}) == 500

            kafka_broker.freeze()  # an outage, then SIGTERM: the spool waits on disk
            check_all(client, range(500, 600))
            wait_until(lambda: stream_status(client)["spooled_events"] == 100, 30, "100 spooled")
            in_doubt = stream_status(client)["in_doubt"]
        assert server.stop() == 0
        assert list((tmp_path / "data" / "spool").glob("*.seg"))
        kafka_broker.thaw()

        server = serve_with_kafka(redis_server, kafka_broker, tmp_path, port)
        events = tenant_events(kafka_broker, tenant, 600)
        unique = {r.event.event_id: r.event for r in events}
        assert sorted(e.key for e in unique.values()) == sorted(f"e2e:{i}" for i in range(600))
        # the batch in flight when the broker froze is written when it wakes, and was
        # spooled too: without idempotence those (and only those) may arrive twice
        assert len(events) - len(unique) <= in_doubt
    finally:
        if kafka_broker.frozen:
            kafka_broker.thaw()
        server.stop()
