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

# the entry's decision arrays, position by position
_Request = tuple[
    str, str, str, int, int, int, str | None, str | None, str | None, str | None, int, str
]
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
        (tenant, key, algorithm, limit, window, cost, ip, route, user_agent, user_id,
         latency_us, instance) = request  # fmt: skip
        events.append(
            DecisionEvent(
                event_id=str(uuid.uuid5(_NAMESPACE, f"{record.offset}/{index}")),
                ts=ts,
                tenant=tenant,
                key=key,
                algorithm=algorithm,
                limit=limit,
                window=window,
                cost=cost,
                allowed=allowed,
                remaining=remaining,
                reset_in=-(-reset_ms // 1000),
                reason=reason,
                ip=ip,
                route=route,
                user_agent=user_agent,
                user_id=user_id,
                latency_us=latency_us,
                instance=instance,
            )
        )
    return events
