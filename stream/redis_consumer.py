"""The embedded pipeline's transport: the Valkey event stream through FastStream's Redis
broker, with a consumer group, acknowledgements and recovery.

- the main subscriber reads new entries in batches (size and time bounded) and acknowledges
  a batch only after the store accepted it; a failed batch stays pending;
- a second subscriber claims entries pending for longer than ``claim_after_ms`` (a batch
  that failed, or one a killed worker had read) and hands them to the same handler; the
  handler's offset ledger makes that replay write nothing twice;
- a trimmer removes entries every reader has acknowledged, so the stream does not grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any

from faststream import AckPolicy, Context
from faststream.redis import RedisBroker, StreamSub
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from stream.handlers import Record
from stream.redis_entries import entry_record

log = logging.getLogger("ratewatch.stream")

GROUP = "ratewatch-pipeline"
# the handler gets the stream name and the batch's records, in stream order
Handle = Callable[[str, Sequence[Record]], Awaitable[object]]


def build_broker(
    redis_url: str,
    stream: str,
    handle: Handle,
    *,
    consumer: str = "pipeline",
    max_records: int = 5000,
    polling_ms: int = 100,
    claim_after_ms: int = 5_000,
) -> RedisBroker:
    # per-message access logs at DEBUG: at thousands of batches they would drown the log
    broker = RedisBroker(redis_url, log_level=logging.DEBUG)

    async def consume(body: Any, message: Annotated[Any, Context("message")]) -> None:
        raw = message.raw_message
        ids = raw["message_ids"]
        entries: Sequence[Mapping[bytes, bytes]] = (
            raw["data"] if isinstance(raw["data"], list) else [raw["data"]]
        )
        records = [
            entry_record(entry_id, fields) for entry_id, fields in zip(ids, entries, strict=True)
        ]
        await handle(stream, records)

    main = StreamSub(
        stream,
        group=GROUP,
        consumer=consumer,
        batch=True,
        max_records=max_records,
        polling_interval=polling_ms,
    )
    claimer = StreamSub(
        stream,
        group=GROUP,
        consumer=consumer,
        batch=True,
        max_records=max_records,
        polling_interval=1000,
        min_idle_time=claim_after_ms,
    )
    broker.subscriber(stream=main, ack_policy=AckPolicy.NACK_ON_ERROR)(consume)
    broker.subscriber(stream=claimer, ack_policy=AckPolicy.NACK_ON_ERROR)(consume)
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
