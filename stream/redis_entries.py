"""Decision events from the entries the check script appends to the Redis event stream.

One entry holds the decisions of one script call (see ``limiter/store/redis.py``).  Event
ids are derived from the entry id and the position in it, so a re-read entry yields the
same ids.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from stream.events import DecisionEvent, MalformedEvent

# the entry's decision arrays, position by position
_Fields = tuple[
    tuple[str, str, str, int, int, int, str | None, str | None, str | None, str | None, int, str],
    bool,
    int,
    int,
    int,
    str,
]
_decoder = msgspec.json.Decoder(list[_Fields])
_NAMESPACE = uuid.UUID("6f1d2b8e-3c1a-4f43-9a57-0c4d7e2f9b10")


def entry_offset(entry_id: str) -> int:
    """The entry id ``<ms>-<seq>`` as one increasing integer (for offset bookkeeping)."""
    ms, _, seq = entry_id.partition("-")
    return (int(ms) << 20) | int(seq)


def events_from_entry(entry_id: str, fields: dict[Any, Any]) -> list[DecisionEvent]:
    """The decision events of one stream entry; MalformedEvent if it is not one."""
    try:
        ts = int(_text(fields[b"ts"] if b"ts" in fields else fields["ts"]))
        raw = fields[b"d"] if b"d" in fields else fields["d"]
        decisions = _decoder.decode(raw)
    except (KeyError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedEvent(f"stream entry {entry_id}: {exc}") from None
    events = []
    for index, (request, allowed, remaining, reset_ms, _retry_ms, reason) in enumerate(decisions):
        (tenant, key, algorithm, limit, window, cost, ip, route, user_agent, user_id,
         latency_us, instance) = request  # fmt: skip
        events.append(
            DecisionEvent(
                event_id=str(uuid.uuid5(_NAMESPACE, f"{entry_id}/{index}")),
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
