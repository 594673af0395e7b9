"""Coalesces the checks of concurrent requests into one store call.

A Python server spends more time per Redis command than Redis does; sending the checks that
arrive while a call is in flight as the next single script call keeps Redis round trips
(and their per-command cost) independent of the request rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from limiter.algorithms import Outcome
from limiter.store.base import Check

Decide = Callable[[Sequence[Check]], Awaitable[list[Outcome]]]


class Coalescer:
    def __init__(self, decide: Decide, max_batch: int = 2048, max_in_flight: int = 2):
        self._decide = decide
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[Sequence[Check], asyncio.Future[list[Outcome]]]] = []
        self._pending_checks = 0
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done, as asyncio asks
        # Python 3.11's get_running_loop() makes a getpid() system call each time: the loop
        # is looked up once
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, checks: Sequence[Check]) -> asyncio.Future[list[Outcome]]:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()
        self._pending.append((checks, future))
        self._pending_checks += len(checks)
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = asyncio.ensure_future(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def _flush(self) -> None:
        try:
            # yield once so that requests parsed in the same loop iteration join this batch
            await asyncio.sleep(0)
            while self._pending:
                batch = self._take()
                checks = [check for request, _ in batch for check in request]
                try:
                    outcomes = await self._decide(checks)
                except Exception as exc:  # handed to every waiting request, which decides
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for request, future in batch:
                    end = start + len(request)
                    if not future.done():
                        future.set_result(outcomes[start:end])
                    start = end
        finally:
            self._in_flight -= 1

    def _take(self) -> list[tuple[Sequence[Check], asyncio.Future[list[Outcome]]]]:
        if self._pending_checks <= self._max_batch:
            batch, self._pending, self._pending_checks = self._pending, [], 0
            return batch
        # whole requests, as many as fit; a request larger than the bound goes alone
        taken, count = 0, 0
        while taken < len(self._pending):
            size = len(self._pending[taken][0])
            if taken > 0 and count + size > self._max_batch:
                break
            count += size
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        self._pending_checks -= count
        return batch
