"""The alert event: what the abuse detection did about a subject, and why.  One encoder,
one decoder, and the outbox that alerts are recorded in.

Every action of the detectors that an operator should hear about (a block made, a block
that shadow mode only recorded, a repeat offender's escalated block, a block the tenant's
cap refused) is one ``AlertEvent``, carrying the detector's explanation (top features with
their values and baselines, score, threshold, detector version).  The detectors record it
in the alert outbox, a Redis stream (``Keyspace.alerts``); the outbox drain
(``stream.outbox_drain``) stores it in ``ratewatch.alerts`` and, in the distributed
deployment, publishes it to ``ALERTS_TOPIC`` (keyed by tenant).  Like ``stream.events`` for
decisions, this module is the contract: it imports nothing of theirs.  Consumers ignore
unknown fields and unknown kinds, so both may grow; a change of a field's meaning bumps
``ALERT_SCHEMA_VERSION`` and the topic's ``.vN`` suffix.  The envelope (version, id, time,
tenant), its codec and the outbox writer are shared with the audit event
(``stream.envelope``, ``stream.outbox``).

Unlike the audit outbox, the alert outbox is appended with an approximate MAXLEN
(``ALERTS_MAXLEN``): the durable record of every block the detectors make, enforced or
shadowed, is its audit event, which is never trimmed; an alert is a notification.  The
drain trims what it acknowledged, but while no drain runs (a stopped ``ratewatch stream``)
an uncapped stream would grow without bound in the very Redis that enforces the limits;
the cap can cost only notifications left unread for ``ALERTS_MAXLEN`` alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from redis.asyncio import Redis

from stream.envelope import Envelope, EnvelopeCodec, new_envelope
from stream.events import OUTBOX_FIELD as FIELD
from stream.events import MalformedEvent
from stream.outbox import Outbox, OutboxUnavailable

__all__ = [
    "ALERTS_MAXLEN",
    "ALERTS_TOPIC",
    "ALERT_SCHEMA_VERSION",
    "BLOCK_CREATED",
    "BLOCK_ESCALATED",
    "BLOCK_SHADOWED",
    "BLOCK_SKIPPED_CAP",
    "CODEC",
    "FIELD",
    "INCIDENT_CLOSED",
    "INCIDENT_KINDS",
    "INCIDENT_OPENED",
    "INCIDENT_UPDATED",
    "KINDS",
    "AlertEvent",
    "AlertOutbox",
    "AlertUnavailable",
    "MalformedAlertEvent",
    "decode",
    "encode",
    "new_alert_event",
]

ALERT_SCHEMA_VERSION = 1
ALERTS_TOPIC = "ratewatch.alerts.v1"

# kinds: <object>.<past-tense verb or outcome>
BLOCK_CREATED = "block.created"  # a first offence, enforced
BLOCK_ESCALATED = "block.escalated"  # a repeat offence, enforced for longer
BLOCK_SHADOWED = "block.shadowed"  # shadow mode: recorded, not enforced
BLOCK_SKIPPED_CAP = "block.skipped_cap"  # the tenant's cap on dynamic blocks refused it
# a coordinated campaign's blocks, grouped (scope "incident", subject the incident's id):
# one alert when it opens, one per round that adds members, one when it ends
INCIDENT_OPENED = "incident.opened"
INCIDENT_UPDATED = "incident.updated"
INCIDENT_CLOSED = "incident.closed"
INCIDENT_KINDS = frozenset({INCIDENT_OPENED, INCIDENT_UPDATED, INCIDENT_CLOSED})
KINDS = frozenset(
    {BLOCK_CREATED, BLOCK_ESCALATED, BLOCK_SHADOWED, BLOCK_SKIPPED_CAP, *INCIDENT_KINDS}
)
MODES = ("enforce", "shadow")

ALERTS_MAXLEN = 100_000
# ttl_seconds and offence are stored as UInt32 (migration 0006)
_MAX_COUNT = 2**32 - 1


class MalformedAlertEvent(MalformedEvent):
    """Bytes in the alert outbox or on the alert topic that are not an alert event."""


class AlertUnavailable(OutboxUnavailable):
    """The outbox did not take the alert (Redis unreachable or refusing)."""


class AlertEvent(Envelope, kw_only=True, frozen=True):
    """One action of the detectors.  ``ts`` is epoch milliseconds; ``subject`` the blocked
    value of ``scope`` (``ip``, ``key``, ``user_id``; for ``incident.*`` kinds the scope is
    ``incident``, the subject the incident's id and the explanation the incident);
    ``block_id`` the block made (None when
    none was); ``mode`` ``enforce`` | ``shadow``; ``offence`` the subject's repeat count
    (1 for a first offence, None when no offence was counted); ``explanation`` the
    verdict's (``detectors.verdict.Verdict.explanation``)."""

    v: int = ALERT_SCHEMA_VERSION
    kind: str
    scope: str
    subject: str
    block_id: str | None = None
    mode: str = "enforce"
    ttl_seconds: int | None = None
    offence: int | None = None
    explanation: dict[str, Any] = msgspec.field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.kind} {self.event_id}"


def _stored_counts(event: AlertEvent) -> str | None:
    return _count_problem(event.ttl_seconds, event.offence)


CODEC = EnvelopeCodec(
    AlertEvent, "alert", ALERT_SCHEMA_VERSION, MalformedAlertEvent, _stored_counts
)
_explanation_encoder = msgspec.json.Encoder()


def new_alert_event(
    tenant: str,
    kind: str,
    scope: str,
    subject: str,
    *,
    explanation: Mapping[str, Any],
    block_id: str | None = None,
    mode: str = "enforce",
    ttl_seconds: int | None = None,
    offence: int | None = None,
) -> AlertEvent:
    """An event with a fresh id, stamped now.  ValueError naming the value if a name is
    empty, ``kind`` or ``mode`` is unknown, or the explanation is not JSON: an alert that
    cannot be delivered must fail where it is made, not in delivery."""
    event_id, ts = new_envelope("alert", tenant=tenant, scope=scope, subject=subject)
    if kind not in KINDS:
        raise ValueError(f"alert kind {kind!r} is not one of {', '.join(sorted(KINDS))}")
    if mode not in MODES:
        raise ValueError(f"alert mode {mode!r} is not one of {', '.join(MODES)}")
    problem = _count_problem(ttl_seconds, offence)
    if problem is not None:
        raise ValueError(problem)
    details = dict(explanation)
    try:
        _explanation_encoder.encode(details)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(f"alert explanation is not JSON: {exc}") from None
    return AlertEvent(
        event_id=event_id,
        ts=ts,
        tenant=tenant,
        kind=kind,
        scope=scope,
        subject=subject,
        block_id=block_id,
        mode=mode,
        ttl_seconds=ttl_seconds,
        offence=offence,
        explanation=details,
    )


def encode(event: AlertEvent) -> bytes:
    return CODEC.encode(event)


def decode(data: bytes) -> AlertEvent:
    """The event in ``data``; MalformedAlertEvent (never another error) if it is not one,
    or if a store of alerts could not hold it (an id that is no UUID, a ts out of range, a
    count beyond its column)."""
    return CODEC.decode(data)


def _count_problem(ttl_seconds: int | None, offence: int | None) -> str | None:
    """What makes ``ttl_seconds`` or ``offence`` unstorable (UInt32 columns), if anything."""
    for name, count in (("ttl_seconds", ttl_seconds), ("offence", offence)):
        if count is not None and not 0 <= count <= _MAX_COUNT:
            return f"alert {name} {count!r} is not within 0-{_MAX_COUNT}"
    return None


class AlertOutbox(Outbox[AlertEvent]):
    """Records alert events in the Redis stream ``stream`` (``Keyspace.alerts``), capped at
    about ``maxlen`` entries (None: no cap); ``record`` raises AlertUnavailable."""

    def __init__(self, redis: Redis, stream: str, *, maxlen: int | None = ALERTS_MAXLEN):
        super().__init__(redis, stream, CODEC, AlertUnavailable, maxlen=maxlen)
