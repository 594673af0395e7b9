"""From the limiter's ``Decision`` to the wire: the decision event, its id and its record.

A record is what the producer sends and the spool keeps: the Kafka key (tenant and key,
so that one key's events stay in one partition, in order), the encoded event and its
timestamp.  The spool stores records packed by ``pack``; ``unpack`` reverses it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from typing import NamedTuple

from limiter.algorithms import Algorithm, Reason, ceil_seconds
from limiter.emit import Decision
from stream.events import SCHEMA_VERSION, DecisionEvent, PositionalEvent, encode_positional

_HEAD = struct.Struct("<QI")  # timestamp (ms), key length
_ALGORITHMS = {algorithm: algorithm.value for algorithm in Algorithm}
_REASONS = {reason: reason.label for reason in Reason}
_COUNTER_MASK = (1 << 62) - 1
_VARIANT = 0b10 << 62


class Record(NamedTuple):
    key: bytes
    value: bytes
    ts_ms: int


class EventIds:
    """UUIDv7-shaped event ids, cheaper than ``uuid4()`` per decision.

    48 bits of epoch milliseconds, 12 random bits drawn once per generator, then (after
    the variant bits) a 62-bit counter that starts at a random value: one generator never
    repeats an id, two differ by their random bits and counters.  No syscall per id; all
    but the counter's low 32 bits is formatted once per millisecond.
    """

    def __init__(self) -> None:
        seed = int.from_bytes(os.urandom(10), "big")
        self._counter = seed & _COUNTER_MASK
        self._middle = f"-7{(seed >> 62) & 0xFFF:03x}-"
        self._ts = -1
        self._prefix = ""

    def next(self, ts_ms: int) -> str:
        self._counter = counter = (self._counter + 1) & _COUNTER_MASK
        low = counter & 0xFFFF_FFFF
        if ts_ms != self._ts or not low:
            t = f"{ts_ms & 0xFFFF_FFFF_FFFF:012x}"
            c = f"{(counter | _VARIANT) >> 32:08x}"
            self._ts, self._prefix = ts_ms, f"{t[:8]}-{t[8:]}{self._middle}{c[:4]}-{c[4:]}"
        return f"{self._prefix}{low:08x}"


def to_event(decision: Decision, event_id: str, instance: str) -> DecisionEvent:
    """The decision as the event contract describes it: windows and resets in seconds."""
    check, outcome = decision.check, decision.outcome
    return DecisionEvent(
        event_id=event_id,
        ts=decision.ts_ms,
        tenant=check.tenant,
        key=check.key,
        algorithm=_ALGORITHMS[check.algorithm],
        limit=check.limit,
        window=check.window_ms // 1000,
        cost=check.cost,
        allowed=outcome.allowed,
        remaining=outcome.remaining,
        reset_in=ceil_seconds(outcome.reset_ms),
        reason=_REASONS[outcome.reason],
        ip=check.ip,
        route=check.route,
        user_agent=check.user_agent,
        user_id=check.user_id,
        latency_us=decision.latency_us,
        instance=instance,
        segment=check.segment,
        policy=check.policy,
        shadow=check.shadow,
    )


def to_records(decisions: Iterable[Decision], ids: EventIds, instance: str) -> list[Record]:
    """``to_event``, encoded, for many decisions: this runs once per decision answered, so
    it builds the contract's ``PositionalEvent`` (DecisionEvent's fields in DecisionEvent's
    order, the same JSON) in one loop."""
    records: list[Record] = []
    append = records.append
    next_id, encode, event_of, new = ids.next, encode_positional, PositionalEvent, tuple.__new__
    algorithms, reasons, version = _ALGORITHMS, _REASONS, SCHEMA_VERSION
    for ts, check, outcome, latency_us in decisions:
        tenant, key = check.tenant, check.key
        event = event_of(
            version, next_id(ts), ts, tenant, key, algorithms[check.algorithm], check.limit,
            check.window_ms // 1000, check.cost, outcome.allowed, outcome.remaining,
            ceil_seconds(outcome.reset_ms), reasons[outcome.reason], check.ip, check.route,
            check.user_agent, check.user_id, latency_us, instance, check.segment,
            check.policy, check.shadow,
        )  # fmt: skip
        append(new(Record, (f"{tenant}:{key}".encode(), encode(event), ts)))
    return records


def pack(record: Record) -> bytes:
    return _HEAD.pack(record.ts_ms, len(record.key)) + record.key + record.value


def unpack(payload: bytes) -> Record:
    ts_ms, key_length = _HEAD.unpack_from(payload)
    start = _HEAD.size
    return Record(payload[start : start + key_length], payload[start + key_length :], ts_ms)
