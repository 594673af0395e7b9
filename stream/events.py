"""The decision event: schema, version, topic names, one encoder and one decoder.

This module is the contract between the limiter (producer) and every consumer; it imports
nothing of theirs.  Consumers ignore unknown fields, so the schema may grow; a change that
would break a field's meaning bumps ``SCHEMA_VERSION`` and the topic's ``.vN`` suffix.
"""

from __future__ import annotations

import uuid

import msgspec

SCHEMA_VERSION = 1

DECISIONS_TOPIC = "ratewatch.decisions.v1"
DECISIONS_DLQ_TOPIC = "ratewatch.decisions.dlq"
AUDIT_TOPIC = "ratewatch.audit.v1"
ALERTS_TOPIC = "ratewatch.alerts.v1"
# the one field of an entry of a Redis outbox stream (audit, alerts): the encoded event
OUTBOX_FIELD = b"e"


class MalformedEvent(ValueError):
    """A message on a decision topic that is not a decision event; says why."""


_MAX_TS = 10_413_791_999_999  # 2299-12-31T23:59:59.999Z


def envelope_problem(what: str, v: int, max_version: int, event_id: str, ts: int) -> str | None:
    """Why an audit or alert event (``what``) with this envelope cannot be stored, or None:
    a schema version outside 1..max_version, an id that is no UUID, a ts out of range."""
    if not 1 <= v <= max_version:
        return f"{what} event schema version {v} is not 1..{max_version}"
    try:
        uuid.UUID(event_id)
    except ValueError:
        return f"{what} event_id {event_id!r} is not a UUID"
    if not 0 <= ts <= _MAX_TS:
        return f"{what} event ts {ts} is not epoch ms in 1970..2299"
    return None


class DecisionEvent(msgspec.Struct, kw_only=True, frozen=True):
    """One decision of the limiter.  ``ts`` is epoch milliseconds; ``window`` and
    ``reset_in`` are seconds; ``latency_us`` is the limiter's time to answer."""

    v: int = SCHEMA_VERSION
    event_id: str
    ts: int
    tenant: str
    key: str
    algorithm: str
    limit: int
    window: int
    cost: int
    allowed: bool
    remaining: int
    reset_in: int
    reason: str
    ip: str | None = None
    route: str | None = None
    user_agent: str | None = None
    user_id: str | None = None
    latency_us: int = 0
    instance: str = ""
    segment: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DecisionEvent)


def encode(event: DecisionEvent) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> DecisionEvent:
    """The event in ``data``; MalformedEvent (never another error) if it is not one."""
    try:
        event = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedEvent(str(exc)) from None
    if event.v > SCHEMA_VERSION:
        raise MalformedEvent(f"event schema version {event.v} is newer than {SCHEMA_VERSION}")
    return event
