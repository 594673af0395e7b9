"""The audit log's transport and storage on real servers: events recorded in the Redis
outbox reach ``ratewatch.audit_log`` (and the audit topic) with every field, once each,
through crashes before the acknowledgement, malformed entries and a failing store.

Each test has an outbox of its own (a fresh key prefix) and a chDB directory of its own,
whose clients it closes: chDB opens one directory per process at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from redis.asyncio import Redis

from analytics.alert_store import AlertLogWriter
from analytics.audit_store import AuditLogWriter
from analytics.clickhouse import AUDIT_TABLE
from analytics.errors import AnalyticsError
from analytics.query_client import answers, query
from analytics.tables import ALERTS_TABLE, INCIDENTS_TABLE
from limiter.keyspace import Keyspace
from stream.alerts import (
    ALERTS_TOPIC,
    BLOCK_ESCALATED,
    BLOCK_SHADOWED,
    AlertEvent,
    AlertOutbox,
    new_alert_event,
)
from stream.alerts import BLOCK_CREATED as ALERT_BLOCK_CREATED
from stream.alerts import decode as decode_alert
from stream.alerts import encode as encode_alert
from stream.audit import (
    AUDIT_TOPIC,
    BLOCK_CREATED,
    KEY_CREATED,
    PRIVACY_DELETED,
    AuditEvent,
    MalformedAuditEvent,
    decode,
    encode,
    new_audit_event,
)
from stream.audit_outbox import FIELD, AuditOutbox, AuditUnavailable
from stream.incidents import INCIDENTS_TOPIC, IncidentEvent
from stream.incidents import encode as encode_incident
from stream.outbox_drain import ALERT_GROUP, AUDIT_GROUP, OutboxDrain, Publish
from stream.publisher import EventPublisher
from tests.support.events import audit_events, incident_story
from tests.support.kafka import KafkaBroker, create_topic, ensure_topic, read_messages, unique_topic
from tests.support.outbox_drains import (
    drain_until,
    in_stored_order,
    pending_count,
    stream_fields,
    tenant_rows,
    written_by,
)
from tests.support.outboxes import fill_outboxes, record_audit
from tests.support.polling import eventually, eventually_equal, wait_until
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.timeout(60)

Write = Callable[[Sequence[AuditEvent], str], Awaitable[None]]


def audit_drain(
    redis: Redis,
    stream: str,
    write: Write,
    publish: Publish[AuditEvent] | None = None,
    **options: Any,
) -> OutboxDrain[AuditEvent]:
    return OutboxDrain(
        redis, stream, decode, write, publish, name="audit", group=AUDIT_GROUP, **options
    )


@pytest.fixture
def keyspace() -> Keyspace:
    return Keyspace(prefix="rwa" + secrets.token_hex(5))


@pytest.fixture
def outbox(redis: Redis, keyspace: Keyspace) -> AuditOutbox:
    return AuditOutbox(redis, keyspace.audit)


@pytest.fixture
def write(clickhouse: Client) -> Write:
    """The audit log writer, run on the test's thread (which owns its chDB client)."""
    return written_by(AuditLogWriter(clickhouse))


def stored(client: Client, tenant: str, final: bool = True) -> list[dict[str, Any]]:
    columns = (
        "toUnixTimestamp64Milli(ts) AS ts, toString(event_id) AS event_id, v, tenant,"
        " actor, action, target, details, source_ip"
    )
    return tenant_rows(client, AUDIT_TABLE, columns, tenant, final)


def as_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "ts": event.ts,
        "event_id": event.event_id,
        "v": event.v,
        "tenant": event.tenant,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "details": event.details,
        "source_ip": event.source_ip,
    }


def rows_as_events(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "details": json.loads(row["details"])} for row in rows]


def by_id(events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
    return in_stored_order(as_row(e) for e in events)


async def pending(redis: Redis, keyspace: Keyspace) -> int:
    return await pending_count(redis, keyspace.audit, AUDIT_GROUP)


# -- the contract --------------------------------------------------------------------------


def test_an_event_round_trips_and_bad_input_is_named() -> None:
    event = new_audit_event("acme", "cli", PRIVACY_DELETED, "user-7", {"deleted_keys": 3})
    assert decode(encode(event)) == event
    assert uuid.UUID(event.event_id).version == 4
    assert abs(event.ts - time.time() * 1000) < 5000

    with pytest.raises(ValueError, match="non-empty action, not ''"):
        new_audit_event("acme", "cli", "")
    with pytest.raises(ValueError, match=r"audit detail 'raw'=b'\\x00' is not"):
        new_audit_event("acme", "cli", KEY_CREATED, details={"raw": b"\x00"})
    for bad, reason in [
        (b"{", "truncated"),
        (b'{"event_id": "x"}', "missing required field"),
        (encode(event).replace(event.event_id.encode(), b"not-a-uuid"), "'not-a-uuid' is not"),
        (encode(event).replace(b'"v":1', b'"v":2'), "version 2 is not 1..1"),
        (encode(event).replace(str(event.ts).encode(), b"-1"), "ts -1 is not epoch ms"),
    ]:
        with pytest.raises(MalformedAuditEvent, match=reason):
            decode(bad)


async def test_the_outbox_names_the_event_it_could_not_record(keyspace: Keyspace) -> None:
    closed_port = free_port()
    unreachable = Redis.from_url(f"redis://127.0.0.1:{closed_port}", socket_connect_timeout=1)
    event = new_audit_event("acme", "cli", KEY_CREATED, "key_1")
    try:
        with pytest.raises(AuditUnavailable, match=f"key.created {event.event_id}"):
            await AuditOutbox(unreachable, keyspace.audit).record(event)
    finally:
        await unreachable.aclose()


# -- outbox → drain → audit log ------------------------------------------------------------


async def test_recorded_events_reach_the_audit_log_with_every_field_and_are_trimmed(
    redis: Redis, outbox: AuditOutbox, keyspace: Keyspace, clickhouse: Client, write: Write
) -> None:
    detector = new_audit_event("fields", "detector:burst", BLOCK_CREATED, details={"ttl": None})
    events = [*audit_events("fields", 7), detector]
    await record_audit(outbox, events)
    assert await stream_fields(redis, keyspace.audit) == [{FIELD: encode(e)} for e in events]

    stop = asyncio.Event()
    drain = audit_drain(redis, keyspace.audit, write, block_ms=50, trim_interval=0.05)
    running = asyncio.create_task(drain.run(stop))
    try:
        await eventually(lambda: drain.stats.written == len(events), 20, "the events written")
        # every reader acknowledged them, so the trimmer empties the outbox
        await eventually_equal(lambda: redis.xlen(keyspace.audit), 0, 20, "the outbox trimmed")
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)

    assert rows_as_events(stored(clickhouse, "fields")) == by_id(events)
    assert await pending(redis, keyspace) == 0
    assert (drain.stats.written, drain.stats.malformed) == (8, 0)
    create = str(clickhouse.query(f"SHOW CREATE TABLE {AUDIT_TABLE}").result_rows[0][0])
    assert "ReplacingMergeTree" in create
    assert "non_replicated_deduplication_window = 10000" in create
    assert "TTL" not in create


async def test_a_batch_delivered_again_after_a_crash_is_one_row_per_event(
    redis: Redis, outbox: AuditOutbox, keyspace: Keyspace, clickhouse: Client, write: Write
) -> None:
    first_events = audit_events("crash", 5)
    await record_audit(outbox, first_events)

    # stored, then the process "dies" before the acknowledgement
    stop = asyncio.Event()

    async def dies(events: Sequence[AuditEvent]) -> None:
        stop.set()
        raise ConnectionError("killed before the acknowledgement")

    crashed = audit_drain(redis, keyspace.audit, write, dies, consumer="c1", block_ms=50)
    await asyncio.wait_for(crashed.run(stop), 20)
    assert len(stored(clickhouse, "crash")) == 5
    assert await pending(redis, keyspace) == 5

    later_events = audit_events("crash", 2)
    await record_audit(outbox, later_events)
    published: list[AuditEvent] = []

    async def publish(events: Sequence[AuditEvent]) -> None:
        published.extend(events)

    # restarted under the same name, cutting its batches differently: the rows are inserted
    # again under other deduplication tokens, and the table folds them
    restarted = audit_drain(
        redis, keyspace.audit, write, publish, consumer="c1", count=3, block_ms=50
    )
    await drain_until(restarted, lambda: len(published) == 7)

    everything = first_events + later_events
    assert rows_as_events(stored(clickhouse, "crash")) == by_id(everything)
    assert len(stored(clickhouse, "crash", final=False)) >= 7
    assert sorted(e.event_id for e in published) == sorted(e.event_id for e in everything)
    assert await pending(redis, keyspace) == 0


async def test_entries_a_dead_drain_left_pending_are_claimed_by_another(
    redis: Redis, outbox: AuditOutbox, keyspace: Keyspace, clickhouse: Client, write: Write
) -> None:
    events = audit_events("claim", 4)
    await record_audit(outbox, events)
    stop = asyncio.Event()

    async def dies(events: Sequence[AuditEvent], token: str) -> None:
        stop.set()
        raise ConnectionError("killed in the middle of the insert")

    dead = audit_drain(redis, keyspace.audit, dies, consumer="dead", block_ms=50)
    await asyncio.wait_for(dead.run(stop), 20)
    assert await pending(redis, keyspace) == 4
    assert stored(clickhouse, "claim") == []

    survivor = audit_drain(
        redis, keyspace.audit, write, consumer="survivor", claim_idle_ms=1, block_ms=50
    )
    await drain_until(survivor, lambda: survivor.stats.written == 4)
    assert survivor.stats.claimed == 4
    assert rows_as_events(stored(clickhouse, "claim")) == by_id(events)
    assert await pending(redis, keyspace) == 0


async def test_malformed_entries_go_to_the_dead_letter_stream_and_the_rest_is_stored(
    redis: Redis, outbox: AuditOutbox, keyspace: Keyspace, clickhouse: Client, write: Write
) -> None:
    good = audit_events("mixed", 3)
    valid = encode(good[0])
    bad_fields: list[dict[bytes, bytes]] = [
        {FIELD: b"not json"},
        {b"other": b"no e field"},
        {FIELD: valid.replace(good[0].event_id.encode(), b"not-a-uuid")},
        {FIELD: valid.replace(b'"v":1', b'"v":9')},
    ]
    await outbox.record(good[0])
    for fields in bad_fields:
        await redis.xadd(keyspace.audit, fields)  # type: ignore[arg-type]
    await record_audit(outbox, good[1:])

    drain = audit_drain(redis, keyspace.audit, write, block_ms=50)
    await drain_until(drain, lambda: drain.stats.written + drain.stats.malformed == 7)

    assert rows_as_events(stored(clickhouse, "mixed")) == by_id(good)
    assert (drain.stats.written, drain.stats.malformed) == (3, 4)
    assert await pending(redis, keyspace) == 0
    letters = await stream_fields(redis, keyspace.audit + ":dlq")
    assert [{k: v for k, v in letter.items() if k.startswith(b"raw:")} for letter in letters] == [
        {b"raw:" + name: value for name, value in fields.items()} for fields in bad_fields
    ]
    errors = [letter[b"error"].decode() for letter in letters]
    assert "JSON" in errors[0]
    assert "has no field 'e' (it has other)" in errors[1]
    assert "'not-a-uuid' is not a UUID" in errors[2]
    assert "version 9" in errors[3]
    assert all(letter[b"source"] == keyspace.audit.encode() for letter in letters)


async def test_the_alert_outbox_drains_into_the_alerts_table_and_bad_alerts_are_dead_lettered(
    redis: Redis, keyspace: Keyspace, clickhouse: Client
) -> None:
    """The same drain on the detectors' outbox: alerts land in ``ratewatch.alerts`` with
    the explanation's detector and score in their own columns; entries that are not alerts,
    or that the table could not hold, go to the dead letters and hold nothing up."""
    alerts = some_alerts("alerting", 3)
    shadowed = new_alert_event(
        "alerting", BLOCK_SHADOWED, "user_id", "u-7", explanation={}, mode="shadow"
    )
    good = encode_alert(alerts[0])
    bad = [
        b"{}",
        good.replace(b'"ttl_seconds":900', b'"ttl_seconds":-900'),  # not a UInt32
        good.replace(b'"offence":1', b'"offence":4294967296'),
    ]
    outbox = AlertOutbox(redis, keyspace.alerts)
    for alert in alerts[:2]:
        await outbox.record(alert)
    for value in bad:
        await redis.xadd(keyspace.alerts, {FIELD: value})
    await outbox.record(alerts[2])
    await outbox.record(shadowed)
    write = written_by(AlertLogWriter(clickhouse))
    drain = OutboxDrain(
        redis, keyspace.alerts, decode_alert, write, name="alert", group=ALERT_GROUP, block_ms=50
    )
    await drain_until(drain, lambda: drain.stats.written + drain.stats.malformed == 7)

    assert (drain.stats.written, drain.stats.malformed) == (4, 3)
    rows = clickhouse.query(
        f"SELECT toString(event_id), kind, scope, subject, block_id, mode, ttl_seconds,"
        f" offence, detector, score, explanation FROM {ALERTS_TABLE} FINAL"
        f" WHERE tenant = 'alerting' ORDER BY ts, subject"
    ).result_rows
    expected = [
        (a.event_id, a.kind, "ip", a.subject, a.block_id, "enforce", a.ttl_seconds, a.offence,
         "rules", 0.95, json.dumps(a.explanation, sort_keys=True, separators=(",", ":")))
        for a in alerts
    ] + [
        (shadowed.event_id, BLOCK_SHADOWED, "user_id", "u-7", "", "shadow", None, None, "", 0.0,
         "{}")
    ]  # fmt: skip
    assert sorted(map(tuple, rows)) == sorted(expected)
    letters = await stream_fields(redis, keyspace.alerts + ":dlq")
    assert [letter[b"raw:e"] for letter in letters] == bad
    errors = [letter[b"error"].decode() for letter in letters]
    assert "ttl_seconds -900 is not within" in errors[1]
    assert "offence 4294967296 is not within" in errors[2]


async def test_the_drain_waits_while_the_store_fails_and_then_stores_everything_once(
    redis: Redis, outbox: AuditOutbox, keyspace: Keyspace, clickhouse: Client, write: Write
) -> None:
    events = audit_events("outage", 6)
    await record_audit(outbox, events)
    down = True
    attempts = 0

    async def flaky(batch: Sequence[AuditEvent], token: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            # the insert went through but its answer was lost: retried with the same token
            await write(batch, token)
            raise AnalyticsError("connection reset after the insert")
        if down:
            raise AnalyticsError("ClickHouse is down")
        await write(batch, token)

    # a drain stopped during the outage leaves its batch pending, promptly
    stop = asyncio.Event()
    drain = audit_drain(redis, keyspace.audit, flaky, block_ms=50, max_pause=0.1)
    running = asyncio.create_task(drain.run(stop))
    await eventually(lambda: drain.stats.failures >= 4, 20, "retries")
    assert await pending(redis, keyspace) == 6
    stop.set()
    await asyncio.wait_for(running, 5)
    assert await pending(redis, keyspace) == 6

    # the next run retries until the store is back, then acknowledges
    stop = asyncio.Event()
    drain = audit_drain(redis, keyspace.audit, flaky, block_ms=50, max_pause=0.1)
    running = asyncio.create_task(drain.run(stop))
    try:
        await eventually(lambda: drain.stats.failures >= 3, 20, "retries")
        assert drain.stats.written == 0
        down = False
        await eventually(lambda: drain.stats.written == 6, 20, "the events written")
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
    # the first, doubtful insert and its retry under the same token are one set of rows
    assert len(stored(clickhouse, "outage", final=False)) == 6
    assert rows_as_events(stored(clickhouse, "outage")) == by_id(events)
    assert await pending(redis, keyspace) == 0


# -- onto the audit topic ------------------------------------------------------------------


async def test_every_event_is_published_to_the_topic_as_encoded_before_it_is_acknowledged(
    redis: Redis,
    outbox: AuditOutbox,
    keyspace: Keyspace,
    clickhouse: Client,
    write: Write,
    kafka_broker: KafkaBroker,
) -> None:
    topic = unique_topic()
    await create_topic(kafka_broker.bootstrap, topic, partitions=3)
    events = audit_events("kafka-a", 15) + audit_events("kafka-b", 15)
    await record_audit(outbox, events)
    publisher = EventPublisher(kafka_broker.bootstrap, topic, encode)
    drain = audit_drain(redis, keyspace.audit, write, publisher.publish, count=7, block_ms=50)
    try:
        await drain_until(drain, lambda: publisher.published == len(events), within=30)
    finally:
        await publisher.close()

    messages = await read_messages(kafka_broker.bootstrap, topic, len(events))
    assert sorted(messages) == sorted((e.tenant.encode(), encode(e)) for e in events)
    assert await pending(redis, keyspace) == 0
    assert len(stored(clickhouse, "kafka-a")) == len(stored(clickhouse, "kafka-b")) == 15


# -- the processes that run the drain ------------------------------------------------------


def some_alerts(tenant: str, n: int) -> list[AlertEvent]:
    return [
        new_alert_event(
            tenant,
            (ALERT_BLOCK_CREATED, BLOCK_ESCALATED)[i % 2],
            "ip",
            f"203.0.113.{i}",
            explanation={"detector": "rules", "score": 0.95, "reasons": [f"burst {i}"]},
            block_id=f"blk_{i}",
            ttl_seconds=900 * (i + 1),
            offence=i + 1,
        )
        for i in range(n)
    ]


AlertRow = tuple[str, str, str, int, float, str]


def alert_rows(socket: Path, tenant: str) -> list[AlertRow]:
    """(event_id, kind, subject, offence, score, first reason) of ``tenant``'s alerts."""
    if not answers(socket):
        return []
    rows = query(
        socket,
        f"SELECT toString(event_id) AS event_id, kind, subject, offence, score,"
        f" JSONExtractString(explanation, 'reasons', 1) AS reason FROM {ALERTS_TABLE} FINAL"
        f" WHERE tenant = '{tenant}' ORDER BY event_id",
    )
    return [
        (r["event_id"], r["kind"], r["subject"], r["offence"], r["score"], r["reason"])
        for r in rows
    ]


def expected_alert_rows(
    alerts: Sequence[AlertEvent],
) -> list[tuple[str, str, str, int, float, str]]:
    return sorted(
        (a.event_id, a.kind, a.subject, a.offence or 0, 0.95, a.explanation["reasons"][0])
        for a in alerts
    )


def audit_rows(socket: Path, tenant: str) -> list[tuple[str, str]]:
    """(event_id, action) of ``tenant``'s rows, asked of the process that owns chDB."""
    if not answers(socket):
        return []
    rows = query(
        socket,
        f"SELECT toString(event_id) AS event_id, action FROM {AUDIT_TABLE} FINAL"
        f" WHERE tenant = '{tenant}' ORDER BY event_id",
    )
    return [(row["event_id"], row["action"]) for row in rows]


def stop_process(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        raise


@contextlib.contextmanager
def ratewatch(args: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m ratewatch *args``, stopped by SIGTERM at the end: it must exit 0 and
    log no traceback."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ratewatch", *args], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        assert stop_process(process) == 0
    assert "Traceback" not in log_path.read_text()


def incident_rows(socket: Path, tenant: str) -> list[tuple[str, str, str, int]]:
    """(event_id, kind, incident id, members) of ``tenant``'s incident changes."""
    if not answers(socket):
        return []
    rows = query(
        socket,
        f"SELECT toString(event_id) AS event_id, kind, incident_id, members_count"
        f" FROM {INCIDENTS_TABLE} FINAL WHERE tenant = '{tenant}' ORDER BY event_id",
    )
    return [(r["event_id"], r["kind"], r["incident_id"], r["members_count"]) for r in rows]


def assert_stored(
    process: subprocess.Popen[bytes],
    log_path: Path,
    socket: Path,
    tenant: str,
    events: Sequence[AuditEvent],
    alerts: Sequence[AlertEvent],
    incidents: Sequence[IncidentEvent] = (),
) -> None:
    """Wait until the process that owns chDB at ``socket`` stored ``tenant``'s audit events,
    alerts and incident changes, then check them."""

    def stored_all() -> bool:
        assert process.poll() is None, log_path.read_text()
        found = (audit_rows(socket, tenant), alert_rows(socket, tenant))
        return (len(found[0]), len(found[1]), len(incident_rows(socket, tenant))) == (
            len(events),
            len(alerts),
            len(incidents),
        )

    wait_until(stored_all, 60, "the audit, alert and incident rows", 0.2)
    assert audit_rows(socket, tenant) == sorted((e.event_id, e.action) for e in events)
    assert alert_rows(socket, tenant) == expected_alert_rows(alerts)
    assert incident_rows(socket, tenant) == sorted(
        (e.event_id, e.kind, e.incident_id, e.counts["members"]) for e in incidents
    )


@pytest.mark.timeout(120)
def test_ratewatch_stream_with_a_redis_url_drains_the_outboxes_into_tables_and_topics(
    redis_server: RedisServer, kafka_broker: KafkaBroker, keyspace: Keyspace, tmp_path: Path
) -> None:
    decisions = unique_topic()
    asyncio.run(create_topic(kafka_broker.bootstrap, decisions))
    asyncio.run(ensure_topic(kafka_broker.bootstrap, AUDIT_TOPIC))
    asyncio.run(ensure_topic(kafka_broker.bootstrap, ALERTS_TOPIC))
    asyncio.run(ensure_topic(kafka_broker.bootstrap, INCIDENTS_TOPIC))
    tenant = "dist" + secrets.token_hex(4)
    events = audit_events(tenant, 5)
    alerts = some_alerts(tenant, 3)
    incidents = incident_story(tenant)
    fill_outboxes(redis_server.url, keyspace, events, alerts, incidents)
    data_dir = tmp_path / "d"
    log_path = tmp_path / "stream.log"
    args = ["stream", "--kafka", kafka_broker.bootstrap, "--topic", decisions]
    args += ["--data-dir", str(data_dir), "--redis-url", redis_server.url]
    args += ["--key-prefix", keyspace.prefix]
    with ratewatch(args, log_path) as process:
        socket = data_dir / "clickhouse" / "query.sock"
        assert_stored(process, log_path, socket, tenant, events, alerts, incidents)
        messages = asyncio.run(
            read_messages(kafka_broker.bootstrap, AUDIT_TOPIC, len(events), tenant.encode())
        )
        assert sorted(value for _, value in messages) == sorted(encode(e) for e in events)
        published = asyncio.run(
            read_messages(kafka_broker.bootstrap, ALERTS_TOPIC, len(alerts), tenant.encode())
        )
        assert sorted(value for _, value in published) == sorted(encode_alert(a) for a in alerts)
        told = asyncio.run(
            read_messages(kafka_broker.bootstrap, INCIDENTS_TOPIC, len(incidents), tenant.encode())
        )
        assert [value for _, value in told] == [encode_incident(e) for e in incidents]


def test_the_embedded_pipeline_worker_drains_the_outboxes_into_their_tables(
    redis_server: RedisServer, keyspace: Keyspace, tmp_path: Path
) -> None:
    """``ratewatch pipeline``, the worker ``ratewatch up`` supervises, on the session's Redis."""
    tenant = "emb" + secrets.token_hex(4)
    events = audit_events(tenant, 4)
    alerts = some_alerts(tenant, 2)
    incidents = incident_story(tenant)
    fill_outboxes(redis_server.url, keyspace, events, alerts, incidents)
    data_dir = tmp_path / "d"
    log_path = tmp_path / "pipeline.log"
    args = ["pipeline", "--data-dir", str(data_dir), "--redis-url", redis_server.url]
    args += ["--key-prefix", keyspace.prefix]
    with ratewatch(args, log_path) as process:
        socket = data_dir / "clickhouse" / "query.sock"
        assert_stored(process, log_path, socket, tenant, events, alerts, incidents)
