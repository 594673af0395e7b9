"""An outbox's drain (``stream.outbox_drain``) driven by a test, and what it left behind:
the drain stepped batch by batch, a chDB writer as its ``write``, a stream's entries, a
group's pending count, and a tenant's rows of an event table in the order they came."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from clickhouse_connect.driver.client import Client
from redis.asyncio import Redis

from stream.outbox_drain import OutboxDrain

E = TypeVar("E")
E_contra = TypeVar("E_contra", contravariant=True)


class EventWriter(Protocol[E_contra]):
    """An event table's writer (``analytics.event_log.EventLogWriter``)."""

    def write(self, events: Sequence[E_contra], dedup_token: str) -> None: ...


async def drain_until(
    drain: OutboxDrain[Any], done: Callable[[], bool], within: float = 20
) -> None:
    """Step ``drain`` batch by batch until ``done`` holds."""
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s draining ({drain.stats})")
        await drain.drain_once()


def written_by(writer: EventWriter[E]) -> Callable[[Sequence[E], str], Awaitable[None]]:
    """``writer`` as a drain's ``write``, run on the test's thread (which owns its chDB
    client)."""

    async def write(events: Sequence[E], token: str) -> None:
        writer.write(events, token)

    return write


async def stream_fields(redis: Redis, key: str) -> list[dict[bytes, bytes]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]]
    entries = await redis.xrange(key)  # type: ignore[assignment]
    return [fields for _, fields in entries]


async def pending_count(redis: Redis, stream: str, group: str) -> int:
    """How many entries of ``stream`` ``group`` read and did not acknowledge."""
    summary = await redis.xpending(stream, group)
    return int(summary["pending"])


def tenant_rows(
    client: Client, table: str, columns: str, tenant: str, final: bool = True
) -> list[dict[str, Any]]:
    """``columns`` of ``tenant``'s rows in the event ``table`` (folded unless not
    ``final``), in the order the events came: by time, then id."""
    sql = (
        f"SELECT {columns} FROM {table} {'FINAL' if final else ''}"
        " WHERE tenant = {tenant:String} ORDER BY ts, event_id"
    )
    return list(client.query(sql, parameters={"tenant": tenant}).named_results())


def in_stored_order(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` in the order ``tenant_rows`` reads them."""
    return sorted(rows, key=lambda row: (row["ts"], row["event_id"]))
