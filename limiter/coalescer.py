"""Coalesces the checks of concurrent requests into bounded store calls, fairly by tenant.

A Python server spends more time per Redis command than Redis does; sending the checks that
arrive while a call is in flight as the next single script call keeps Redis round trips
(and their per-command cost) independent of the request rate.

Each call is bounded in checks (``max_batch``) and in payload bytes (``max_bytes``), so its
time on Redis is bounded whoever sent it: a request larger than a call is split into
several, sent one after the other, in order.  Waiting requests are queued per tenant and a
call is filled round-robin over the tenants, one whole request per tenant and turn, so a
tenant's flood queues behind itself while every other tenant's checks go out with the next
call.  A tenant whose split request has a part in flight sends nothing more until that part
returns: its checks stay in the order they came.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from limiter.algorithms import Outcome
from limiter.store.base import Check, payload_bytes

Decide = Callable[[Sequence[Check]], Awaitable[list[Outcome]]]
Weigh = Callable[[Sequence[Check]], int]

MAX_BATCH = 2048
MAX_BYTES = 512 * 1024


class _Request:
    """One caller's checks, and how far they have been sent."""

    __slots__ = ("busy", "checks", "future", "outcomes", "sent", "weight")

    def __init__(self, checks: Sequence[Check], future: asyncio.Future[list[Outcome]]):
        self.checks = checks
        self.future = future
        self.sent = 0  # checks handed to calls so far
        self.busy = False  # a part of it is in flight and more is to come
        self.outcomes: list[Outcome] = []  # of the parts answered, when split
        self.weight = -1  # payload bytes of all its checks, once weighed


# one call's share of a request: the request and the range of its checks
_Part = tuple[_Request, int, int]


class Coalescer:
    def __init__(
        self,
        decide: Decide,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = 2,
        max_bytes: int = MAX_BYTES,
        weigh: Weigh = payload_bytes,
    ):
        self._decide = decide
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._max_bytes = max_bytes
        self._weigh = weigh
        # tenant -> its waiting requests; the dict's order is the round-robin order
        self._pending: dict[str, deque[_Request]] = {}
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done, as asyncio asks
        # Python 3.11's get_running_loop() makes a getpid() system call each time: the loop
        # is looked up once
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, checks: Sequence[Check]) -> asyncio.Future[list[Outcome]]:
        """The outcomes of ``checks`` (one tenant's), in order, once their calls return."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()
        if not checks:
            future.set_result([])
            return future
        tenant = checks[0].tenant
        queue = self._pending.get(tenant)
        if queue is None:
            self._pending[tenant] = deque((_Request(checks, future),))
        else:
            queue.append(_Request(checks, future))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = loop.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def _flush(self) -> None:
        try:
            # yield once so that requests parsed in the same loop iteration join this call
            await asyncio.sleep(0)
            while True:
                parts = self._take()
                if not parts:
                    return
                if len(parts) == 1:
                    request, start, end = parts[0]
                    checks = request.checks if end - start == len(request.checks) else (
                        request.checks[start:end]
                    )  # fmt: skip
                else:
                    checks = [
                        c
                        for request, start, end in parts
                        for c in (
                            request.checks
                            if end - start == len(request.checks)
                            else request.checks[start:end]
                        )
                    ]
                try:
                    outcomes = await self._decide(checks)
                except Exception as exc:  # handed to every waiting request, which decides
                    self._fail(parts, exc)
                    continue
                self._answer(parts, outcomes)
        finally:
            self._in_flight -= 1

    def _take(self) -> list[_Part]:
        """The next call's parts: round-robin over the tenants, within the call's bounds."""
        pending = self._pending
        parts: list[_Part] = []
        count, size = 0, 0
        max_batch, max_bytes, weigh = self._max_batch, self._max_bytes, self._weigh
        while pending:
            served = False
            for tenant, queue in list(pending.items()):
                # one request per tenant and turn; a tenant alone takes as many as fit
                alone = len(pending) == 1
                while queue:
                    request = queue[0]
                    if request.busy:
                        break  # its next part waits for the one in flight
                    checks, start = request.checks, request.sent
                    total = len(checks)
                    weight = request.weight
                    if weight < 0:
                        weight = request.weight = weigh(checks)
                    if start == 0 and count + total <= max_batch and size + weight <= max_bytes:
                        end = total
                        count += total
                        size += weight
                    elif count > 0:
                        # a request is split only when larger than a whole call: this one
                        # goes whole (or its next part goes first) in the next call
                        return parts
                    else:
                        end, count, size = self._fit(checks, start)
                    served = True
                    parts.append((request, start, end))
                    request.sent = end
                    if end < total:
                        request.busy = True
                        # the tenant goes to the back of the round
                        del pending[tenant]
                        pending[tenant] = queue
                        return parts  # the call is full
                    queue.popleft()
                    if not alone:
                        break
                del pending[tenant]
                if queue:
                    pending[tenant] = queue
                if count >= max_batch:
                    return parts
            if not served:
                break  # every tenant waits on a part in flight
        return parts

    def _fit(self, checks: Sequence[Check], start: int) -> tuple[int, int, int]:
        """Where the part of a request larger than a call that starts at ``start`` ends, and
        its count and bytes."""
        end, total, size = start, len(checks), 0
        while end < total and end - start < self._max_batch:
            weight = self._weigh(checks[end : end + 1])
            if size + weight > self._max_bytes and end > start:
                break
            size += weight
            end += 1
        return end, end - start, size

    def _answer(self, parts: list[_Part], outcomes: list[Outcome]) -> None:
        offset = 0
        for request, start, end in parts:
            length = end - start
            future = request.future
            if start == 0 and end == len(request.checks):
                if not future.done():
                    future.set_result(
                        outcomes if len(parts) == 1 else outcomes[offset : offset + length]
                    )
            else:
                request.outcomes += outcomes[offset : offset + length]
                request.busy = False
                if end == len(request.checks) and not future.done():
                    future.set_result(request.outcomes)
            offset += length

    def _fail(self, parts: list[_Part], error: Exception) -> None:
        for request, _, end in parts:
            if end < len(request.checks):
                # a split request fails whole: the rest of it is not sent
                self._drop(request)
            if not request.future.done():
                request.future.set_exception(error)

    def _drop(self, request: _Request) -> None:
        tenant = request.checks[0].tenant
        queue = self._pending.get(tenant)
        if queue and queue[0] is request:
            queue.popleft()
            if not queue:
                del self._pending[tenant]
