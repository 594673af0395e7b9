"""Loops that run for the life of a task stop when the task is cancelled, even when a
library swallowed the cancellation.

A cancellation can reach a client library in the middle of a call, and the library may
turn it into an ordinary return or error (seen with redis-py: the block mirror's refresh,
cancelled in the middle of its Redis calls, returned as if it had completed). The task
stays marked as cancelling, but nothing raises the cancellation again: a loop that sleeps
and refreshes would run on after its stop, and whoever awaits the task, a shutdown, waits
with it forever. Such loops check between rounds."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the running task has been asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(seconds: float) -> None:
    """``asyncio.sleep(seconds)`` between two rounds of a loop, unless the task was asked to
    stop during the round."""
    raise_if_cancelled()
    await asyncio.sleep(seconds)
