"""Decision events for detection from the embedded Valkey event stream.

A consumer group of its own (``ratewatch-detect``, through ``stream.consumer_group``) reads
the stream beside the analytics pipeline's group.  It starts at the stream's end (detection
needs the recent traffic, not the history) and reads with ``NOACK``: an entry is
acknowledged as it is delivered, so detection's reads never hold back the stream's
trimming, and a read is one command, not a read and an ``XACK`` (with single checks, each
one a stream entry, that was two commands per check).  Detection tolerates a lost read.
Malformed entries are skipped here; the analytics pipeline dead-letters them.

The embedded detection takes what arrived just before each round (``read_available``)
rather than reading as entries come: a round sees the same decisions, and the worker is not
woken, nor Valkey asked, once per stream entry (with single checks, once per check).
"""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis

from stream.consumer_group import FROM_END, ConsumerGroup, Entry, GroupMissing
from stream.events import DecisionEvent, MalformedEvent, decode_entry
from stream.handlers import entry_record

GROUP = "ratewatch-detect"


class RedisDecisionSource:
    def __init__(
        self,
        redis: Redis,
        stream: str,
        consumer: str = "detect",
        group: str = GROUP,
        count: int = 500,
    ):
        """``count``: the entries of one read (the event loop runs between two)."""
        self._group = ConsumerGroup(redis, stream, group, consumer, start=FROM_END, count=count)
        self._count = count

    async def ensure_group(self) -> None:
        """The group, and none of this consumer's entries left pending (an earlier version
        acknowledged after reading, and an entry whose ``XACK`` failed stayed pending): a
        pending entry would hold back the stream's trimming for good."""
        await self._group.ensure()
        while stale := await self._group.read_pending():
            await self._group.ack([entry_id for entry_id, _ in stale])

    async def read_available(self) -> list[DecisionEvent]:
        """The events of every entry not read yet (empty if there are none)."""
        events: list[DecisionEvent] = []
        while True:
            entries = await self._read_new()
            events += _events(entries)
            if len(entries) < self._count:
                return events

    async def _read_new(self) -> list[Entry]:
        try:
            return await self._group.read_new(None, self._count, noack=True)
        except GroupMissing:  # the stream was deleted and made again
            await self.ensure_group()
            return []


def _events(entries: list[Entry]) -> list[DecisionEvent]:
    events: list[DecisionEvent] = []
    for entry_id, fields in entries:
        with contextlib.suppress(MalformedEvent):
            events.extend(decode_entry(entry_record(entry_id, fields or {}), with_ids=False))
    return events
