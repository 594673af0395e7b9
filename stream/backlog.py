"""The backlog of a Redis stream read by consumer groups: what it holds and how far behind
its slowest reader is.

The embedded decision stream (``rw:events``) keeps every decision the limiter answered until
each of its groups (the pipeline worker's, the detection's) has acknowledged it; only then
does ``stream.consumer_group.trim_once`` remove it.  So while a reader is stopped, slow or
failing, the stream grows in Valkey's memory; nothing in it is dropped or refused, since a
decision answered is a decision counted.  ``read_backlog`` measures it, for
``/health/detailed`` (degraded past its bounds) and ``/metrics``: a few commands, none of them
walking the stream.  ``BacklogReport`` is what the limiter shows of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("ratewatch.stream")

READ_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class GroupBacklog:
    """What one group has not acknowledged: entries delivered and not acknowledged plus
    entries not yet read, and the age of the oldest of them (None: nothing)."""

    unacknowledged: int
    oldest_age_seconds: float | None


@dataclass(frozen=True, slots=True)
class Backlog:
    """``entries`` and ``memory_bytes`` are what the stream holds now (acknowledged entries
    stay until the next trim, a few seconds), ``first_age_seconds`` the age of its first
    entry; ``groups`` what each reader is behind."""

    entries: int
    memory_bytes: int
    first_age_seconds: float | None
    groups: Mapping[str, GroupBacklog]

    @property
    def unacknowledged(self) -> int:
        """Entries the slowest group has not acknowledged: all of them before any group
        exists (the pipeline's reads the stream from its start)."""
        if not self.groups:
            return self.entries
        return max(group.unacknowledged for group in self.groups.values())

    @property
    def oldest_age_seconds(self) -> float | None:
        """Age of the oldest entry some group has not acknowledged."""
        if not self.groups:
            return self.first_age_seconds
        ages = [g.oldest_age_seconds for g in self.groups.values()]
        return max((age for age in ages if age is not None), default=None)


async def read_backlog(redis: Redis, stream: str) -> Backlog:
    """The backlog of ``stream`` now; a missing stream has none.  Ages are by the Redis
    server's clock, which stamped the entries' ids."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(stream)
        # every node counted (a sample extrapolates from a few nodes, several times off
        # when batches of a thousand decisions sit beside single ones): under a millisecond
        # for 300,000 entries
        pipe.memory_usage(stream, samples=0)
        pipe.time()
        pipe.xrange(stream, count=1)
        entries, memory, (seconds, micros), first = await pipe.execute()
    if memory is None:  # no such stream
        return Backlog(0, 0, None, {})
    now_ms: int = seconds * 1000 + micros // 1000

    def age(entry_id: bytes) -> float:
        return max(0, now_ms - _milliseconds(entry_id)) / 1000

    groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    async with redis.pipeline(transaction=False) as pipe:
        for group in groups:
            pipe.xpending(stream, group["name"])
            # the first entry the group has not read yet ("(" excludes the id itself)
            pipe.xrange(stream, min=f"({_text(group['last-delivered-id'])}", count=1)
        answers = await pipe.execute()
    backlogs = {}
    for i, group in enumerate(groups):
        pending, unread = answers[2 * i], answers[2 * i + 1]
        lag = group.get("lag")
        if lag is None:  # Redis cannot tell after deletions inside the stream: at most all
            lag = entries if unread else 0
        oldest = pending["min"] if pending["pending"] else (unread[0][0] if unread else None)
        backlogs[_text(group["name"])] = GroupBacklog(
            pending["pending"] + lag, None if oldest is None else age(oldest)
        )
    return Backlog(entries, memory, age(first[0][0]) if first else None, backlogs)


class BacklogReport:
    """The backlog of ``stream`` for the limiter's ``/health/detailed`` and ``/metrics``,
    read from Redis when asked (within ``timeout``).  Past ``max_bytes`` of the stream in
    Redis's memory, or with an entry unacknowledged for more than ``max_age`` seconds, its
    status is ``behind`` and the service's ``degraded``: its readers are stopped or slower
    than the checks, and the stream grows until they catch up."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        max_bytes: int,
        max_age: float,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        if max_bytes < 1 or not max_age > 0:
            raise ValueError(f"backlog bounds {max_bytes!r} bytes, {max_age!r}s must be positive")
        self._redis = redis
        self._stream = stream
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._timeout = timeout
        self._behind = False

    def behind(self, backlog: Backlog) -> bool:
        """Whether ``backlog`` is past a bound."""
        age = backlog.oldest_age_seconds
        return backlog.memory_bytes > self._max_bytes or (age is not None and age > self._max_age)

    async def read(self) -> Backlog:
        """The backlog now; RedisError or TimeoutError if Redis did not tell in time."""
        async with asyncio.timeout(self._timeout):
            backlog = await read_backlog(self._redis, self._stream)
        behind = self.behind(backlog)
        if behind != self._behind:  # said once per crossing, not at every scrape
            self._behind = behind
            if behind:
                log.warning(
                    "the decision stream %s is behind: %d bytes (bound %d), %d entries not "
                    "stored, the oldest %.0fs old (bound %.0fs); nothing is dropped",
                    self._stream,
                    backlog.memory_bytes,
                    self._max_bytes,
                    backlog.unacknowledged,
                    backlog.oldest_age_seconds or 0,
                    self._max_age,
                )
            else:
                log.warning("the decision stream %s is back within its bounds", self._stream)
        return backlog

    async def status(self) -> dict[str, object]:
        """The backlog as ``/health/detailed`` shows it: ``status`` is ``up``, ``behind``
        (past the bound) or ``unknown`` (Redis did not tell)."""
        try:
            backlog = await self.read()
        except (RedisError, TimeoutError) as exc:
            return {"status": "unknown", "stream": self._stream, "error": str(exc) or "timeout"}
        return {
            "status": "behind" if self.behind(backlog) else "up",
            "stream": self._stream,
            "entries": backlog.entries,
            "memory_bytes": backlog.memory_bytes,
            "max_bytes": self._max_bytes,
            "unacknowledged": backlog.unacknowledged,
            "oldest_unacknowledged_age_seconds": backlog.oldest_age_seconds,
            "max_age_seconds": self._max_age,
            "groups": {
                name: {
                    "unacknowledged": group.unacknowledged,
                    "oldest_unacknowledged_age_seconds": group.oldest_age_seconds,
                }
                for name, group in backlog.groups.items()
            },
        }

    async def exposition(self) -> bytes:
        """The backlog in Prometheus text format, or nothing if Redis did not tell."""
        try:
            backlog = await self.read()
        except (RedisError, TimeoutError) as exc:
            log.warning("decision stream backlog left out of /metrics: %s", exc or "timed out")
            return b""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(backlog, self._max_bytes, self._max_age))
        return generate_latest(registry)


class _Snapshot(Collector):
    def __init__(self, backlog: Backlog, max_bytes: int, max_age: float):
        self._backlog = backlog
        self._max_bytes = max_bytes
        self._max_age = max_age

    def collect(self) -> Iterator[Metric]:
        backlog = self._backlog
        yield GaugeMetricFamily(
            "ratewatch_decision_stream_entries",
            "Entries (batches of decisions) the decision stream holds in Redis",
            value=backlog.entries,
        )
        yield GaugeMetricFamily(
            "ratewatch_decision_stream_memory_bytes",
            "Memory the decision stream takes in Redis",
            value=backlog.memory_bytes,
        )
        yield GaugeMetricFamily(
            "ratewatch_decision_stream_max_bytes",
            "The memory past which the decision stream is reported behind (--backlog-max-mb)",
            value=self._max_bytes,
        )
        yield GaugeMetricFamily(
            "ratewatch_decision_stream_max_age_seconds",
            "The age of an unacknowledged entry past which the decision stream is reported "
            "behind (--backlog-max-age)",
            value=self._max_age,
        )
        unacknowledged = GaugeMetricFamily(
            "ratewatch_decision_stream_unacknowledged_entries",
            "Entries a reader has not acknowledged yet (read and in hand, or not read)",
            labels=["group"],
        )
        age = GaugeMetricFamily(
            "ratewatch_decision_stream_oldest_unacknowledged_age_seconds",
            "Age of the oldest entry a reader has not acknowledged (0: none)",
            labels=["group"],
        )
        for name, group in backlog.groups.items():
            unacknowledged.add_metric([name], group.unacknowledged)
            age.add_metric([name], group.oldest_age_seconds or 0)
        yield unacknowledged
        yield age


def _milliseconds(entry_id: bytes | str) -> int:
    """When Redis appended the entry: the first part of its id."""
    return int(_text(entry_id).partition("-")[0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
