"""The incident event: one change of an incident (the blocks of one coordinated campaign,
grouped), as it was after the change.  One encoder, one decoder, and the outbox incident
changes are recorded in.

The detectors keep the incident itself in Redis (``detectors/incident_store.py``, for
``GET /v1/incidents``) and, at every change they store, record an ``IncidentEvent`` in the
incident outbox, a Redis stream (``Keyspace.incident_log``).  The outbox drain
(``stream.outbox_drain``) stores it in ``ratewatch.incidents`` (one row per change, for
analysts' SQL over incident history) and, in the distributed deployment, publishes it to
``INCIDENTS_TOPIC`` (keyed by tenant).  Like ``stream.alerts``, this module is the contract:
it imports nothing of theirs; consumers ignore unknown fields and kinds, and a change of a
field's meaning bumps ``INCIDENT_SCHEMA_VERSION`` and the topic's ``.vN`` suffix.

Unlike the alert outbox, this one is never capped: its events are the incidents' history
(an alert is a notification; the audit log records each block), and there are few of them,
one per detection round that changes an incident.  The drain trims what it stored.

Times in the event are epoch milliseconds.  ``members`` is the incident's member list as
stored (at most the store's cap; ``counts["members"]`` counts them all), ``joined`` the
addresses this change added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from stream.envelope import Envelope, EnvelopeCodec, new_envelope
from stream.events import OUTBOX_FIELD as FIELD
from stream.events import MalformedEvent
from stream.outbox import Outbox, OutboxUnavailable

__all__ = [
    "CODEC",
    "FIELD",
    "INCIDENTS_TOPIC",
    "INCIDENT_CLOSED",
    "INCIDENT_OPENED",
    "INCIDENT_SCHEMA_VERSION",
    "INCIDENT_UPDATED",
    "KINDS",
    "IncidentEvent",
    "IncidentMember",
    "IncidentOutbox",
    "IncidentUnavailable",
    "MalformedIncidentEvent",
    "decode",
    "encode",
    "new_incident_event",
]

INCIDENT_SCHEMA_VERSION = 1
INCIDENTS_TOPIC = "ratewatch.incidents.v1"

INCIDENT_OPENED = "incident.opened"
INCIDENT_UPDATED = "incident.updated"  # members joined, or its description changed
INCIDENT_CLOSED = "incident.closed"
KINDS = frozenset({INCIDENT_OPENED, INCIDENT_UPDATED, INCIDENT_CLOSED})
STATES = ("open", "closed")
_MAX_TS = 10_413_791_999_999  # the end of DateTime64(3), as the envelope's
_MAX_COUNT = 2**32 - 1  # counts are stored as UInt32


class MalformedIncidentEvent(MalformedEvent):
    """Bytes in the incident outbox or on the incident topic that are not an incident event."""


class IncidentUnavailable(OutboxUnavailable):
    """The outbox did not take the event (Redis unreachable or refusing)."""


class IncidentMember(msgspec.Struct, frozen=True):
    """A source of the campaign: its address, what the detectors did about it (``blocked``,
    ``shadowed``, ``already_blocked``, …), when it joined (epoch ms) and its block."""

    ip: str
    outcome: str
    joined_at: int
    block_id: str | None = None


class IncidentEvent(Envelope, kw_only=True, frozen=True):
    """One change of the incident ``incident_id`` (``kind``) and the incident after it."""

    v: int = INCIDENT_SCHEMA_VERSION
    kind: str
    incident_id: str
    family: str
    state: str
    mode: str
    detector: str = ""
    detector_version: str = ""
    opened_at: int
    first_seen: int
    last_seen: int
    closed_at: int | None = None
    reasons: list[str] = msgspec.field(default_factory=list)
    evidence: dict[str, Any] = msgspec.field(default_factory=dict)
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    members: list[IncidentMember] = msgspec.field(default_factory=list)
    joined: list[str] = msgspec.field(default_factory=list)

    def describe(self) -> str:
        return f"{self.kind} {self.event_id} of {self.incident_id}"


def _problem(event: IncidentEvent) -> str | None:
    """What makes ``event`` unstorable, if anything."""
    if event.kind not in KINDS:
        return f"incident kind {event.kind!r} is not one of {', '.join(sorted(KINDS))}"
    if event.state not in STATES:
        return f"incident state {event.state!r} is not one of {', '.join(STATES)}"
    if not event.incident_id:
        return "an incident event needs a non-empty incident_id"
    times: list[tuple[str, int | None]] = [
        ("opened_at", event.opened_at),
        ("first_seen", event.first_seen),
    ]
    times += [("last_seen", event.last_seen), ("closed_at", event.closed_at)]
    times += [(f"members[{n}].joined_at", m.joined_at) for n, m in enumerate(event.members)]
    for name, ms in times:
        if ms is not None and not 0 <= ms <= _MAX_TS:
            return f"incident {name} {ms} is not epoch ms in 1970..2299"
    for name, count in event.counts.items():
        if not 0 <= count <= _MAX_COUNT:
            return f"incident count {name}={count} is not within 0-{_MAX_COUNT}"
    return None


CODEC = EnvelopeCodec(
    IncidentEvent, "incident", INCIDENT_SCHEMA_VERSION, MalformedIncidentEvent, _problem
)
_json = msgspec.json.Encoder()


def new_incident_event(
    tenant: str,
    kind: str,
    *,
    incident_id: str,
    family: str,
    state: str,
    mode: str,
    opened_at: int,
    first_seen: int,
    last_seen: int,
    closed_at: int | None = None,
    detector: str = "",
    detector_version: str = "",
    reasons: Sequence[str] = (),
    evidence: dict[str, Any] | None = None,
    counts: dict[str, int] | None = None,
    members: Sequence[IncidentMember] = (),
    joined: Sequence[str] = (),
) -> IncidentEvent:
    """An event with a fresh id, stamped now.  ValueError naming the value if a name is
    empty, the kind or state is unknown, a time or count is out of range or the evidence is
    not JSON: an event that cannot be stored must fail where it is made, not in the drain."""
    event_id, ts = new_envelope("incident", tenant=tenant, incident_id=incident_id)
    event = IncidentEvent(
        event_id=event_id,
        ts=ts,
        tenant=tenant,
        kind=kind,
        incident_id=incident_id,
        family=family,
        state=state,
        mode=mode,
        detector=detector,
        detector_version=detector_version,
        opened_at=opened_at,
        first_seen=first_seen,
        last_seen=last_seen,
        closed_at=closed_at,
        reasons=list(reasons),
        evidence=dict(evidence or {}),
        counts=dict(counts or {}),
        members=list(members),
        joined=list(joined),
    )
    problem = _problem(event)
    if problem is not None:
        raise ValueError(problem)
    try:
        _json.encode(event.evidence)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(f"incident evidence is not JSON: {exc}") from None
    return event


def encode(event: IncidentEvent) -> bytes:
    return CODEC.encode(event)


def decode(data: bytes) -> IncidentEvent:
    """The event in ``data``; MalformedIncidentEvent (never another error) if it is not one
    or a store of incidents could not hold it."""
    return CODEC.decode(data)


class IncidentOutbox(Outbox[IncidentEvent]):
    """Records incident events in the Redis stream ``stream`` (``Keyspace.incident_log``),
    never capped; ``record`` raises IncidentUnavailable."""

    def __init__(self, redis: Redis, stream: str) -> None:
        super().__init__(redis, stream, CODEC, IncidentUnavailable)
