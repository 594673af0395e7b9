"""Waiting for something to happen, with a deadline that fails naming what never came.

Tests watch real processes and servers, so they poll a condition rather than sleep a
guessed time: ``wait_until`` blocks (plain tests, fixtures, threads), ``eventually`` polls
without blocking the event loop, ``eventually_awaited`` and ``eventually_equal`` poll what
must itself be awaited (a query to Redis or to the store), ``until`` lets the loop run at
its finest grain (unit tests of async code), and ``turns`` hands every runnable task a few
turns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll ``condition`` until it holds; fail loudly with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


async def eventually(condition: Callable[[], bool], within: float, what: str) -> None:
    """``wait_until`` for async tests: polls without blocking the loop."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"timed out after {within}s waiting for {what}")


async def eventually_awaited(
    condition: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.02
) -> None:
    """``eventually`` for a condition that is awaited, every ``interval`` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


async def eventually_equal(
    probe: Callable[[], Awaitable[object]], expected: object, within: float, what: str
) -> None:
    """Poll the awaited ``probe`` until it returns ``expected``; fail naming ``what`` and
    what it returned last."""
    deadline = time.monotonic() + within
    while (found := await probe()) != expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what} (have {found})")
        await asyncio.sleep(0.02)


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Let the loop run until ``condition`` holds; fail naming ``what`` after ``within`` s.

    Unlike ``eventually`` it sleeps a millisecond between polls, so a unit test sees the
    state right after the step that made it, not up to 20 ms later."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.001)


async def turns(count: int = 50) -> None:
    """Give every runnable task ``count`` turns of the loop."""
    for _ in range(count):
        await asyncio.sleep(0)
