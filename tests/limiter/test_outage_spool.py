"""Decisions the failure policy answers reach the decision stream once Redis answers, each
exactly once: spooled on disk, appended by a script that keeps a high-water mark per run."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis

from limiter.algorithms import Algorithm, Reason
from limiter.coalescer import Coalescer
from limiter.failover import FailoverDecider, StoreHealth
from limiter.keyspace import Keyspace
from limiter.metrics import LimiterMetrics
from limiter.outage import records
from limiter.outage.recorder import OutageRecorder
from limiter.outage.replay import StreamReplay
from limiter.redis_client import redis_from_url
from limiter.sinks.spool import Spool
from limiter.state.tenants import FailMode
from limiter.store.base import Check
from limiter.store.memory import MemoryStore
from limiter.store.redis import RedisStore
from stream.events import DecisionEvent, decode_entry
from stream.handlers import entry_record
from tests.support.polling import eventually
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.timeout(60)


def check(tenant: str, key: str, limit: int = 100, **extra: str) -> Check:
    return Check(tenant, key, Algorithm.SLIDING_WINDOW, limit, 60_000, 1, **extra)  # type: ignore[arg-type]


async def stream_entries(redis: Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))


async def stream_events(redis: Redis, stream: str) -> list[DecisionEvent]:
    return [
        event
        for entry_id, fields in await stream_entries(redis, stream)
        for event in decode_entry(entry_record(entry_id, fields))
    ]


def sample(metrics: LimiterMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def spooled(run: bytes, seq: int, key: str) -> records.SpooledEntry:
    decisions = records.entry_decisions(
        [check("t", key)], [MemoryStore().decide_one(check("t", key))], "node", 0
    )
    return records.SpooledEntry(run, seq, 1_700_000_000_000 + seq, 1, decisions)


@pytest.fixture
def keyspace() -> Keyspace:
    return Keyspace("o" + secrets.token_hex(4))


async def test_a_chunk_replayed_again_appends_only_what_is_past_the_mark(
    redis: Redis, keyspace: Keyspace
) -> None:
    replay = StreamReplay(redis, keyspace)
    run, other = records.new_run(), records.new_run()
    chunk = [spooled(run, seq, f"k{seq}") for seq in range(1, 6)]
    assert await replay.append(chunk) == (5, 0, 5)
    assert await replay.append(chunk) == (0, 5, 5)  # the same chunk again: nothing
    longer = [spooled(run, seq, f"k{seq}") for seq in range(3, 9)]
    assert await replay.append(longer) == (3, 5, 8)
    assert await replay.append([spooled(other, 1, "x")]) == (1, 0, 1)  # a run of its own
    events = await stream_events(redis, keyspace.events)
    assert [e.key for e in events] == [*(f"k{seq}" for seq in range(1, 9)), "x"]
    assert [e.ts for e in events[:2]] == [1_700_000_000_001, 1_700_000_000_002]
    assert await replay.mark(run) == 8
    assert 0 < await redis.ttl(keyspace.replay_mark(run.hex())) <= 7 * 86400
    with pytest.raises(ValueError, match="one run"):
        await replay.append([spooled(run, 9, "a"), spooled(other, 2, "b")])


class Outage:
    """A limiter's failure policy wired as in ``ratewatch up``, on a Redis at ``url`` that
    may not be running: the check store, the health probe and the replay all use it."""

    def __init__(self, url: str, keyspace: Keyspace, spool_dir: Path, max_bytes: int = 1 << 20):
        self.client = redis_from_url(url, timeout=0.5)
        self.metrics = LimiterMetrics()
        self.health = StoreHealth(self.client.ping, self.metrics, probe_interval=0.01)
        store = RedisStore(self.client, keyspace, event_stream=keyspace.events, instance="n1")
        self.recorder = OutageRecorder(
            spool_dir,
            StreamReplay(self.client, keyspace),
            self.health,
            self.metrics,
            "n1",
            max_bytes=max_bytes,
        )
        self.decider = FailoverDecider(
            Coalescer(self.health.guard(store.decide)), MemoryStore(), self.health, self.recorder
        )
        self._watch: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Outage:
        await self.recorder.start()
        self._watch = asyncio.create_task(self.health.watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._watch is not None
        self._watch.cancel()
        await asyncio.gather(self._watch, return_exceptions=True)
        await self.recorder.close()
        await self.client.aclose(close_connection_pool=True)  # it does not own its pool


@pytest.fixture
async def absent_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A Redis that is not running yet (its port refuses), started by the test."""
    server = RedisServer(tmp_path / "redis", port=free_port())
    yield server
    server.stop()


async def test_decisions_answered_without_redis_reach_the_stream_once_it_answers(
    absent_redis: RedisServer, keyspace: Keyspace, tmp_path: Path
) -> None:
    async with Outage(absent_redis.url, keyspace, tmp_path / "spool") as outage:
        decide = outage.decider.decide
        opened = [(await decide([check("t1", f"k{i}")], FailMode.OPEN))[0] for i in range(20)]
        assert {o.reason for o in opened} == {Reason.FAIL_OPEN}
        small = await decide([check("t1", "small", limit=2)] * 3, FailMode.OPEN)
        assert [o.reason for o in small] == [Reason.FAIL_OPEN, Reason.FAIL_OPEN, Reason.LIMIT]
        closed = await decide([check("t2", "c", ip="192.0.2.1")], FailMode.CLOSED)
        assert closed[0].reason is Reason.FAIL_CLOSED
        # failed calls, then a failed probe: the store is declared down
        await eventually(lambda: not outage.health.up, 5, "the store declared down")
        await eventually(lambda: outage.recorder.spool.pending == 0, 5, "the spool's fsync")
        status = outage.recorder.status()
        assert (status["status"], status["entries"], status["spooled_decisions"]) == (
            "spooling", 22, 24)  # fmt: skip
        assert sample(outage.metrics, "ratewatch_outage_decisions_spooled_total") == 24
        assert sample(outage.metrics, "ratewatch_outage_spool_entries") == 22

        absent_redis.start()
        await eventually(lambda: outage.recorder.status()["status"] == "up", 10, "the replay")
        assert outage.health.up
        assert sample(outage.metrics, "ratewatch_outage_decisions_replayed_total") == 24
        assert sample(outage.metrics, "ratewatch_outage_spool_entries") == 0
        events = await stream_events(outage.client, keyspace.events)
    assert len(events) == 24
    assert len({e.event_id for e in events}) == 24
    assert [e.reason for e in events] == [
        *["fail_open"] * 22, "limit", "fail_closed"]  # fmt: skip
    assert [e.key for e in events[:20]] == [f"k{i}" for i in range(20)]
    last = events[-1]
    assert (last.tenant, last.key, last.ip, last.allowed, last.instance) == (
        "t2", "c", "192.0.2.1", False, "n1")  # fmt: skip
    assert (last.limit, last.window, last.cost, last.algorithm) == (100, 60, 1, "sliding_window")
    assert not list((tmp_path / "spool").glob("*.seg"))  # acknowledged: deleted


async def test_a_replay_interrupted_after_the_append_appends_nothing_twice(
    redis_server: RedisServer, redis: Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    refused = f"redis://127.0.0.1:{free_port()}"
    async with Outage(refused, keyspace, spool_dir) as outage:
        for i in range(10):
            await outage.decider.decide([check("t1", f"k{i}"), check("t1", "x")], FailMode.OPEN)
    assert outage.recorder.spool.events == 10  # left on disk for the next run

    # a run that appended a chunk's first records and died before acknowledging them
    spool = Spool(spool_dir, 1 << 20)
    spool.open()
    chunk = spool.read(1 << 20)
    entries = [records.decode(payload) for payload in chunk.records]
    assert [e.seq for e in entries] == list(range(1, 11))
    appended = await StreamReplay(redis, keyspace).append(entries[:6])
    assert appended.entries == 6
    spool.close()
    assert len(await stream_entries(redis, keyspace.events)) == 6

    async with Outage(redis_server.url, keyspace, spool_dir) as again:
        await eventually(lambda: again.recorder.status()["status"] == "up", 10, "the replay")
        # the next run's own records get a run (and a mark) of their own
        again.recorder.record([check("t1", "late")], [MemoryStore().decide_one(check("t1", "a"))])
        await eventually(lambda: again.recorder.status()["entries"] == 0, 10, "the late one")
        replayed = sample(again.metrics, "ratewatch_outage_decisions_replayed_total")
    events = await stream_events(redis, keyspace.events)
    assert [e.key for e in events] == [k for i in range(10) for k in (f"k{i}", "x")] + ["late"]
    assert replayed == 4 * 2 + 1  # the six already in the stream were not counted again
    assert await StreamReplay(redis, keyspace).mark(entries[0].run) == 10


async def test_a_full_spool_drops_decisions_and_counts_them(
    redis: Redis, keyspace: Keyspace, tmp_path: Path
) -> None:
    refused = f"redis://127.0.0.1:{free_port()}"
    async with Outage(refused, keyspace, tmp_path / "spool", max_bytes=4096) as outage:
        for i in range(100):
            await outage.decider.decide([check("t1", f"key-{i}")], FailMode.OPEN)
        status = outage.recorder.status()
        dropped = sample(outage.metrics, "ratewatch_outage_decisions_dropped_total")
        assert 0 < status["dropped_decisions"] == dropped < 100  # type: ignore[operator]
        assert status["spooled_decisions"] == 100 - dropped
        assert status["bytes"] <= 4096  # type: ignore[operator]
