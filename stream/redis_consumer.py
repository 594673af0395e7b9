"""The embedded pipeline's transport: the Valkey event stream through FastStream's Redis
broker, with a consumer group and acknowledgements, and recovery that writes nothing twice.

- A batch's cut (first and last offset) is recorded before it is written.  A failed write
  is retried with the same batch until it succeeds (or the worker stops, leaving the batch
  pending); only then is the batch acknowledged.
- A worker killed in the middle of a write (the raw rows stored, some rollups not) leaves
  its batch pending under its consumer name.  The next worker of that name reads its
  pending entries first and writes them with the recorded cuts: the same rows under the
  same deduplication token complete the rollups and add nothing to the raw table.
- A trimmer removes entries every reader has acknowledged, so the stream does not grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Protocol

from faststream import AckPolicy, Context
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from stream.handlers import BatchHandler, EventStore, Record, entry_record

log = logging.getLogger("ratewatch.stream")

GROUP = "ratewatch-pipeline"
CONSUMER = "pipeline"
PARTITION = 0  # a stream is one ordered sequence
MAX_RETRY_PAUSE = 5.0


class PlannedStore(EventStore, Protocol):
    def plan_batches(self, plans: Sequence[tuple[str, int, int, int]]) -> None: ...

    def planned_batches(
        self, source: str, partition: int, start: int, limit: int
    ) -> dict[int, int]: ...


InStore = Callable[..., Awaitable[Any]]  # runs a store call on the store's own thread


class StreamPipeline:
    def __init__(
        self,
        redis: Redis,
        stream: str,
        handler: BatchHandler,
        store: PlannedStore,
        in_store: InStore,
        stopping: asyncio.Event,
    ):
        self._redis = redis
        self._stream = stream
        self._handler = handler
        self._store = store
        self._in_store = in_store
        self._stopping = stopping
        self._metrics = handler.metrics  # the failures beside the handler's counts

    async def write(self, records: Sequence[Record], planned: bool = False) -> None:
        """Record the cut (unless it is recorded already), then write until it succeeds."""
        if not records:
            return
        if not planned:
            plan = (self._stream, PARTITION, records[0].offset, records[-1].offset)
            await self._retry(self._store.plan_batches, [plan])
        await self._retry(self._handler.handle, self._stream, PARTITION, records)

    async def _retry(self, call: Callable[..., Any], *args: Any) -> None:
        pause = 0.25
        while True:
            try:
                await self._in_store(call, *args)
                return
            except Exception as exc:  # the store's failure: retried, never skipped
                self._metrics.write_failures.inc()
                if self._stopping.is_set():
                    raise
                log.error(
                    "writing a batch of %s failed, retrying in %.1fs: %s", self._stream, pause, exc
                )
                await asyncio.sleep(pause)
                pause = min(MAX_RETRY_PAUSE, pause * 2)

    async def recover(self, count: int = 10_000) -> int:
        """Write and acknowledge the entries this consumer read but never acknowledged
        (a previous worker's), with the cuts recorded for them; the number recovered."""
        recovered, start = 0, "0"
        while True:
            reply: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]]
            reply = await self._redis.xreadgroup(  # type: ignore[assignment]
                GROUP, CONSUMER, {self._stream: start}, count=count
            )
            pending = [entry for _, entries in reply for entry in entries]
            if not pending:
                return recovered
            # an entry deleted since it was read comes back without fields: nothing to write
            records = [entry_record(entry_id, fields) for entry_id, fields in pending if fields]
            if records:
                plans = await self._in_store(
                    self._store.planned_batches,
                    self._stream,
                    PARTITION,
                    records[0].offset,
                    1000,
                )
                for batch, planned in cut(records, plans):
                    await self.write(batch, planned)
            await self._redis.xack(self._stream, GROUP, *[entry_id for entry_id, _ in pending])
            recovered += len(records)
            start = pending[-1][0].decode()


def cut(records: Sequence[Record], plans: Mapping[int, int]) -> list[tuple[Sequence[Record], bool]]:
    """``records`` as batches: the recorded cuts as recorded, the rest between them."""
    batches: list[tuple[Sequence[Record], bool]] = []
    i = 0
    while i < len(records):
        last = plans.get(records[i].offset)
        end = i + 1
        if last is not None:
            while end < len(records) and records[end].offset <= last:
                end += 1
            batches.append((records[i:end], True))
        else:
            while end < len(records) and records[end].offset not in plans:
                end += 1
            batches.append((records[i:end], False))
        i = end
    return batches


def build_broker(
    redis_url: str,
    pipeline: StreamPipeline,
    stream: str,
    *,
    max_records: int = 5000,
    polling_ms: int = 100,
) -> RedisBroker:
    # per-message access logs at DEBUG: at thousands of batches they would drown the log
    broker = RedisBroker(redis_url, log_level=logging.DEBUG)

    async def consume(body: Any, message: Annotated[Any, Context("message")]) -> None:
        raw = message.raw_message
        ids = raw["message_ids"]
        entries: Sequence[Mapping[bytes, bytes]] = (
            raw["data"] if isinstance(raw["data"], list) else [raw["data"]]
        )
        await pipeline.write(
            [entry_record(entry_id, fields) for entry_id, fields in zip(ids, entries, strict=True)]
        )

    main = StreamSub(
        stream,
        group=GROUP,
        consumer=CONSUMER,
        batch=True,
        max_records=max_records,
        polling_interval=polling_ms,
    )
    broker.subscriber(stream=main, ack_policy=AckPolicy.NACK_ON_ERROR)(consume)
    return broker


async def ensure_group(redis: Redis, stream: str) -> None:
    """Create the consumer group at the stream's start (and the stream, if need be).

    Left to the broker, the group would start at the stream's end and skip every decision
    appended before the worker first ran."""
    try:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def trim_acknowledged(redis: Redis, stream: str, interval: float = 5.0) -> None:
    """Remove entries older than anything still unacknowledged, for as long as it runs."""
    while True:
        await asyncio.sleep(interval)
        with contextlib.suppress(RedisError):
            await _trim_once(redis, stream)


async def _trim_once(redis: Redis, stream: str) -> None:
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
    await redis.xtrim(stream, minid=f"{ms}-{seq}", approximate=False)


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
