"""A loop that runs for a task's life stops when the task is cancelled, even when a library
call inside it swallowed the cancellation (returned as if nothing happened)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import pytest
from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from limiter.state.block_mirror import BlockMirror
from limiter.store.memory import MemoryStore
from stream.cancellation import pause, raise_if_cancelled

pytestmark = pytest.mark.timeout(30)


async def swallow_a_cancellation(entered: asyncio.Event) -> None:
    """What a library call that ends quietly when cancelled looks like to its caller."""
    entered.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(60)


async def test_a_loop_of_pauses_stops_after_a_swallowed_cancellation() -> None:
    entered = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await swallow_a_cancellation(entered)
            await pause(0.01)

    task = asyncio.create_task(loop())
    await entered.wait()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()
    assert rounds == 1


async def test_raise_if_cancelled_is_quiet_in_a_task_not_asked_to_stop() -> None:
    raise_if_cancelled()  # nothing asked this task to stop
    await pause(0)


class QuietlyCancelledMirror(BlockMirror):
    def __init__(self) -> None:
        super().__init__(cast(Redis, None), Keyspace("unused"), MemoryStore(), interval=0.01)
        self.entered = asyncio.Event()
        self.refreshes = 0

    async def refresh(self) -> None:
        self.refreshes += 1
        await swallow_a_cancellation(self.entered)


async def test_the_block_mirror_stops_when_a_refresh_swallowed_its_cancellation() -> None:
    mirror = QuietlyCancelledMirror()
    task = asyncio.create_task(mirror.run())
    await mirror.entered.wait()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()  # before the fix it refreshed again and waited there forever
    assert mirror.refreshes == 1
