"""Waiting on the event loop in async tests: poll a condition with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Let the loop run until ``condition`` holds; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.001)


async def turns(count: int = 50) -> None:
    """Give every runnable task ``count`` turns of the loop."""
    for _ in range(count):
        await asyncio.sleep(0)
