"""The consumer-group reader on the session's real Redis: what a consumer reads stays
pending until it is acknowledged, a restarted consumer reads its own pending entries
again, another consumer claims what a dead one left once it has waited long enough, and
trimming never drops an entry some group has not acknowledged (or not read yet).

Each test has a stream of its own."""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from stream.consumer_group import (
    ACK_IDS,
    FROM_END,
    FROM_START,
    PAGE_BYTES,
    PAGE_ENTRIES,
    TRIM_ENTRIES,
    ConsumerGroup,
    Entry,
    GroupMissing,
    trim_acknowledged,
    trim_once,
)
from tests.support.polling import eventually_equal

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def stream() -> str:
    return f"test:group:{secrets.token_hex(5)}"


async def append(redis: Redis, stream: str, n: int) -> list[bytes]:
    ids = [await redis.xadd(stream, {b"n": str(i).encode()}) for i in range(n)]
    return [entry_id for entry_id in ids if isinstance(entry_id, bytes)]


def ids_of(entries: Sequence[Entry]) -> list[bytes]:
    return [entry_id for entry_id, _ in entries]


async def all_idle_for(redis: Redis, stream: str, group: str, idle_ms: int) -> bool:
    """Whether every pending entry of the group has been idle ``idle_ms`` or longer."""
    rows: list[dict[str, int]] = await redis.xpending_range(  # type: ignore[assignment]
        stream, group, min="-", max="+", count=1000
    )
    return all(row["time_since_delivered"] >= idle_ms for row in rows)


async def pending_of(redis: Redis, stream: str, group: str) -> dict[bytes, list[bytes]]:
    """The group's pending entries by consumer."""
    rows: list[dict[str, bytes]] = await redis.xpending_range(  # type: ignore[assignment]
        stream, group, min="-", max="+", count=1000
    )
    found: dict[bytes, list[bytes]] = {}
    for row in rows:
        found.setdefault(row["consumer"], []).append(row["message_id"])
    return found


async def remaining(redis: Redis, stream: str) -> list[bytes]:
    entries: list[tuple[bytes, object]] = await redis.xrange(stream)  # type: ignore[assignment]
    return [entry_id for entry_id, _ in entries]


async def test_read_entries_stay_pending_until_acknowledged(redis: Redis, stream: str) -> None:
    ids = await append(redis, stream, 5)
    reader = ConsumerGroup(redis, stream, "g", "c1", start=FROM_START, count=3)

    first = await reader.read_new(block_ms=50)
    second = await reader.read_new(block_ms=50)
    assert ids_of(first) == ids[:3]  # a group from the start reads the history, by count
    assert ids_of(second) == ids[3:]
    assert [fields for _, fields in first] == [{b"n": b"0"}, {b"n": b"1"}, {b"n": b"2"}]
    assert await reader.read_new(block_ms=50) == []  # each entry is delivered once
    assert await pending_of(redis, stream, "g") == {b"c1": ids}

    await reader.ack(ids_of(first))
    assert await pending_of(redis, stream, "g") == {b"c1": ids[3:]}
    await reader.ack([])  # nothing to acknowledge is no command
    await reader.ack(ids_of(second))
    assert await pending_of(redis, stream, "g") == {}


class Recording(Redis):
    """The session's Redis (its connection pool), noting each command it sends."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(connection_pool=redis.connection_pool)
        self.sent: list[tuple[str, ...]] = []
        self.replies: list[object] = []  # of each command sent, in order

    async def execute_command(self, *args: object, **options: object) -> object:
        self.sent.append(tuple(a.decode() if isinstance(a, bytes) else str(a) for a in args))
        reply = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        self.replies.append(reply)
        return reply

    def counts(self, command: str) -> list[int]:
        """The COUNT argument of each ``command`` sent (XREADGROUP, XAUTOCLAIM)."""
        found = []
        for args in self.sent:
            if args[0] == command:
                found.append(int(args[args.index("COUNT") + 1]))
        return found

    def ids_per(self, command: str) -> list[int]:
        """The ids of each ``command`` sent (XACK: name, stream, group, ids…)."""
        return [len(args) - 3 for args in self.sent if args[0] == command]


async def test_a_large_read_or_acknowledgement_is_made_of_bounded_commands(
    redis: Redis, stream: str
) -> None:
    # Valkey runs one command at a time, and the limiter's checks wait behind a long one
    total = 2 * PAGE_ENTRIES + PAGE_ENTRIES // 2
    ids = await append(redis, stream, total)
    recording = Recording(redis)
    reader = ConsumerGroup(recording, stream, "g", "c1", count=2 * ACK_IDS)

    read = await reader.read_new(block_ms=50, count=total)
    assert ids_of(read) == ids  # everything asked for, in order
    assert recording.counts("XREADGROUP") == [PAGE_ENTRIES, PAGE_ENTRIES, PAGE_ENTRIES // 2]

    more = await append(redis, stream, 2 * ACK_IDS + 1 - total)
    every = ids + more
    assert ids_of(await reader.read_new(block_ms=50)) == more
    await reader.ack(every)
    assert recording.ids_per("XACK") == [ACK_IDS, ACK_IDS, 1]
    assert await pending_of(redis, stream, "g") == {}


async def test_large_entries_are_read_fewer_to_a_command(redis: Redis, stream: str) -> None:
    size = 40 * 1024
    per_command = PAGE_BYTES // size
    ids = [await redis.xadd(stream, {b"d": b"x" * size}) for _ in range(3 * per_command)]
    recording = Recording(redis)
    reader = ConsumerGroup(recording, stream, "g", "c1", count=PAGE_ENTRIES)

    first = await reader.read_new(count=1)  # the size is learnt from what was read
    rest = await reader.read_new()
    assert ids_of(first + rest) == ids
    # 3 * per_command - 1 left: two full commands, and a third that finds one fewer
    assert recording.counts("XREADGROUP") == [1, per_command, per_command, per_command]


async def test_own_pending_entries_are_read_again_page_after_page(
    redis: Redis, stream: str
) -> None:
    total = PAGE_ENTRIES + 10
    ids = await append(redis, stream, total)
    assert ids_of(await ConsumerGroup(redis, stream, "g", "host-a", count=total).read_new()) == ids

    recording = Recording(redis)
    restarted = ConsumerGroup(recording, stream, "g", "host-a", count=total)
    assert ids_of(await restarted.read_pending()) == ids
    starts = [args[args.index("STREAMS") + 2] for args in recording.sent if args[0] == "XREADGROUP"]
    assert starts == ["0", ids[PAGE_ENTRIES - 1].decode()]  # the second page after the first


async def test_a_group_from_the_end_reads_only_what_comes_after_it(
    redis: Redis, stream: str
) -> None:
    await append(redis, stream, 3)
    reader = ConsumerGroup(redis, stream, "recent", "c1", start=FROM_END)
    await reader.ensure()
    await reader.ensure()  # a group that exists is kept where it is
    later = await append(redis, stream, 2)
    assert ids_of(await reader.read_new(block_ms=50)) == later


async def test_a_restarted_consumer_reads_its_own_pending_entries_again(
    redis: Redis, stream: str
) -> None:
    ids = await append(redis, stream, 6)
    first_run = ConsumerGroup(redis, stream, "g", "host-a")
    assert ids_of(await first_run.read_new()) == ids  # then it dies, acknowledging nothing
    await redis.xdel(stream, ids[1])  # deleted while pending

    restarted = ConsumerGroup(redis, stream, "g", "host-a", count=4)
    assert await restarted.read_new(block_ms=50) == []  # nothing new: only its pending
    page = await restarted.read_pending()
    assert ids_of(page) == ids[:4]
    assert not page[1][1]  # the deleted entry comes back without its fields
    assert ids_of(await restarted.read_pending(after=page[-1][0])) == ids[4:]
    await restarted.ack(ids_of(page))
    assert ids_of(await restarted.read_pending()) == ids[4:]
    # another consumer's pending entries are not its own
    assert await ConsumerGroup(redis, stream, "g", "host-b").read_pending() == []


async def test_entries_a_dead_consumer_left_pending_are_claimed_once_idle_long_enough(
    redis: Redis, stream: str
) -> None:
    ids = await append(redis, stream, 7)
    dead = ConsumerGroup(redis, stream, "g", "dead")
    assert ids_of(await dead.read_new()) == ids

    patient = ConsumerGroup(redis, stream, "g", "patient", claim_idle_ms=60_000)
    assert await patient.claim_abandoned() == []  # not idle for a minute yet
    assert await ConsumerGroup(redis, stream, "g", "off").claim_abandoned() == []  # no claims

    # idle long enough that a sweep does not also take back what it claimed itself a page
    # earlier (that is idle too once idle_ms has passed), however slow the box
    idle_ms = 500
    idle = functools.partial(all_idle_for, redis, stream, "g", idle_ms)
    await eventually_equal(idle, True, 10, "the dead consumer's entries to be idle")
    survivor = ConsumerGroup(redis, stream, "g", "survivor", count=3, claim_idle_ms=idle_ms)
    claimed: list[Entry] = []
    deadline = time.monotonic() + 10
    while len(claimed) < len(ids):  # a sweep pages through the pending list, 3 at a time
        assert time.monotonic() < deadline, f"claimed only {len(claimed)} of {len(ids)}"
        page = await survivor.claim_abandoned()
        assert len(page) <= 3
        claimed += page
    assert ids_of(claimed) == ids
    assert [fields for _, fields in claimed] == [{b"n": str(i).encode()} for i in range(7)]
    assert await pending_of(redis, stream, "g") == {b"survivor": ids}

    await survivor.ack(ids_of(claimed))
    assert await pending_of(redis, stream, "g") == {}
    assert await dead.read_pending() == []  # the dead consumer's claim went with them


async def test_trimming_drops_only_entries_every_group_acknowledged(
    redis: Redis, stream: str
) -> None:
    ids = await append(redis, stream, 10)
    await trim_once(redis, stream)  # no group: nothing is known to be read
    assert await remaining(redis, stream) == ids

    slow = ConsumerGroup(redis, stream, "slow", "c1")
    fast = ConsumerGroup(redis, stream, "fast", "c1")
    await fast.ack(ids_of(await fast.read_new()))
    await slow.ensure()
    await trim_once(redis, stream)  # the slow group has read nothing yet
    assert await remaining(redis, stream) == ids

    await slow.read_new()
    await slow.ack([*ids[:4], ids[6]])
    await trim_once(redis, stream)  # up to the oldest unacknowledged entry, ids[4]
    assert await remaining(redis, stream) == ids[4:]

    await slow.ack(ids[4:])
    later = await append(redis, stream, 3)  # appended, not read by any group yet
    await trim_once(redis, stream)
    assert await remaining(redis, stream) == later


async def test_trimming_a_burst_deletes_in_bounded_commands(redis: Redis, stream: str) -> None:
    # an exact XTRIM of a burst's acknowledged entries held Valkey (and every check behind
    # it) for tens of milliseconds
    total = 10 * TRIM_ENTRIES + 37
    ids = await append(redis, stream, total)
    reader = ConsumerGroup(redis, stream, "g", "c1", start=FROM_START)
    read = ids_of(await reader.read_new(count=total))
    assert read == ids
    await reader.ack(read)
    later = await append(redis, stream, 5)  # not read yet: kept

    recording = Recording(redis)
    await trim_once(recording, stream)

    assert await remaining(redis, stream) == later
    trims = [(args, reply) for args, reply in zip(recording.sent, recording.replies, strict=True)
             if args[0] == "XTRIM"]  # fmt: skip
    deleted = [reply for _, reply in trims]
    assert sum(deleted) == total  # type: ignore[arg-type]
    assert all(0 <= n <= TRIM_ENTRIES for n in deleted)  # type: ignore[operator]
    *approximate, (last, _) = trims
    assert all("~" in args and "LIMIT" in args for args, _ in approximate)
    assert len(approximate) >= total // TRIM_ENTRIES  # the burst went in many commands
    assert "~" not in last  # the last one exact: nothing acknowledged is left


async def test_the_trimmer_keeps_trimming_as_groups_acknowledge(redis: Redis, stream: str) -> None:
    reader = ConsumerGroup(redis, stream, "g", "c1")
    await reader.ensure()
    trimmer = asyncio.create_task(trim_acknowledged(redis, stream, interval=0.02))
    try:
        await append(redis, stream, 4)
        await reader.ack(ids_of(await reader.read_new()))
        await eventually_equal(
            lambda: redis.xlen(stream), 0, 10, "the acknowledged entries trimmed"
        )
    finally:
        trimmer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trimmer


async def test_a_deleted_stream_is_reported_and_its_group_made_again(
    redis: Redis, stream: str
) -> None:
    reader = ConsumerGroup(redis, stream, "g", "c1")
    await append(redis, stream, 2)
    assert len(await reader.read_new()) == 2
    await redis.delete(stream)

    with pytest.raises(GroupMissing, match=f"group 'g' of stream '{stream}' is gone"):
        await reader.read_new(block_ms=50)
    later = await append(redis, stream, 1)
    assert ids_of(await reader.read_new(block_ms=50)) == later


async def test_bad_settings_are_named(redis: Redis) -> None:
    with pytest.raises(ValueError, match="start 'latest' must be '0' or '\\$'"):
        ConsumerGroup(redis, "s", "g", "c", start="latest")
    with pytest.raises(ValueError, match="count 0 must be positive"):
        ConsumerGroup(redis, "s", "g", "c", count=0)
    with pytest.raises(ValueError, match="claim_idle_ms -5 must be positive"):
        ConsumerGroup(redis, "s", "g", "c", claim_idle_ms=-5)


async def test_a_read_never_blocks_forever(redis: Redis, stream: str) -> None:
    with pytest.raises(ValueError, match="block_ms 0 must be positive"):
        await ConsumerGroup(redis, stream, "g", "c").read_new(block_ms=0)
