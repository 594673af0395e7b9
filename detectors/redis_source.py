"""Decision events for detection from the embedded Valkey event stream.

A consumer group of its own (``ratewatch-detect``, through ``stream.consumer_group``) reads
the stream beside the analytics pipeline's group.  It starts at the stream's end (detection
needs the recent traffic, not the history) and reads with ``NOACK``: an entry is
acknowledged as it is delivered, so detection's reads never hold back the stream's
trimming, and a read is one command, not a read and an ``XACK`` (with single checks, each
one a stream entry, that was two commands per check).  Detection tolerates a lost read.
Malformed entries are skipped here; the analytics pipeline dead-letters them.
"""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis

from stream.consumer_group import FROM_END, ConsumerGroup, GroupMissing
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
        count: int = 5000,
        block_ms: int = 1000,
    ):
        self._group = ConsumerGroup(redis, stream, group, consumer, start=FROM_END, count=count)
        self._block_ms = block_ms

    async def ensure_group(self) -> None:
        """The group, and none of this consumer's entries left pending (an earlier version
        acknowledged after reading, and an entry whose ``XACK`` failed stayed pending): a
        pending entry would hold back the stream's trimming for good."""
        await self._group.ensure()
        while stale := await self._group.read_pending():
            await self._group.ack([entry_id for entry_id, _ in stale])

    async def read(self) -> list[DecisionEvent]:
        """The next entries' events (empty after ``block_ms`` without any)."""
        try:
            entries = await self._group.read_new(self._block_ms, noack=True)
        except GroupMissing:  # the stream was deleted and made again
            await self.ensure_group()
            return []
        events: list[DecisionEvent] = []
        for entry_id, fields in entries:
            with contextlib.suppress(MalformedEvent):
                events.extend(decode_entry(entry_record(entry_id, fields or {})))
        return events
