"""The check lane: ``POST /v1/check`` and ``/v1/batch`` decided without a task per request.

An ASGI server runs every request as a task of its own: the request's coroutine, the
awaits down to the coalescer's future, the ASGI messages.  At many requests per loop
iteration that machinery costs more than the check itself.  The HTTP protocol hands the
lane the requests it can answer at once (a key the cache holds, not a signed one, the
whole body in, its policy if it names one in the copy); the lane gathers those parsed in
one loop iteration and, in the next, decides them with one call of the decider per tenant
and failure mode (the coalescer joins those into one script call), then answers each
through its request.  A check the local denial cache denies is answered in the flush
itself, without waiting for the others' store call.  Anything else, a policy not in the copy
for one, is decided as a task of its own with the handler's own steps.

The lane holds at most ``max_checks`` decoded checks at a time; a request that arrives
beyond it waits as it came, its body's bytes, until answers make room, and requests are
decoded in the order they arrived.  Without a bound every request of every connection was
decoded in the loop iteration it arrived: 1,000 connections of 1,000-check batches would
be a million checks, their keys, the script's arguments and the outcomes, at once.  The
bound is four of the coalescer's calls, and a decider call holds at most one call's worth
(``group_checks``), so room is made as each Redis call is answered, while the next calls'
checks are already queued behind it.

The answers, the headers, the decision events and the metrics are the handler's
(``CheckHandler.prepare``/``answer``, ``prepare_batch``/``batch_answer``): what the lane
saves is the per-request machinery, never a step of the check.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, Protocol, TypeVar

from limiter.algorithms import Outcome
from limiter.auth import Authenticator, Principal
from limiter.coalescer import MAX_BATCH
from limiter.http.asgi import JSON, Headers
from limiter.http.checks import (
    BatchReply,
    CheckHandler,
    Decider,
    Prepared,
    Reply,
    batch_decoder,
    check_decoder,
    decode,
)
from limiter.http.problems import Problem
from limiter.state.apikeys import MAX_KEY_LENGTH
from limiter.state.tenants import FailMode
from limiter.store.base import Check

R = TypeVar("R", Reply, BatchReply)

CHECK_PATH = b"/v1/check"
BATCH_PATH = b"/v1/batch"
GROUP_CHECKS = MAX_BATCH  # checks of one decider call: one call of the coalescer
MAX_CHECKS = 4 * GROUP_CHECKS  # decoded checks held at once: two calls in flight, two queued


class LaneRequest(Protocol):
    """A request the lane answers: the HTTP protocol writes what it is given."""

    path: str  # what a problem's ``instance`` names

    def respond(self, status: int, headers: Headers, body: bytes) -> None: ...


class _Decided(NamedTuple):
    """A request's part of one decider call."""

    request: LaneRequest
    started: int
    prepared: Prepared | None  # a check's
    checks: list[Check]  # a batch's (empty for a check)


class CheckLane:
    def __init__(
        self,
        handler: CheckHandler,
        decider: Decider,
        auth: Authenticator,
        problem_of: Callable[[Exception], Problem],
        max_body_bytes: int,
        max_batch_body_bytes: int,
        cached: Callable[[Check], Outcome | None] | None = None,
        max_checks: int = MAX_CHECKS,
        group_checks: int = GROUP_CHECKS,
    ):
        if not 1 <= group_checks <= max_checks:
            raise ValueError(
                f"group_checks must be within 1-{max_checks} (max_checks), got {group_checks!r}"
            )
        self._handler = handler
        self._decider = decider
        # the local denial cache's answer, if it has one (FailoverDecider.cached)
        self._cached = cached
        self._auth = auth
        self._problem_of = problem_of  # an exception's answer, logged and counted as the app's
        self.body_limits = {CHECK_PATH: max_body_bytes, BATCH_PATH: max_batch_body_bytes}
        self._pending: deque[tuple[bytes, Principal, bytes, int, LaneRequest]] = deque()
        self._flush_due = False
        self.max_checks = max_checks
        self.group_checks = group_checks
        self.checks_held = 0  # decoded and not yet answered
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done, as asyncio asks
        self._loop: asyncio.AbstractEventLoop | None = None

    def principal(self, authorization: bytes | None) -> Principal | None:
        """The principal of ``Authorization: Bearer <key>`` if the lane may answer for it:
        a key the cache holds, not a signed one.  None: the request goes the usual way
        (which authenticates, verifies or refuses it)."""
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return None
        token = authorization[7:].strip()
        if not token or len(token) > MAX_KEY_LENGTH:
            return None
        principal = self._auth.cached(token.decode("latin-1"))
        if principal is None or principal.signing_key is not None:
            return None
        return principal

    def submit(
        self, path: bytes, principal: Principal, body: bytes, started: int, request: LaneRequest
    ) -> None:
        """Answer ``request`` (a whole request to ``path``) once the next loop iteration has
        decided it with the others parsed meanwhile (beyond ``max_checks``, once answers
        make room)."""
        self._pending.append((path, principal, body, started, request))
        if not self._flush_due:
            self._schedule()

    @property
    def waiting(self) -> int:
        """Requests handed to the lane and not decoded yet."""
        return len(self._pending)

    def _schedule(self) -> None:
        if self._flush_due or not self._pending or self.checks_held >= self.max_checks:
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._flush)
        self._flush_due = True

    def _flush(self) -> None:
        self._flush_due = False
        pending, handler = self._pending, self._handler
        group_checks = self.group_checks
        # per tenant and fail mode, the group being filled, and its checks
        groups: dict[tuple[str, FailMode], list[_Decided]] = {}
        sizes: dict[tuple[str, FailMode], int] = {}
        full: list[tuple[list[_Decided], FailMode]] = []
        while pending and self.checks_held < self.max_checks:
            path, principal, body, started, request = pending.popleft()
            try:
                if path == CHECK_PATH:
                    check_request = decode(check_decoder, body)
                    found = None
                    if check_request.policy is not None:
                        found = handler.cached_policy(principal.tenant, check_request)
                        if found is None:
                            answering = handler.answer_check(principal, body, started)
                            self._spawn(
                                self._alone(request, started, answering, self._answer_check)
                            )
                            continue
                    prepared = handler.prepare(principal, check_request, started, found)
                    hit = None if self._cached is None else self._cached(prepared.check)
                    if hit is not None:  # denied in process: answered now, no store call
                        self._answer_check(request, started, handler.answer(prepared, hit))
                        continue
                    decided = _Decided(request, started, prepared, [])
                else:
                    batch_request = decode(batch_decoder, body)
                    founds = handler.cached_policies(principal.tenant, batch_request)
                    if founds is None:
                        answered = handler.answer_batch(principal, body, started)
                        self._spawn(self._alone(request, started, answered, self._answer_batch))
                        continue
                    checks = handler.prepare_batch(principal, batch_request, started, founds)
                    decided = _Decided(request, started, None, checks)
            except Exception as exc:
                self._fail(request, exc)
                continue
            count = 1 if decided.prepared is not None else len(decided.checks)
            self.checks_held += count
            kind = (principal.tenant, principal.fail_mode)
            group = groups.get(kind)
            if group is None:
                groups[kind], sizes[kind] = [decided], count
            elif sizes[kind] + count > group_checks:  # a call's worth: decided as one
                full.append((group, principal.fail_mode))
                groups[kind], sizes[kind] = [decided], count
            else:
                group.append(decided)
                sizes[kind] += count
        for group, fail_mode in full:
            self._spawn(self._decide(group, fail_mode))
        for (_, fail_mode), group in groups.items():
            self._spawn(self._decide(group, fail_mode))

    async def _decide(self, group: list[_Decided], fail_mode: FailMode) -> None:
        checks: list[Check] = []
        for part in group:
            if part.prepared is not None:
                checks.append(part.prepared.check)
            else:
                checks += part.checks
        try:
            await self._answer_group(group, fail_mode, checks)
        finally:
            self.checks_held -= len(checks)
            self._schedule()

    async def _answer_group(
        self, group: list[_Decided], fail_mode: FailMode, checks: list[Check]
    ) -> None:
        try:
            outcomes = await self._decider.decide(checks, fail_mode)
        except Exception as exc:
            for part in group:
                self._fail(part.request, exc)
            return
        handler = self._handler
        at = 0
        for request, started, prepared, batch in group:
            count = 1 if prepared is not None else len(batch)
            try:
                if prepared is not None:
                    self._answer_check(request, started, handler.answer(prepared, outcomes[at]))
                else:
                    reply = handler.batch_answer(batch, outcomes[at : at + count])
                    self._answer_batch(request, started, reply)
            except Exception as exc:  # this request's alone: the others are still answered
                self._fail(request, exc)
            at += count

    async def _alone(
        self,
        request: LaneRequest,
        started: int,
        decided: Awaitable[R],
        answered: Callable[[LaneRequest, int, R], None],
    ) -> None:
        """A request decided on a task of its own (its policy must be fetched first)."""
        try:
            reply = await decided
        except Exception as exc:
            self._fail(request, exc)
            return
        answered(request, started, reply)

    def _answer_check(self, request: LaneRequest, started: int, reply: Reply) -> None:
        request.respond(200, reply.headers, reply.body)
        self._handler.record_reply(started, reply)

    def _answer_batch(self, request: LaneRequest, started: int, reply: BatchReply) -> None:
        request.respond(200, [(b"content-type", JSON)], reply.body)
        self._handler.record_batch(started, reply)

    def _fail(self, request: LaneRequest, exc: Exception) -> None:
        problem = self._problem_of(exc)
        request.respond(problem.status, problem.headers(), problem.body(request.path))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
