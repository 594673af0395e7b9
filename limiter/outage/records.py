"""A spooled record: the decisions of one failed-over call, as one stream entry to be.

A record holds what the check script would have written (the decision time and the entry's
``d``, ``stream.events.EntryDecision`` encoded) behind the identity of the limiter run that
spooled it and its sequence number in that run.  The pair is what makes the replay exactly
once: Redis keeps the highest sequence appended per run (``replay.py``).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from limiter.algorithms import Algorithm, Outcome, Reason, window_of
from limiter.store.base import Check
from stream.events import EntryCheck, EntryDecision

_HEAD = struct.Struct("<16sQQI")  # run id, sequence, decision time (ms), decisions
_ALGORITHMS = {algorithm: algorithm.value for algorithm in Algorithm}
_REASONS = {reason: reason.label for reason in Reason}
_encoder = msgspec.json.Encoder()


class SpooledEntry(NamedTuple):
    run: bytes  # 16 bytes, this run's identity
    seq: int  # from 1, increasing in spool order within the run
    ts_ms: int
    decisions_count: int  # how many decisions ``decisions`` holds
    decisions: bytes  # the entry's ``d``

    @property
    def run_id(self) -> str:
        return self.run.hex()


def new_run() -> bytes:
    """The identity of one limiter run's records: random, so runs never share a mark."""
    return os.urandom(16)


def entry_decisions(
    checks: Sequence[Check], outcomes: Sequence[Outcome], instance: str, now_ns: int
) -> bytes:
    """The entry's ``d`` for decisions the failure policy answered: the same array of
    ``EntryDecision`` the check script writes, the latency measured until ``now_ns``
    (``time.perf_counter_ns``)."""
    decisions = []
    for check, outcome in zip(checks, outcomes, strict=True):
        latency_us = (now_ns - check.started_ns) // 1000 if check.started_ns else 0
        entry_check = EntryCheck(
            check.tenant, check.key, _ALGORITHMS[check.algorithm], check.limit,
            check.window_ms // 1000, check.cost, check.ip, check.route, check.user_agent,
            check.user_id, latency_us, instance, check.segment, check.policy, check.shadow,
        )  # fmt: skip
        decided: tuple[int | None, int | None] = (None, None)
        if len(check.windows) > 1:  # a policy's check: the window that decided
            limit, window_ms = check.windows[window_of(outcome)]
            decided = (limit, window_ms // 1000)
        decisions.append(
            EntryDecision(
                entry_check,
                outcome.allowed,
                outcome.remaining,
                outcome.reset_ms,
                outcome.retry_ms,
                _REASONS[outcome.reason],
                *decided,
            )
        )
    return _encoder.encode(decisions)


def encode(run: bytes, seq: int, ts_ms: int, count: int, decisions: bytes) -> bytes:
    return _HEAD.pack(run, seq, ts_ms, count) + decisions


def decode(payload: bytes) -> SpooledEntry:
    """The record in ``payload`` (the spool checks its CRC: a record it returns is whole)."""
    run, seq, ts_ms, count = _HEAD.unpack_from(payload)
    return SpooledEntry(run, seq, ts_ms, count, payload[_HEAD.size :])


def now_ms() -> int:
    return time.time_ns() // 1_000_000
