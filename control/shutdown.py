"""Shutdown in bounded steps: one step that never ends must not keep the process alive.

A worker that closed its listener but waits forever on one component (a task that ignores
its cancellation, a close that waits on a dead connection) looks alive to its supervisor
and ignores a second SIGTERM.  Each step here gets its own bound; one that overruns is
logged by name and left behind, and the next step runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable

log = logging.getLogger("ratewatch.limiter")

# long enough for a sink to flush its last events to a live broker or Redis
STEP_TIMEOUT_SECONDS = 5.0


async def cancel_tasks(
    tasks: Iterable[asyncio.Task[object]], limit: float = STEP_TIMEOUT_SECONDS
) -> None:
    """Cancel ``tasks`` and wait at most ``limit`` seconds for all of them to end."""
    pending = set(tasks)
    for task in pending:
        task.cancel()
    if not pending:
        return
    # asyncio.wait, unlike wait_for, never waits on the cancellation it asked for
    _, late = await asyncio.wait(pending, timeout=limit)
    for task in late:
        log.warning("shutdown: task %s did not end within %.0f s", task.get_name(), limit)


async def bounded_step(
    name: str, step: Awaitable[object], limit: float = STEP_TIMEOUT_SECONDS
) -> None:
    """Await ``step`` at most ``limit`` seconds; log (never raise) what went wrong."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        task.cancel()
        log.warning("shutdown: %s did not finish within %.0f s; left behind", name, limit)
        return
    if not task.cancelled() and task.exception() is not None:
        log.warning("shutdown: %s failed: %s", name, task.exception())
