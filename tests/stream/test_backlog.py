"""The backlog of a stream on the session's real Redis: what it holds, what each group has
not acknowledged and since when, and how the limiter reports it past its bound.

Each test has a stream of its own."""

from __future__ import annotations

import secrets

import pytest
from redis.asyncio import Redis

from stream.backlog import BacklogReport, read_backlog
from stream.consumer_group import FROM_END, FROM_START, ConsumerGroup, trim_once

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def stream() -> str:
    return f"test:backlog:{secrets.token_hex(5)}"


async def append(redis: Redis, stream: str, n: int, size: int = 10) -> None:
    for _ in range(n):
        await redis.xadd(stream, {b"d": b"x" * size})


async def test_a_missing_stream_has_no_backlog(redis: Redis, stream: str) -> None:
    backlog = await read_backlog(redis, stream)
    assert (backlog.entries, backlog.memory_bytes, backlog.unacknowledged) == (0, 0, 0)
    assert backlog.oldest_age_seconds is None


async def test_before_any_group_every_entry_is_unacknowledged(redis: Redis, stream: str) -> None:
    # the pipeline's group reads the stream from its start: all of it is still to store
    await append(redis, stream, 3)
    backlog = await read_backlog(redis, stream)
    assert (backlog.entries, backlog.unacknowledged) == (3, 3)
    assert backlog.memory_bytes > 0
    assert backlog.oldest_age_seconds is not None
    assert backlog.oldest_age_seconds >= 0
    assert backlog.groups == {}


async def test_each_group_is_behind_by_what_it_has_not_acknowledged(
    redis: Redis, stream: str
) -> None:
    await append(redis, stream, 5)
    pipeline = ConsumerGroup(redis, stream, "pipeline", "c", start=FROM_START, count=2)
    caught_up = ConsumerGroup(redis, stream, "caught-up", "c", start=FROM_END)
    await caught_up.ensure()
    read = await pipeline.read_new()  # two read, not acknowledged
    await pipeline.ack([read[0][0]])  # one of them acknowledged

    backlog = await read_backlog(redis, stream)
    assert backlog.entries == 5
    assert backlog.groups["pipeline"].unacknowledged == 4  # 1 pending + 3 unread
    assert backlog.groups["caught-up"].unacknowledged == 0
    assert backlog.groups["caught-up"].oldest_age_seconds is None
    assert backlog.unacknowledged == 4
    # the slowest group's oldest unacknowledged entry (the pending one) is the oldest
    oldest = backlog.groups["pipeline"].oldest_age_seconds
    assert oldest is not None
    assert oldest == backlog.oldest_age_seconds

    await pipeline.ack([read[1][0]])
    rest = await pipeline.read_new(count=10)
    await pipeline.ack([entry_id for entry_id, _ in rest])
    await trim_once(redis, stream)
    backlog = await read_backlog(redis, stream)
    assert (backlog.entries, backlog.unacknowledged, backlog.oldest_age_seconds) == (0, 0, None)


async def test_the_report_is_behind_past_its_memory_bound_and_up_within_it(
    redis: Redis, stream: str
) -> None:
    await ConsumerGroup(redis, stream, "pipeline", "c", start=FROM_START).ensure()
    await append(redis, stream, 20, size=1000)
    size = (await read_backlog(redis, stream)).memory_bytes

    behind = await BacklogReport(redis, stream, max_bytes=size - 1, max_age=3600).status()
    assert behind["status"] == "behind"
    assert behind["memory_bytes"] == size
    assert (behind["max_bytes"], behind["max_age_seconds"]) == (size - 1, 3600)
    assert behind["entries"] == behind["unacknowledged"] == 20
    assert behind["groups"] == {
        "pipeline": {
            "unacknowledged": 20,
            "oldest_unacknowledged_age_seconds": behind["oldest_unacknowledged_age_seconds"],
        }
    }
    within = BacklogReport(redis, stream, max_bytes=size, max_age=3600)
    assert (await within.status())["status"] == "up"

    text = (await BacklogReport(redis, stream, size - 1, max_age=3600).exposition()).decode()
    assert f"ratewatch_decision_stream_memory_bytes {float(size)!r}" in text
    assert f"ratewatch_decision_stream_max_bytes {float(size - 1)!r}" in text
    assert "ratewatch_decision_stream_max_age_seconds 3600.0" in text
    assert 'ratewatch_decision_stream_unacknowledged_entries{group="pipeline"} 20.0' in text
    assert "ratewatch_decision_stream_entries 20.0" in text


async def test_the_report_is_behind_once_an_entry_waits_past_its_age_bound(
    redis: Redis, stream: str
) -> None:
    await ConsumerGroup(redis, stream, "pipeline", "c", start=FROM_START).ensure()
    # an entry appended a minute ago, by its id (Redis stamps ids with its clock)
    seconds, micros = await redis.time()
    await redis.xadd(stream, {b"d": b"x"}, id=f"{seconds * 1000 + micros // 1000 - 60_000}-0")
    report = BacklogReport(redis, stream, max_bytes=1 << 30, max_age=30)
    status = await report.status()
    assert status["status"] == "behind"
    age = status["oldest_unacknowledged_age_seconds"]
    assert isinstance(age, float)
    assert 60 <= age < 90
    patient = BacklogReport(redis, stream, max_bytes=1 << 30, max_age=3600)
    assert (await patient.status())["status"] == "up"


async def test_the_report_says_unknown_when_redis_does_not_answer(stream: str) -> None:
    # nothing listens on port 1: the status page and the scrape answer without it
    unreachable = Redis(port=1, socket_connect_timeout=0.5)
    try:
        report = BacklogReport(unreachable, stream, max_bytes=1 << 20, max_age=300)
        status = await report.status()
        assert status["status"] == "unknown"
        assert await report.exposition() == b""
    finally:
        await unreachable.aclose()
