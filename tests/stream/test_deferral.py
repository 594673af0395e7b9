"""The checks first: the embedded pipeline holds its reads and inserts while the limiter is
busy, for a bounded time, then catches up; nothing read is lost or written twice.  The
deferral alone, then the pipeline on the real Redis into chDB."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from stream.batching import BatchBounds
from stream.deferral import Deferral
from tests.support.embedded_pipeline import Embedded, decide, pending
from tests.support.event_store import CountingStore, open_store, store_totals
from tests.support.polling import eventually, eventually_equal

pytestmark = pytest.mark.timeout(60)


class Busy:
    """A limiter's load the test sets; counts how often it was asked."""

    def __init__(self, busy: bool = False) -> None:
        self.busy = busy
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.busy


# -- the deferral alone -----------------------------------------------------------------------


async def test_a_consumer_goes_on_at_once_while_the_checks_are_not_busy() -> None:
    busy, held = Busy(), []
    deferral = Deferral(busy, 5.0, on_held=held.append)
    started = time.monotonic()
    await deferral.turn(asyncio.Event(), caught_up=False)
    assert time.monotonic() - started < 1.0
    assert (busy.asked, held) == (1, [])


async def test_a_consumer_waits_while_the_checks_are_busy_and_goes_on_once_they_are_quiet() -> None:
    busy, held = Busy(True), []
    deferral = Deferral(busy, 30.0, poll_seconds=0.01, quiet_seconds=0.3, on_held=held.append)
    turn = asyncio.create_task(deferral.turn(asyncio.Event(), caught_up=False))
    await eventually(lambda: busy.asked >= 5, 10, "the deferral asking again")
    assert not turn.done()
    assert deferral.holding
    # a pause shorter than the quiet time, as between a client's rounds: still held
    busy.busy = False
    asked = busy.asked
    await eventually(lambda: busy.asked >= asked + 3, 10, "a look in the pause")
    busy.busy = True
    asked = busy.asked
    await eventually(lambda: busy.asked >= asked + 40, 10, "the quiet time passing")
    assert not turn.done()
    busy.busy = False
    quiet = time.monotonic()
    await asyncio.wait_for(turn, 5)
    assert time.monotonic() - quiet >= 0.3
    assert not deferral.holding
    assert len(held) == 1
    assert held[0] > 0


async def test_a_hold_ends_after_its_longest_time_and_not_again_before_catching_up() -> None:
    busy, held = Busy(True), []
    deferral = Deferral(busy, 0.3, poll_seconds=0.01, quiet_seconds=0.05, on_held=held.append)
    started = time.monotonic()
    await asyncio.wait_for(deferral.turn(asyncio.Event(), caught_up=False), 10)
    assert 0.3 <= time.monotonic() - started < 5
    asked = busy.asked
    # still behind: the consumer catches up without being held or asking
    await asyncio.wait_for(deferral.turn(asyncio.Event(), caught_up=False), 1)
    assert busy.asked == asked
    # caught up: held again while the checks are busy
    again = asyncio.create_task(deferral.turn(asyncio.Event(), caught_up=True))
    await eventually(lambda: busy.asked > asked + 2, 10, "a second hold")
    assert not again.done()
    busy.busy = False
    await asyncio.wait_for(again, 5)
    assert len(held) == 2


async def test_holds_without_catching_up_between_them_count_as_one() -> None:
    """Bursts with short pauses: the consumer goes on in each pause, but not caught up, and
    the bound runs from the first hold."""
    busy = Busy(True)
    deferral = Deferral(busy, 0.6, poll_seconds=0.01, quiet_seconds=0.05)
    first = time.monotonic()
    turn = asyncio.create_task(deferral.turn(asyncio.Event(), caught_up=False))
    await eventually(lambda: deferral.holding, 10, "the first hold")
    busy.busy = False
    await asyncio.wait_for(turn, 5)  # a pause: released, not caught up
    busy.busy = True
    await asyncio.wait_for(deferral.turn(asyncio.Event(), caught_up=False), 10)
    assert 0.6 <= time.monotonic() - first < 5  # the second hold ended at the first's bound
    asked = busy.asked
    await asyncio.wait_for(deferral.turn(asyncio.Event(), caught_up=False), 1)
    assert busy.asked == asked  # and the consumer now catches up before any hold


async def test_a_stopping_consumer_is_not_held() -> None:
    stopping = asyncio.Event()
    deferral = Deferral(Busy(True), 30.0, poll_seconds=0.01)
    turn = asyncio.create_task(deferral.turn(stopping, caught_up=False))
    await eventually(lambda: deferral.holding, 10, "the hold")
    stopping.set()
    await asyncio.wait_for(turn, 5)


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_a_hold_of_no_time_is_refused_naming_it(seconds: float) -> None:
    with pytest.raises(ValueError, match=f"not {seconds!r}"):
        Deferral(Busy(), seconds)


# -- the embedded pipeline held -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    opened = open_store(tmp_path / "ch")
    yield CountingStore(opened)
    opened.close()


async def test_decisions_wait_in_the_stream_while_the_checks_are_busy_then_are_stored_once(
    redis: Redis, store: CountingStore, tenant: str
) -> None:
    busy = Busy()
    deferral = Deferral(busy, 30.0, poll_seconds=0.02, quiet_seconds=0.1)
    embedded = Embedded(redis, store, BatchBounds(max_age=0.2), deferral=deferral)
    handler = embedded.handler
    async with embedded.running():
        await decide(embedded.limiter, tenant, 3, "before")
        await eventually(lambda: handler.stats.written == 6, 20, "the first 6 rows")
        busy.busy = True
        await eventually(lambda: deferral.holding, 20, "the pipeline held")
        await decide(embedded.limiter, tenant, 20, "burst")  # 40 decisions while busy
        # held well past the batch's age bound: nothing read, nothing written
        asked = busy.asked
        await eventually(lambda: busy.asked >= asked + 25, 20, "half a second of holding")
        assert handler.stats.written == 6
        assert deferral.holding
        info = await redis.xinfo_groups(embedded.stream)
        assert info[0]["lag"] == 20  # the burst's entries, unread
        busy.busy = False
        await eventually(lambda: handler.stats.written == 46, 20, "the burst's 40 rows")
        await eventually_equal(
            lambda: pending(redis, embedded.stream), 0, 20, "the acknowledgements"
        )
    # raw rows, ledger rows (one per entry), rollups: each decision once
    assert store_totals(store.store) == [46, 23, 46, 46, 46]


async def test_a_pipeline_held_for_too_long_catches_up_while_the_checks_stay_busy(
    redis: Redis, store: CountingStore, tenant: str
) -> None:
    busy = Busy(True)
    deferral = Deferral(busy, 0.5, poll_seconds=0.02)
    embedded = Embedded(redis, store, BatchBounds(max_age=0.2), deferral=deferral)
    async with embedded.running():
        started = time.monotonic()
        await decide(embedded.limiter, tenant, 10, "busy")
        await eventually(lambda: embedded.handler.stats.written == 20, 20, "the 20 rows")
        assert time.monotonic() - started >= 0.5  # held first, for the longest hold
        await eventually_equal(
            lambda: pending(redis, embedded.stream), 0, 20, "the acknowledgements"
        )
    assert store_totals(store.store) == [20, 10, 20, 20, 20]
