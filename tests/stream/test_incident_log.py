"""The incidents' history on real servers: incident changes recorded in the Redis outbox reach
``ratewatch.incidents`` with every field, once each (also after a crash before the
acknowledgement), and the incident topic; entries that are no incident event are
dead-lettered.  The processes that run the drain are tested with the other outboxes'
(``test_audit_log.py``).

Each test has an outbox of its own (a fresh key prefix) and a chDB directory of its own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from clickhouse_connect.driver.client import Client
from redis.asyncio import Redis

from analytics.incident_log import IncidentLogWriter
from analytics.tables import INCIDENTS_TABLE
from limiter.keyspace import Keyspace
from stream.incidents import (
    FIELD,
    INCIDENT_CLOSED,
    INCIDENT_OPENED,
    INCIDENT_UPDATED,
    IncidentEvent,
    IncidentOutbox,
    MalformedIncidentEvent,
    decode,
    encode,
    new_incident_event,
)
from stream.outbox_drain import INCIDENT_GROUP, OutboxDrain, Publish
from stream.publisher import EventPublisher
from tests.support.events import incident_story
from tests.support.kafka import KafkaBroker, create_topic, read_messages, unique_topic
from tests.support.outbox_drains import (
    drain_until,
    in_stored_order,
    pending_count,
    stream_fields,
    tenant_rows,
    written_by,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keyspace() -> Keyspace:
    return Keyspace(prefix="rwn" + secrets.token_hex(5))


def stored(client: Client, tenant: str, final: bool = True) -> list[dict[str, Any]]:
    columns = (
        "toUnixTimestamp64Milli(ts) AS ts, toString(event_id) AS event_id, v, kind,"
        " incident_id, family, state, mode, detector, detector_version,"
        " toUnixTimestamp64Milli(opened_at) AS opened_at,"
        " toUnixTimestamp64Milli(first_seen) AS first_seen,"
        " toUnixTimestamp64Milli(last_seen) AS last_seen,"
        " if(isNull(closed_at), NULL, toUnixTimestamp64Milli(assumeNotNull(closed_at)))"
        " AS closed_at, members_count, counts, members, member_outcomes, member_blocks, joined,"
        " reasons, evidence"
    )
    return tenant_rows(client, INCIDENTS_TABLE, columns, tenant, final)


def as_row(event: IncidentEvent) -> dict[str, Any]:
    return {
        "ts": event.ts,
        "event_id": event.event_id,
        "v": event.v,
        "kind": event.kind,
        "incident_id": event.incident_id,
        "family": event.family,
        "state": event.state,
        "mode": event.mode,
        "detector": event.detector,
        "detector_version": event.detector_version,
        "opened_at": event.opened_at,
        "first_seen": event.first_seen,
        "last_seen": event.last_seen,
        "closed_at": event.closed_at,
        "members_count": event.counts["members"],
        "counts": event.counts,
        "members": [m.ip for m in event.members],
        "member_outcomes": [m.outcome for m in event.members],
        "member_blocks": [m.block_id or "" for m in event.members],
        "joined": event.joined,
        "reasons": event.reasons,
        "evidence": json.dumps(event.evidence, sort_keys=True, separators=(",", ":")),
    }


def by_time(events: Sequence[IncidentEvent]) -> list[dict[str, Any]]:
    return in_stored_order(as_row(e) for e in events)


async def record(outbox: IncidentOutbox, events: Sequence[IncidentEvent]) -> None:
    for event in events:
        await outbox.record(event)


def incident_drain(
    redis: Redis,
    keyspace: Keyspace,
    clickhouse: Client,
    publish: Publish[IncidentEvent] | None = None,
    **options: Any,
) -> OutboxDrain[IncidentEvent]:
    return OutboxDrain(
        redis,
        keyspace.incident_log,
        decode,
        written_by(IncidentLogWriter(clickhouse)),
        publish,
        name="incident",
        group=INCIDENT_GROUP,
        block_ms=50,
        **options,
    )


async def pending(redis: Redis, keyspace: Keyspace) -> int:
    return await pending_count(redis, keyspace.incident_log, INCIDENT_GROUP)


# -- the contract --------------------------------------------------------------------------


def test_an_event_round_trips_and_bad_input_is_named() -> None:
    events = incident_story("acme")
    for event in events:
        assert decode(encode(event)) == event
    opened = events[0]
    assert (opened.kind, opened.state, opened.joined) == (
        INCIDENT_OPENED,
        "open",
        ["203.0.113.1", "203.0.113.2", "203.0.113.3"],
    )
    assert events[2].closed_at is not None
    assert events[2].state == "closed"

    base: dict[str, Any] = {
        "incident_id": "inc_1",
        "family": "scraping",
        "state": "open",
        "mode": "enforce",
        "opened_at": 1,
        "first_seen": 1,
        "last_seen": 2,
    }
    changes: list[tuple[dict[str, Any], str]] = [
        ({"state": "ajar"}, "incident state 'ajar'"),
        ({"incident_id": ""}, "non-empty incident_id"),
        ({"last_seen": -5}, "incident last_seen -5 is not epoch ms"),
        ({"counts": {"members": -1}}, "incident count members=-1"),
        ({"evidence": {"raw": object()}}, "incident evidence is not JSON"),
    ]
    for change, reason in changes:
        with pytest.raises(ValueError, match=reason):
            new_incident_event("acme", INCIDENT_OPENED, **{**base, **change})
    with pytest.raises(ValueError, match=r"incident kind 'incident\.paused'"):
        new_incident_event("acme", "incident.paused", **base)

    good = encode(opened)
    for bad, reason in [
        (b"{", "truncated"),
        (good.replace(b'"kind":"incident.opened"', b'"kind":"incident.gone"'), "kind"),
        (good.replace(b'"v":1', b'"v":2'), "version 2 is not 1..1"),
        (good.replace(b'"members":3', b'"members":4294967296'), "count members=4294967296"),
    ]:
        with pytest.raises(MalformedIncidentEvent, match=reason):
            decode(bad)


# -- outbox → drain → ratewatch.incidents ---------------------------------------------------


async def test_incident_changes_reach_the_table_once_each_with_every_field(
    redis: Redis, keyspace: Keyspace, clickhouse: Client
) -> None:
    """Stored, then the drain "dies" before the acknowledgement; restarted under the same
    name with other batches, it inserts them again, and the table folds the copies."""
    outbox = IncidentOutbox(redis, keyspace.incident_log)
    first = incident_story("history", "inc_aaaaaaaaaaaaaaaa")
    await record(outbox, first)
    stop = asyncio.Event()

    async def dies(events: Sequence[IncidentEvent]) -> None:
        stop.set()
        raise ConnectionError("killed before the acknowledgement")

    crashed = incident_drain(redis, keyspace, clickhouse, dies, consumer="c1")
    await asyncio.wait_for(crashed.run(stop), 20)
    assert len(stored(clickhouse, "history")) == 3
    assert await pending(redis, keyspace) == 3

    later = incident_story("history", "inc_bbbbbbbbbbbbbbbb")
    await record(outbox, later)
    published: list[IncidentEvent] = []

    async def publish(events: Sequence[IncidentEvent]) -> None:
        published.extend(events)

    restarted = incident_drain(redis, keyspace, clickhouse, publish, consumer="c1", count=2)
    await drain_until(restarted, lambda: len(published) == 6)

    everything = first + later
    assert stored(clickhouse, "history") == by_time(everything)
    assert len(stored(clickhouse, "history", final=False)) >= 6
    assert await pending(redis, keyspace) == 0
    # one incident's history, latest state first, as an analyst asks for it
    [latest] = clickhouse.query(
        f"SELECT state, members_count, counts['blocked'] FROM {INCIDENTS_TABLE} FINAL"
        " WHERE tenant = 'history' AND incident_id = 'inc_bbbbbbbbbbbbbbbb'"
        " ORDER BY ts DESC LIMIT 1"
    ).result_rows
    assert tuple(latest) == ("closed", 5, 4)
    create = str(clickhouse.query(f"SHOW CREATE TABLE {INCIDENTS_TABLE}").result_rows[0][0])
    assert "ReplacingMergeTree" in create
    assert "non_replicated_deduplication_window = 10000" in create


async def test_entries_that_are_no_incident_event_are_dead_lettered(
    redis: Redis, keyspace: Keyspace, clickhouse: Client
) -> None:
    outbox = IncidentOutbox(redis, keyspace.incident_log)
    good = incident_story("mixed")
    valid = encode(good[0])
    bad = [b"not json", valid.replace(good[0].event_id.encode(), b"not-a-uuid")]
    await outbox.record(good[0])
    for value in bad:
        await redis.xadd(keyspace.incident_log, {FIELD: value})
    await record(outbox, good[1:])

    drain = incident_drain(redis, keyspace, clickhouse)
    await drain_until(drain, lambda: drain.stats.written + drain.stats.malformed == 5)
    assert (drain.stats.written, drain.stats.malformed) == (3, 2)
    assert stored(clickhouse, "mixed") == by_time(good)
    letters = await stream_fields(redis, keyspace.incident_log + ":dlq")
    assert [letter[b"raw:e"] for letter in letters] == bad
    assert "'not-a-uuid' is not a UUID" in letters[1][b"error"].decode()


async def test_every_change_is_published_to_the_topic_before_it_is_acknowledged(
    redis: Redis, keyspace: Keyspace, clickhouse: Client, kafka_broker: KafkaBroker
) -> None:
    topic = unique_topic()
    await create_topic(kafka_broker.bootstrap, topic, partitions=2)
    events = incident_story("kafka-a", "inc_cccccccccccccccc") + incident_story("kafka-b")
    await record(IncidentOutbox(redis, keyspace.incident_log), events)
    publisher = EventPublisher(kafka_broker.bootstrap, topic, encode)
    drain = incident_drain(redis, keyspace, clickhouse, publisher.publish, count=4)
    try:
        await drain_until(drain, lambda: publisher.published == len(events), within=30)
    finally:
        await publisher.close()
    messages = await read_messages(kafka_broker.bootstrap, topic, len(events))
    assert sorted(messages) == sorted((e.tenant.encode(), encode(e)) for e in events)
    assert await pending(redis, keyspace) == 0
    assert len(stored(clickhouse, "kafka-a")) == len(stored(clickhouse, "kafka-b")) == 3
    # keyed by tenant: one partition each, so a tenant's incident history stays in order
    kinds = [msgspec.json.decode(value)["kind"] for key, value in messages if key == b"kafka-a"]
    assert kinds == [INCIDENT_OPENED, INCIDENT_UPDATED, INCIDENT_CLOSED]
