"""The decision event: its fields, its two wire encodings, and the names around them.

This module is the contract between the limiter (producer) and every consumer; it imports
nothing of theirs.  Consumers ignore unknown fields, so the schema may grow; a change that
would break a field's meaning bumps ``SCHEMA_VERSION`` and the topic's ``.vN`` suffix.

A decision travels one of two ways, and both encodings are defined here only:

- to Kafka, one JSON object per decision (``encode``/``decode``; ``PositionalEvent`` for a
  writer that encodes one per decision answered);
- on the embedded deployment's Valkey stream, one compact entry per check-script call
  (``EntryCheck``, ``EntryDecision``, ``decode_entry``), written in the same atomic call
  that decides the checks.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec

SCHEMA_VERSION = 1

DECISIONS_TOPIC = "ratewatch.decisions.v1"
DECISIONS_DLQ_TOPIC = "ratewatch.decisions.dlq"
# the one field of an entry of a Redis outbox stream (audit, alerts): the encoded event
OUTBOX_FIELD = b"e"
# a Redis stream's dead letters go to the stream of this name plus this suffix
# (``rw:events`` -> ``rw:events:dlq``), with the reason
DEAD_LETTER_SUFFIX = ":dlq"
# the Kafka header (value b"1") of a record sent again after a send in doubt: the consumer
# drops its event if the store holds that event id already
RESENT_HEADER = "ratewatch-resent"


class MalformedEvent(ValueError):
    """A message on a decision topic that is not a decision event; says why."""


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
    # the named policy the check named (``docs/policies.md``); then ``limit``/``window`` are
    # those of the policy's window that decided
    policy: str | None = None
    # the policy is in shadow mode: the caller was answered allowed whatever ``allowed``
    # says; ``allowed``/``reason`` are what the policy decided (a would-be denial)
    shadow: bool = False
    # the W3C trace id (32 hex digits) of the traced request that asked for the decision
    trace_id: str | None = None


# DecisionEvent is keyword-only (its version comes first, with a default), and a keyword
# call costs about 2.5 times a positional one.  A writer that encodes an event per decision
# answered builds this twin instead, passing DecisionEvent's fields in DecisionEvent's
# order: the same fields, hence the same JSON.  Its fields have no defaults, so a field
# added to DecisionEvent fails such a writer loudly rather than silently encoding a gap.
PositionalEvent = msgspec.defstruct(
    "PositionalEvent",
    [(field.name, field.type) for field in msgspec.structs.fields(DecisionEvent)],
    gc=False,
)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DecisionEvent)
# bound once: the hot loop that uses it pays no call of its own per event
encode_positional: Callable[[msgspec.Struct], bytes] = _encoder.encode


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


# The compact entry of the Valkey stream: fields ``ts`` (the decision time, epoch ms) and
# ``d``, a JSON array with one element per decision, an ``EntryDecision``.  The limiter
# encodes each check's ``EntryCheck`` (``encode_entry_check``); the check script
# (``limiter/lua/check.lua``) wraps it with the outcome and appends the entry.

ENTRY_TS = b"ts"
ENTRY_DECISIONS = b"d"


class EntryCheck(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What the limiter knows of a check before deciding it, position by position.
    ``window`` is in seconds; ``latency_us`` is the limiter's time before the store call
    (the round trip that writes the entry cannot be part of it).  Fields added later need
    defaults, so entries written by an older limiter still decode (an untraced check's
    ``trace_id`` is a ``null``)."""

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
    policy: str | None = None
    shadow: bool = False
    trace_id: str | None = None


class EntryDecision(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One element of an entry's ``d``: the check, then the outcome the check script
    appends in its own result order (the reason as its label, times in milliseconds)."""

    check: EntryCheck
    allowed: bool
    remaining: int
    reset_ms: int
    retry_ms: int
    reason: str
    # a policy's check of several windows: the limit and window (s) of the window that
    # decided (``check`` has the first window's)
    limit: int | None = None
    window: int | None = None


class EntryPayload(Protocol):
    """An entry as a consumer holds it: ``entry_offset`` and ``entry_value``."""

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes: ...


encode_entry_check: Callable[[EntryCheck], bytes] = _encoder.encode
_entry_decoder = msgspec.json.Decoder(list[EntryDecision])
# event ids of stream entries are derived, so that a re-read entry yields the same ids: the
# UUID version 5 of "<offset>/<index>" in this namespace (RFC 9562)
ENTRY_ID_NAMESPACE = uuid.UUID("6f1d2b8e-3c1a-4f43-9a57-0c4d7e2f9b10")
_ENTRY_ID_SEED = hashlib.sha1(ENTRY_ID_NAMESPACE.bytes, usedforsecurity=False)
# the variant's hex digit (RFC 9562's 10xx) for each digit the hash put there
_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def entry_event_ids(offset: int, count: int) -> list[str]:
    """The ids of an entry's ``count`` events: ``str(uuid.uuid5(namespace, f"{offset}/{i}"))``
    for each index, computed at a third of its cost (uuid5 builds and checks a UUID object
    per call; one decoded decision in two thirds of its decoding time went there)."""
    prefix = _ENTRY_ID_SEED.copy()
    prefix.update(b"%d/" % offset)
    ids = []
    for index in range(count):
        digest = prefix.copy()
        digest.update(b"%d" % index)
        hex_ = digest.hexdigest()
        variant = _VARIANT_DIGIT[hex_[16]]
        ids.append(f"{hex_[:8]}-{hex_[8:12]}-5{hex_[13:16]}-{variant}{hex_[17:20]}-{hex_[20:32]}")
    return ids


def entry_offset(entry_id: str | bytes) -> int:
    """The entry id ``<ms>-<seq>`` as one increasing integer."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return (int(ms) << 20) | int(seq)


def entry_value(fields: Mapping[bytes, bytes]) -> bytes:
    """The entry's fields as one payload, ``<ts> <d>``: what the batch handler decodes and
    a dead letter keeps.  A missing field makes a payload ``decode_entry`` rejects."""
    return fields.get(ENTRY_TS, b"") + b" " + fields.get(ENTRY_DECISIONS, b"")


_entry_counter = msgspec.json.Decoder(list[msgspec.Raw])


def entry_decisions(value: bytes) -> int:
    """How many decisions the payload of an entry (``entry_value``) holds, found without
    decoding them; 1 for one that is not an entry (the batch handler dead-letters it)."""
    try:
        return max(1, len(_entry_counter.decode(value.partition(b" ")[2])))
    except msgspec.DecodeError:
        return 1


def decode_entry(entry: EntryPayload, *, with_ids: bool = True) -> list[DecisionEvent]:
    """The decision events of one entry; MalformedEvent (never another error) if it is not
    one.  Each event's id derives from the entry's offset and its position in the entry;
    ``with_ids=False`` leaves the ids empty, for a reader that stores nothing (detection:
    the ids were a third of decoding a decision)."""
    ts_text, _, data = entry.value.partition(b" ")
    try:
        ts = int(ts_text)
        decisions = _entry_decoder.decode(data)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedEvent(f"stream entry at offset {entry.offset}: {exc}") from None
    events = []
    ids = entry_event_ids(entry.offset, len(decisions)) if with_ids else [""] * len(decisions)
    for event_id, decision in zip(ids, decisions, strict=True):
        check = decision.check
        events.append(
            DecisionEvent(
                event_id=event_id,
                ts=ts,
                tenant=check.tenant,
                key=check.key,
                algorithm=check.algorithm,
                limit=check.limit if decision.limit is None else decision.limit,
                window=check.window if decision.window is None else decision.window,
                cost=check.cost,
                allowed=decision.allowed,
                remaining=decision.remaining,
                reset_in=-(-decision.reset_ms // 1000),
                reason=decision.reason,
                ip=check.ip,
                route=check.route,
                user_agent=check.user_agent,
                user_id=check.user_id,
                latency_us=check.latency_us,
                instance=check.instance,
                segment=check.segment,
                policy=check.policy,
                shadow=check.shadow,
                trace_id=check.trace_id,
            )
        )
    return events
