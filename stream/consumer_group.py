"""One consumer of a consumer group on a Redis stream, and the trimming of what every group
has acknowledged.

Three readers share it: the embedded pipeline (decisions into ClickHouse,
``stream.redis_consumer``), the outbox drains (audit entries and alerts, and the webhook
deliveries of the alerts, ``stream.outbox_drain``) and the detection source
(``detectors.redis_source``).  The reader only moves entries; when to acknowledge them
(after the batch is stored, or at once), what to do with a malformed one and when to
stop are its callers' decisions.

It is written on redis-py rather than on FastStream's ``StreamSub`` because that
subscriber does not do what these readers need:

- it creates a group for new entries at the stream's end (``$``), which would skip every
  entry appended before the first reader ran; given another start id it keeps re-reading
  that id once the group exists, and never reaches new entries;
- it reads either new entries or, with ``min_idle_time``, only entries other consumers
  left pending (one at a time), never both, and never this consumer's own pending
  entries after a restart;
- a deleted stream (``NOGROUP``) stops the subscriber for good instead of creating the
  group again;
- nothing trims the stream.

The Redis client must return bytes (no ``decode_responses``), as the project's clients do.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from stream.cancellation import pause

FROM_START = "0"  # a group that reads the stream's history too
FROM_END = "$"  # a group that reads only what is appended after it was created

# an entry as read: its id and its fields, empty (or None) when it was deleted after it was
# delivered and before it was read again
Entry = tuple[bytes, Mapping[bytes, bytes] | None]
# XREADGROUP's answer: per stream, its entries; redis-py types it loosely
_Reply = list[tuple[bytes, list[Entry]]] | None

# What one command may read or acknowledge.  Valkey runs one command at a time, and the
# limiter's check script waits behind whatever runs: a read of a second's entries at once
# (1,300-1,800 single checks) held every check for 4-9 ms.  Measured on Valkey 8 (commandstats),
# XREADGROUP costs about 2.5 us an entry it adds to the pending list (1 us with NOACK) plus
# 0.3 us a KiB, XACK 0.5 us an id; pages of these bounds cost Valkey at most ~0.3 ms, and
# the worker one command more per page.
PAGE_ENTRIES = 100
PAGE_BYTES = 256 * 1024
ACK_IDS = 500
# What one trimming command may delete.  An exact XTRIM of a burst's acknowledged entries
# held Valkey for 65 ms (about 1 ms per MB freed).  An approximate trim removes whole nodes
# of the stream (100 entries or 4 KiB at most, Valkey's defaults) and is bounded by a LIMIT;
# the exact trim after it only cuts into the one node left holding the boundary.
TRIM_ENTRIES = 100


class GroupMissing(ResponseError):
    """The group is gone: its stream was deleted (or the database flushed) since it was
    created.  The reader creates it again on its next command."""


class ConsumerGroup:
    """``consumer`` of ``group`` on ``stream``: creates the group on first use (at
    ``start``, ``FROM_START`` or ``FROM_END``), reads new entries, re-reads this
    consumer's unacknowledged ones, claims those other consumers abandoned, acknowledges.

    ``count`` caps the entries of one read, made of commands of at most ``PAGE_ENTRIES``
    entries (fewer when entries are large: about ``PAGE_BYTES`` a command, by the size of
    the last page's entries); an acknowledgement is made of commands of at most ``ACK_IDS``
    ids.  ``claim_idle_ms`` is how long an entry must
    have waited under another consumer before ``claim_abandoned`` takes it (None: never);
    a sweep pages through the whole pending list, then rests half that time."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        start: str = FROM_START,
        count: int = 500,
        claim_idle_ms: int | None = None,
    ) -> None:
        if start not in (FROM_START, FROM_END):
            raise ValueError(f"start {start!r} must be {FROM_START!r} or {FROM_END!r}")
        if count < 1:
            raise ValueError(f"count {count} must be positive")
        if claim_idle_ms is not None and claim_idle_ms < 1:
            raise ValueError(f"claim_idle_ms {claim_idle_ms} must be positive (or None)")
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._start = start
        self._count = count
        self._claim_idle_ms = claim_idle_ms
        self._exists = False
        self._claim_cursor = "0-0"
        self._next_claim = 0.0  # monotonic time of the next sweep for abandoned entries
        self._page = min(count, PAGE_ENTRIES)  # entries of the next command

    async def ensure(self) -> None:
        """The group at ``start`` (and the stream, if need be); one that exists is kept
        where it is."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=self._start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._exists = True

    async def read_new(
        self, block_ms: int | None = None, count: int | None = None, *, noack: bool = False
    ) -> list[Entry]:
        """Entries never delivered to the group, now pending under this consumer; waits up
        to ``block_ms`` for some (None: answers at once).  With ``noack`` they are
        acknowledged as they are read (``XREADGROUP NOACK``): never pending, for a reader
        that tolerates losing what it read."""
        if block_ms is not None and block_ms < 1:
            # BLOCK 0 would wait forever, past any stop
            raise ValueError(f"block_ms {block_ms} must be positive (or None)")
        return await self._read(">", block_ms, count, noack)

    async def read_pending(self, after: bytes | str = "0", count: int | None = None) -> list[Entry]:
        """This consumer's entries delivered but never acknowledged (a previous run's, of
        the same consumer name), from the first one after ``after``."""
        start = after.decode() if isinstance(after, bytes) else after
        return await self._read(start, None, count)

    async def claim_abandoned(self) -> list[Entry]:
        """One page of entries pending under any consumer for ``claim_idle_ms`` or more,
        now this consumer's; empty when claiming is off or the next sweep is not due."""
        idle_ms = self._claim_idle_ms
        if idle_ms is None or time.monotonic() < self._next_claim:
            return []
        reply: list[Any] = await self._grouped(
            lambda: self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=idle_ms,
                start_id=self._claim_cursor,
                count=self._page,
            )
        )
        cursor, entries = _text(reply[0]), list(reply[1])
        self._size_pages(entries)
        self._claim_cursor = cursor
        if cursor == "0-0":  # the sweep went through the whole pending list
            self._next_claim = time.monotonic() + idle_ms / 2000
        return entries

    async def ack(self, ids: Sequence[bytes]) -> None:
        """Acknowledge ``ids``: they leave the pending list and may be trimmed."""
        for first in range(0, len(ids), ACK_IDS):
            chunk = ids[first : first + ACK_IDS]
            await self._grouped(partial(self.redis.xack, self.stream, self.group, *chunk))

    async def _read(
        self, start: str, block_ms: int | None, count: int | None, noack: bool = False
    ) -> list[Entry]:
        """Up to ``count`` entries after ``start`` (``>``: never delivered), page by page:
        only the first command waits; a short page ends the read."""
        wanted = count or self._count
        entries: list[Entry] = []
        while True:
            page = min(wanted - len(entries), self._page)
            reply: _Reply = await self._grouped(
                partial(
                    self.redis.xreadgroup,
                    self.group,
                    self.consumer,
                    {self.stream: start},
                    count=page,
                    block=block_ms,
                    noack=noack,
                )
            )
            read = [entry for _, found in reply or [] for entry in found]
            entries += read
            self._size_pages(read)
            if len(read) < page or len(entries) >= wanted:
                return entries
            block_ms = None
            if start != ">":  # this consumer's pending entries: go on after the last one
                start = _text(read[-1][0])

    def _size_pages(self, entries: Sequence[Entry]) -> None:
        """Entries per command from the size of ``entries`` (their first and last)."""
        if entries:
            size = (_entry_bytes(entries[0]) + _entry_bytes(entries[-1])) // 2
            self._page = max(1, min(self._count, PAGE_ENTRIES, PAGE_BYTES // max(size, 1)))

    async def _grouped(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``command`` once the group exists; a group found gone is created again by
        the next command."""
        if not self._exists:
            await self.ensure()
        try:
            return await command()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._exists = False
            raise GroupMissing(
                f"consumer group {self.group!r} of stream {self.stream!r} is gone "
                "(the stream was deleted): it is created again on the next read"
            ) from exc


async def trim_acknowledged(redis: Redis, stream: str, interval: float = 5.0) -> None:
    """Trim ``stream`` every ``interval`` seconds for as long as it runs (``trim_once``);
    Redis errors only skip a round."""
    while True:
        await pause(interval)
        with contextlib.suppress(RedisError):
            await trim_once(redis, stream)


async def trim_once(redis: Redis, stream: str) -> None:
    """Remove the entries older than anything a group of ``stream`` has not acknowledged
    or not read yet, in commands of bounded cost (``TRIM_ENTRIES``); a stream without
    groups is left whole."""
    if not await redis.xlen(stream):
        return  # the usual answer of an idle stream: one command instead of 2 + groups
    groups = await redis.xinfo_groups(stream)
    if not groups:
        return
    boundaries = []
    for group in groups:
        pending = await redis.xpending(stream, group["name"])
        if pending["pending"]:
            boundaries.append(_id_tuple(pending["min"]))
        else:
            # nothing pending: everything up to and including the last delivered id is done
            ms, seq = _id_tuple(group["last-delivered-id"])
            boundaries.append((ms, seq + 1))
    ms, seq = min(boundaries)
    minid = f"{ms}-{seq}"
    # whole nodes first, TRIM_ENTRIES at most a command, until none is left below the
    # boundary; then the entries below it in the node that holds it
    while await redis.xtrim(stream, minid=minid, approximate=True, limit=TRIM_ENTRIES):
        pass
    await redis.xtrim(stream, minid=minid, approximate=False)


def _entry_bytes(entry: Entry) -> int:
    fields = entry[1]
    return sum(len(value) for value in fields.values()) if fields else 0


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
