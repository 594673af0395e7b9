"""Decision events for detection from the embedded Valkey event stream.

A consumer group of its own (``ratewatch-detect``, through ``stream.consumer_group``) reads
the stream beside the analytics pipeline's group.  It starts at the stream's end (detection
needs the recent traffic, not the history) and acknowledges each read at once: detection
tolerates a lost batch, and an acknowledged entry never holds back the stream's trimming.
Malformed entries are skipped here; the analytics pipeline dead-letters them.
"""

from __future__ import annotations

import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from stream.consumer_group import FROM_END, ConsumerGroup, GroupMissing
from stream.events import DecisionEvent, MalformedEvent, decode_entry
from stream.handlers import entry_record

log = logging.getLogger("ratewatch.detect")

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
        # ids whose XACK failed: pending ids would hold back the stream's trimming for good
        self._unacked: list[bytes] = []

    async def ensure_group(self) -> None:
        await self._group.ensure()

    async def read(self) -> list[DecisionEvent]:
        """The next entries' events (empty after ``block_ms`` without any)."""
        try:
            entries = await self._group.read_new(self._block_ms)
        except GroupMissing:  # the stream was deleted and made again
            await self.ensure_group()
            return []
        events: list[DecisionEvent] = []
        ids, self._unacked = self._unacked, []
        for entry_id, fields in entries:
            ids.append(entry_id)
            with contextlib.suppress(MalformedEvent):
                events.extend(decode_entry(entry_record(entry_id, fields or {})))
        if ids:
            try:
                await self._group.ack(ids)
            except RedisError as exc:
                self._unacked = ids
                log.warning("acknowledging %d detection entries failed: %s", len(ids), exc)
        return events
