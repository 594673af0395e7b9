"""Bounded shutdown: a step that never ends is logged by name and left behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from control.shutdown import bounded_step, cancel_tasks


async def _ignores_cancellation(release: asyncio.Event) -> None:
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue  # what a stuck component does


@pytest.mark.timeout(10)
def test_a_task_that_ignores_its_cancellation_does_not_hold_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[bool, bool]:
        release = asyncio.Event()
        stuck = asyncio.create_task(_ignores_cancellation(release), name="stuck watcher")
        polite = asyncio.create_task(asyncio.Event().wait(), name="polite watcher")
        await asyncio.sleep(0)  # both started
        await cancel_tasks([stuck, polite], limit=0.2)
        result = (stuck.done(), polite.cancelled())
        release.set()
        await stuck
        return result

    with caplog.at_level(logging.WARNING, "ratewatch.limiter"):
        stuck_done, polite_cancelled = asyncio.run(scenario())
    assert (stuck_done, polite_cancelled) == (False, True)
    assert "stuck watcher did not end" in caplog.text
    assert "polite watcher" not in caplog.text


@pytest.mark.timeout(10)
def test_a_close_that_hangs_is_cut_and_the_next_step_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def fails() -> None:
        raise ConnectionError("connection reset")

    async def closes() -> None:
        ran.append("closed")

    async def scenario() -> None:
        await bounded_step("the journal's close", hangs(), limit=0.2)
        await bounded_step("the probe's close", fails(), limit=1)
        await bounded_step("the Redis client's close", closes(), limit=1)

    with caplog.at_level(logging.WARNING, "ratewatch.limiter"):
        asyncio.run(scenario())
    assert ran == ["closed"]
    assert "the journal's close did not finish" in caplog.text
    assert "the probe's close failed: connection reset" in caplog.text
    assert "Redis client" not in caplog.text
