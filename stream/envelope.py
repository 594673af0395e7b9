"""The envelope of the outbox events (audit, alert, incident) and the codec they share.

The events start with the same four fields (``v``, ``event_id``, ``ts``, ``tenant``), are
made where a change or a detector's action happens, travel as JSON through a Redis outbox
and a Kafka topic, and are stored in ClickHouse.  What can go wrong with the envelope is
the same for all, so it is checked here once: a name left empty where the event is made,
and, where it is read, bytes that are no such event or an envelope a table could not hold
(a newer schema version, an id that is no UUID, a time out of range) — the last would hold
up every event stored in the same batch.

Each event's own fields, kinds or actions, topic and schema version stay in its contract
module (``stream.audit``, ``stream.alerts``, ``stream.incidents``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from stream.events import MalformedEvent

_MAX_TS = 10_413_791_999_999  # 2299-12-31T23:59:59.999Z, the end of DateTime64(3)


class Envelope(msgspec.Struct, kw_only=True, frozen=True):
    """The fields every outbox event starts with, in this order on the wire.  ``v`` is the
    schema version (a subclass gives it its contract's default); ``ts`` epoch milliseconds."""

    v: int
    event_id: str
    ts: int
    tenant: str

    def describe(self) -> str:
        """How an error message names the event: its id, after its action or kind in a
        subclass."""
        return self.event_id


E = TypeVar("E", bound=Envelope)


def new_envelope(what: str, **names: str) -> tuple[str, int]:
    """A fresh event id and the time now (epoch ms) for a new ``what`` event; ValueError
    naming the first of ``names`` that is empty: an event that cannot be stored must fail
    where it is made, not in the drain."""
    for name, given in names.items():
        if not given:
            raise ValueError(f"an {what} event needs a non-empty {name}, not {given!r}")
    return str(uuid.uuid4()), time.time_ns() // 1_000_000


def envelope_problem(what: str, v: int, max_version: int, event_id: str, ts: int) -> str | None:
    """Why a ``what`` event with this envelope cannot be stored, or None: a schema version
    outside 1..max_version, an id that is no UUID, a ts out of range."""
    if not 1 <= v <= max_version:
        return f"{what} event schema version {v} is not 1..{max_version}"
    try:
        uuid.UUID(event_id)
    except ValueError:
        return f"{what} event_id {event_id!r} is not a UUID"
    if not 0 <= ts <= _MAX_TS:
        return f"{what} event ts {ts} is not epoch ms in 1970..2299"
    return None


class EnvelopeCodec(Generic[E]):
    """JSON of the ``event_type`` events of one contract.  ``what`` names them in errors
    (``audit``, ``alert``); ``version`` is the newest schema version this code reads;
    ``malformed`` the contract's MalformedEvent, raised for bytes that are not its event;
    ``problem`` a check of the contract's own fields, saying why an event that decoded
    could still not be stored (None when it can)."""

    def __init__(
        self,
        event_type: type[E],
        what: str,
        version: int,
        malformed: type[MalformedEvent],
        problem: Callable[[E], str | None] | None = None,
    ) -> None:
        self.what = what
        self._version = version
        self._malformed = malformed
        self._problem = problem
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(event_type)

    def encode(self, event: E) -> bytes:
        return self._encoder.encode(event)

    def decode(self, data: bytes) -> E:
        """The event in ``data``; the contract's MalformedEvent (never another error) if it
        is not one or could not be stored."""
        try:
            event = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self._malformed(str(exc)) from None
        problem = envelope_problem(self.what, event.v, self._version, event.event_id, event.ts)
        if problem is None and self._problem is not None:
            problem = self._problem(event)
        if problem is not None:
            raise self._malformed(problem)
        return event
