"""Replaying the spool in order, once the broker answers again.

A round *in doubt* was sent but not acknowledged in time, and is already in the spool.
Before replaying, the replayer waits for it to settle (acknowledged, or failed by the
producer's request timeout) and notes which of its records the broker did take: those are
skipped, so a broker that was only stalled does not receive them twice.

What else was sent and may have landed is *in doubt*: the rest of a round in doubt (failed
by the request timeout, perhaps written later all the same), every replay round until the
spool acknowledges it, and what an earlier run left in doubt.  The spool keeps their count
(``Spooler.mark_in_doubt``, from its head); replayed, they carry the ``ratewatch-resent``
header, and the consumer drops those whose event it already stored.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from limiter.sinks.events import Record, unpack
from limiter.sinks.producer import Producer, StreamUnavailable
from limiter.sinks.rounds import Round
from limiter.sinks.spooler import Spooler

ROUND_BYTES = 512 * 1024  # a replay round's most bytes read from the spool


class Replayer:
    def __init__(self, spooler: Spooler, producer: Producer, stall_timeout: float):
        self._spooler = spooler
        self._producer = producer
        self._stall = stall_timeout
        self.in_doubt: Round | None = None  # sent, not settled, already in the spool
        self._delivered: set[int] = set()  # spool positions (from its cursor) already sent

    async def settle(self) -> None:
        """Wait until the round in doubt is delivered or failed; note what it delivered."""
        round_ = self.in_doubt
        if round_ is not None:
            unsettled = round_.unsettled()
            if unsettled:
                await asyncio.wait(unsettled)
            self._delivered |= round_.delivered_positions()
            self.in_doubt = None

    async def replay(self) -> Literal["sent", "unflushed", "empty"]:
        """Send the next chunk of the spool.  "empty": nothing on disk and nothing pending,
        true until the caller awaits anything; "unflushed": only what the sender has yet
        to flush is left."""
        chunk = await self._spooler.read(ROUND_BYTES)
        if not chunk.records:
            if self._spooler.events == 0:
                self._delivered.clear()
                return "empty"
            return "unflushed"
        records: list[Record] = []
        positions: list[int] = []
        for position, payload in enumerate(chunk.records):
            if position not in self._delivered:
                records.append(unpack(payload))
                positions.append(position)
        if records:
            doubt = self._spooler.in_doubt  # positions before it were sent already
            resent = sum(1 for position in positions if position < doubt) if doubt else 0
            round_ = Round(records, positions, resent=resent)
            try:
                delivered = await self._producer.deliver(round_, self._stall)
            finally:  # sent: in doubt until the spool acknowledges it, even if this run ends
                if round_.handed:
                    self._spooler.mark_in_doubt(positions[-1] + 1)
            if not delivered:
                self.in_doubt = round_
                raise StreamUnavailable(self._producer.last_error or "replay not acknowledged")
        count = len(chunk.records)
        await self._spooler.ack(chunk.end, count)
        self._delivered = {p - count for p in self._delivered if p >= count}
        return "sent"
