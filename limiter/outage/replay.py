"""Spooled records into the decision stream, each exactly once.

One call of ``lua/outage_replay.lua`` appends a chunk of one run's records (one stream entry
each, the fields the check script writes) and moves that run's high-water mark in Redis in
the same atomic write; records at or below the mark are skipped.  So a limiter that dies,
or loses Redis's reply, after the entries were appended and before its spool acknowledged
them, replays the chunk again without appending anything twice.

The mark expires ``MARK_TTL`` after the run's last replay: it only matters while a record
of the run is still in a spool, which is seconds after Redis answers again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.outage.records import SpooledEntry
from limiter.scripts import register_script

MARK_TTL = 7 * 86400


class Appended(NamedTuple):
    entries: int  # appended by this call
    before: int  # the run's high-water mark before it: records at or below were skipped
    mark: int  # and after it


class StreamReplay:
    def __init__(self, redis: Redis, keyspace: Keyspace, mark_ttl: int = MARK_TTL):
        self._redis = redis
        self._stream = keyspace.events
        self._keyspace = keyspace
        self._mark_ttl = mark_ttl
        self._script = register_script(redis, "limiter", "outage_replay.lua")

    async def append(self, records: Sequence[SpooledEntry]) -> Appended:
        """Append ``records`` of one run, in increasing sequence; StoreUnavailable if Redis
        did not answer (whether they were appended is then up to the mark)."""
        if not records:
            return Appended(0, 0, 0)
        run = records[0].run
        args: list[int | bytes] = [self._mark_ttl]
        for record in records:
            if record.run != run:
                raise ValueError("one replay call appends the records of one run")
            args += (record.seq, record.ts_ms, record.decisions)
        keys = [self._stream, self._keyspace.replay_mark(run.hex())]
        try:
            added, before, mark = await self._script(keys, args)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"could not replay the outage spool: {exc!r}") from exc
        return Appended(int(added), int(before), int(mark))

    async def mark(self, run: bytes) -> int:
        """The run's high-water mark (0: nothing appended, or the mark expired)."""
        value = await self._redis.get(self._keyspace.replay_mark(run.hex()))
        return int(value or 0)
