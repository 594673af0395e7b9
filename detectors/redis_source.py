"""Decision events for detection from the embedded Valkey event stream.

A consumer group of its own (``ratewatch-detect``) reads the stream beside the analytics
pipeline's group.  It starts at the stream's end (detection needs the recent traffic, not
the history) and acknowledges each read at once: detection tolerates a lost batch, and an
acknowledged entry never holds back the stream's trimming.  Malformed entries are skipped
here; the analytics pipeline dead-letters them.
"""

from __future__ import annotations

import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from stream.events import DecisionEvent, MalformedEvent, decode_entry
from stream.handlers import entry_record

log = logging.getLogger("ratewatch.detect")

GROUP = "ratewatch-detect"
# XREADGROUP's answer: per stream, its entries as (id, fields); redis-py types it loosely
_Reply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None


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
        self._redis = redis
        self._stream = stream
        self._consumer = consumer
        self._group = group
        self._count = count
        self._block_ms = block_ms
        # ids whose XACK failed: pending ids would hold back the stream's trimming for good
        self._unacked: list[bytes] = []

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, self._group, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self) -> list[DecisionEvent]:
        """The next entries' events (empty after ``block_ms`` without any)."""
        try:
            reply: _Reply = await self._redis.xreadgroup(  # type: ignore[assignment]
                self._group,
                self._consumer,
                {self._stream: ">"},
                count=self._count,
                block=self._block_ms,
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted and made again
                await self.ensure_group()
                return []
            raise
        events: list[DecisionEvent] = []
        ids, self._unacked = self._unacked, []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                ids.append(entry_id)
                with contextlib.suppress(MalformedEvent):
                    events.extend(decode_entry(entry_record(entry_id, fields)))
        if ids:
            try:
                await self._redis.xack(self._stream, self._group, *ids)
            except RedisError as exc:
                self._unacked = ids
                log.warning("acknowledging %d detection entries failed: %s", len(ids), exc)
        return events
