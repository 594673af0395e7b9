"""Decision events from the entries the check script appends to the Redis event stream.

One entry holds the decisions of one script call (see ``limiter/store/redis.py``): field
``ts`` (epoch ms) and field ``d`` (a JSON array, one element per decision).  As a
``Record`` for the batch handler, an entry's offset is its id as one increasing integer and
its value is ``<ts> <d>``.  Event ids are derived from the offset and the position in the
entry, so a re-read entry yields the same ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import msgspec

from stream.events import DecisionEvent, MalformedEvent
from stream.handlers import Record


class _Request(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The check part of one decision array, position by position.  Fields added later
    have defaults, so entries written by an older limiter still decode."""

    tenant: str
    key: str
    algorithm: str
    limit: int
    window: int
    cost: int
    ip: str | None
    route: str | None
    user_agent: str | None
    user_id: str | None
    latency_us: int
    instance: str
    segment: str | None = None


_decoder = msgspec.json.Decoder(list[tuple[_Request, bool, int, int, int, str]])
_NAMESPACE = uuid.UUID("6f1d2b8e-3c1a-4f43-9a57-0c4d7e2f9b10")


def entry_offset(entry_id: str | bytes) -> int:
    """The entry id ``<ms>-<seq>`` as one increasing integer."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return (int(ms) << 20) | int(seq)


def entry_record(entry_id: str | bytes, fields: Mapping[bytes, bytes]) -> Record:
    """The entry as a record; a missing field makes a record the decoder rejects."""
    return Record(entry_offset(entry_id), fields.get(b"ts", b"") + b" " + fields.get(b"d", b""))


def decode_entry(record: Record) -> list[DecisionEvent]:
    """The decision events of one entry's record; MalformedEvent if it is not one."""
    ts_text, _, data = record.value.partition(b" ")
    try:
        ts = int(ts_text)
        decisions = _decoder.decode(data)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedEvent(f"stream entry at offset {record.offset}: {exc}") from None
    events = []
    for index, (request, allowed, remaining, reset_ms, _retry_ms, reason) in enumerate(decisions):
        events.append(
            DecisionEvent(
                event_id=str(uuid.uuid5(_NAMESPACE, f"{record.offset}/{index}")),
                ts=ts,
                tenant=request.tenant,
                key=request.key,
                algorithm=request.algorithm,
                limit=request.limit,
                window=request.window,
                cost=request.cost,
                allowed=allowed,
                remaining=remaining,
                reset_in=-(-reset_ms // 1000),
                reason=reason,
                ip=request.ip,
                route=request.route,
                user_agent=request.user_agent,
                user_id=request.user_id,
                latency_us=request.latency_us,
                instance=request.instance,
                segment=request.segment,
            )
        )
    return events
