"""The hot path: ``POST /v1/check`` and ``POST /v1/batch`` as raw ASGI handlers.

Per request: the auth cache, one (coalesced) Redis round trip, the emit seam; for a signed
key's request, its signature.  Nothing else that could be done once at start is done here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from limiter.algorithms import MAX_LIMIT_WINDOW, Algorithm, Outcome
from limiter.api_limits import ApiLimiter
from limiter.auth import Authenticator, Principal
from limiter.emit import Decision, DecisionSink, NullSink
from limiter.errors import InvalidInput
from limiter.http.asgi import JSON, Headers, Scope, read_body, respond
from limiter.http.bearer import authenticate, cached_principal, verify_signature
from limiter.http.problems import Problem
from limiter.http.schemas import BatchRequest, BatchResult, CheckRequest
from limiter.metrics import Latencies, LimiterMetrics
from limiter.policies.cache import PolicyCache, UnknownPolicy
from limiter.policies.checks import conclude
from limiter.policies.model import Overrides, Policy, Resolved, compiled, resolve
from limiter.results import to_result
from limiter.state.blocks import normalize_ip
from limiter.state.tenants import FailMode
from limiter.store.base import Check

check_decoder = msgspec.json.Decoder(CheckRequest)
batch_decoder = msgspec.json.Decoder(BatchRequest)
_encoder = msgspec.json.Encoder()


def decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    if not body.strip():
        raise Problem(400, "invalid-json", "the request body is empty: send a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise Problem(422, "validation-error", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Problem(400, "invalid-json", str(exc)) from None


def _where(index: int | None) -> str:
    """Where in the body a bad check is, as a JSON path (built only for an error)."""
    return "$" if index is None else f"$.checks[{index}]"


class Prepared(NamedTuple):
    """A request's check, and the policy it names resolved for its key (None: none)."""

    check: Check
    resolved: Resolved | None


class Reply(NamedTuple):
    """A decided check: what its caller is answered, and what is recorded of it."""

    headers: Headers
    body: bytes
    decided: Check  # the check as the window that decided (a policy's) describes it
    outcome: Outcome  # as the store decided it
    answer: Outcome  # as the caller is told (a shadow policy's denial is allowed)


class BatchReply(NamedTuple):
    body: bytes
    checks: list[Check]  # as decided (a policy's: its deciding window)
    outcomes: list[Outcome]
    answers: list[Outcome]


class Decider(Protocol):
    """Decides one request's checks (``limiter.failover.FailoverDecider``)."""

    async def decide(self, checks: Sequence[Check], fail_mode: FailMode) -> list[Outcome]: ...


class CheckHandler:
    def __init__(
        self,
        auth: Authenticator,
        decider: Decider,
        sink: DecisionSink,
        metrics: LimiterMetrics,
        default_algorithm: Algorithm,
        max_body_bytes: int,
        max_batch_body_bytes: int,
        api_limits: ApiLimiter | None = None,
        policies: PolicyCache | None = None,
    ):
        self._auth = auth
        self._api_limits = api_limits  # failed authentication per client address
        self._decider: Decider = decider
        self._sink = sink
        # the decisions are built for a sink only when it keeps them
        self._emits = not isinstance(sink, NullSink)
        self._metrics = metrics
        self._default_algorithm = default_algorithm
        self._max_body = max_body_bytes
        self._max_batch_body = max_batch_body_bytes
        self._policies = policies

    def to_check(
        self,
        tenant: str,
        request: CheckRequest,
        started_ns: int,
        index: int | None = None,
        principal_segment: str | None = None,
    ) -> Check:
        """The check of ``request``: the body itself, or its ``checks[index]``; one that
        names a policy needs ``policy_found`` (``find_policy``)."""
        if request.limit is None or request.window is None:
            raise Problem(
                422,
                "validation-error",
                f"give `limit` and `window`, or a `policy` - at `{_where(index)}`",
            )
        if request.limit * request.window > MAX_LIMIT_WINDOW:
            raise Problem(
                422,
                "validation-error",
                f"limit × window = {request.limit * request.window} exceeds "
                f"{MAX_LIMIT_WINDOW} (limit·seconds) - at `{_where(index)}`",
            )
        ip = request.ip
        if ip is not None:
            try:
                ip = normalize_ip(ip)
            except InvalidInput as exc:
                raise Problem(422, "validation-error", f"{exc} - at `{_where(index)}.ip`") from None
        return Check(
            tenant,
            request.key,
            request.algorithm or self._default_algorithm,
            request.limit,
            request.window * 1000,
            request.cost,
            ip,
            request.user_id,
            request.route,
            request.user_agent,
            request.segment or principal_segment,
            started_ns,
        )

    async def find_policy(
        self, tenant: str, request: CheckRequest, index: int | None = None
    ) -> tuple[Policy, Overrides]:
        """The policy ``request`` names, with its overrides; a 422 naming the field if the
        request also gives ``limit``/``window`` or the tenant has no such policy."""
        found = self.cached_policy(tenant, request, index)
        if found is not None:
            return found
        name = request.policy
        assert name is not None
        assert self._policies is not None
        try:
            return await self._policies.get(tenant, name)
        except UnknownPolicy as exc:
            raise Problem(422, "unknown-policy", f"{exc} - at `{_where(index)}.policy`") from None

    def to_policy_check(
        self,
        tenant: str,
        request: CheckRequest,
        found: tuple[Policy, Overrides],
        started_ns: int,
        index: int | None = None,
        principal_segment: str | None = None,
    ) -> Check:
        """The check of a ``request`` that names the policy ``found``: the windows of the
        override of ``request.key`` that applies, else the policy's own."""
        resolved = resolve(*found, request.key)
        return self.resolved_check(tenant, request, resolved, started_ns, index, principal_segment)

    def resolved_check(
        self,
        tenant: str,
        request: CheckRequest,
        resolved: Resolved,
        started_ns: int,
        index: int | None = None,
        principal_segment: str | None = None,
    ) -> Check:
        """``to_policy_check`` once the policy is resolved for ``request.key``."""
        ip = request.ip
        if ip is not None:
            try:
                ip = normalize_ip(ip)
            except InvalidInput as exc:
                raise Problem(422, "validation-error", f"{exc} - at `{_where(index)}.ip`") from None
        if not resolved.items:  # made by hand, not by ``resolve``
            resolved = compiled(resolved)
        first = resolved.limits[0]
        # ``policy_check``, inlined: this runs for every check by policy
        return Check(
            tenant,
            request.key,
            resolved.algorithm or request.algorithm or self._default_algorithm,
            first.limit,
            first.window * 1000,
            request.cost,
            ip,
            request.user_id,
            request.route,
            request.user_agent,
            request.segment or principal_segment,
            started_ns,
            resolved.windows_ms,
            resolved.policy,
            resolved.shadow,
        )

    def cached_policy(
        self, tenant: str, request: CheckRequest, index: int | None = None
    ) -> tuple[Policy, Overrides] | None:
        """``find_policy`` without I/O: its 422s, else the policy if the copy holds it (None:
        ask ``find_policy``)."""
        if request.limit is not None or request.window is not None:
            raise Problem(
                422,
                "validation-error",
                f"give `limit` and `window`, or a `policy`, not both - at `{_where(index)}`",
            )
        if self._policies is None:
            raise Problem(422, "validation-error", "this server has no policies")
        assert request.policy is not None
        return self._policies.cached(tenant, request.policy)

    def prepare(
        self,
        principal: Principal,
        request: CheckRequest,
        started: int,
        found: tuple[Policy, Overrides] | None = None,
        index: int | None = None,
    ) -> Prepared:
        """The check of ``request``; one that names a policy needs the policy ``found``."""
        if request.policy is None:
            check = self.to_check(principal.tenant, request, started, index, principal.segment)
            return Prepared(check, None)
        assert found is not None
        resolved = resolve(*found, request.key)
        return Prepared(
            self.resolved_check(
                principal.tenant, request, resolved, started, index, principal.segment
            ),
            resolved,
        )

    def answer(self, prepared: Prepared, outcome: Outcome) -> Reply:
        """The answer to a checked request: for a policy, the answer and the headers
        describe the window that decided, ``RateLimit-Policy`` lists every window."""
        check, resolved = prepared
        if resolved is None:
            result = to_result(outcome, check.limit)
            headers: Headers = [
                (b"content-type", JSON),
                (
                    b"ratelimit-policy",
                    b'"default";q=%d;w=%d' % (check.limit, check.window_ms // 1000),
                ),
                (b"ratelimit", b'"default";r=%d;t=%d' % (result.remaining, result.reset_in)),
            ]
            decided, answer = check, outcome
        else:
            decided, answer, window = conclude(check, outcome)
            result = to_result(answer, decided.limit)
            item = resolved.items[window]
            headers = [
                (b"content-type", JSON),
                (b"ratelimit-policy", resolved.header),
                (b"ratelimit", b'"%s";r=%d;t=%d' % (item, result.remaining, result.reset_in)),
            ]
        if result.retry_after is not None:
            headers.append((b"retry-after", b"%d" % result.retry_after))
        return Reply(headers, _encoder.encode(result), decided, outcome, answer)

    async def answer_check(self, principal: Principal, body: bytes, started: int) -> Reply:
        """Decide the check ``body`` asks for (the key's signature already verified)."""
        request: CheckRequest = decode(check_decoder, body)
        found = None
        if request.policy is not None:
            found = await self.find_policy(principal.tenant, request)
        prepared = self.prepare(principal, request, started, found)
        outcome = (await self._decider.decide([prepared.check], principal.fail_mode))[0]
        return self.answer(prepared, outcome)

    async def check(self, scope: Scope, receive: Any, send: Any) -> None:
        started = time.perf_counter_ns()
        # most requests' keys are cached: answered without awaiting a coroutine
        principal = cached_principal(self._auth, scope) or await authenticate(
            self._auth, scope, self._api_limits
        )
        body = await read_body(scope, receive, self._max_body)
        signing_key = principal.signing_key
        if signing_key is not None:  # a signed key: the only extra step
            await verify_signature(signing_key, scope, body, self._api_limits)
        reply = await self.answer_check(principal, body, started)
        await respond(send, 200, reply.body, reply.headers)
        self.record_reply(started, reply)

    def record_reply(self, started: int, reply: Reply) -> None:
        self.record(
            started, reply.decided, reply.outcome, reply.answer, self._metrics.check_seconds
        )

    def record(
        self,
        started: int,
        decided: Check,
        outcome: Outcome,
        answer: Outcome,
        latencies: Latencies,
    ) -> None:
        """What follows one answered check: its decision emitted (as the store decided it,
        for the window that decided), counted as answered, and its time observed."""
        elapsed = time.perf_counter_ns() - started
        if self._emits:
            self._sink.emit(
                [Decision(time.time_ns() // 1_000_000, decided, outcome, elapsed // 1000)]
            )
        metrics = self._metrics
        metrics.count_decision(answer.allowed, answer.reason)
        if answer is not outcome:  # a shadow policy's would-be denial
            metrics.count_shadow_denial(outcome.reason)
        latencies.observe(elapsed / 1e9)
        if metrics.shared:
            metrics.flush()

    def cached_policies(
        self, tenant: str, request: BatchRequest
    ) -> list[tuple[Policy, Overrides] | None] | None:
        """The policy each check of ``request`` names (None for one that names none), from
        the copy; None if one of them must be fetched (``find_policies``)."""
        founds: list[tuple[Policy, Overrides] | None] = []
        for index, item in enumerate(request.checks):
            if item.policy is None:
                founds.append(None)
                continue
            found = self.cached_policy(tenant, item, index)
            if found is None:
                return None
            founds.append(found)
        return founds

    async def find_policies(
        self, tenant: str, request: BatchRequest
    ) -> list[tuple[Policy, Overrides] | None]:
        return [
            None if item.policy is None else await self.find_policy(tenant, item, index)
            for index, item in enumerate(request.checks)
        ]

    def prepare_batch(
        self,
        principal: Principal,
        request: BatchRequest,
        started: int,
        founds: Sequence[tuple[Policy, Overrides] | None],
    ) -> list[Check]:
        tenant, segment = principal.tenant, principal.segment
        return [
            self.to_check(tenant, item, started, index, segment)
            if found is None
            else self.to_policy_check(tenant, item, found, started, index, segment)
            for index, (item, found) in enumerate(zip(request.checks, founds, strict=True))
        ]

    def batch_answer(self, checks: list[Check], outcomes: list[Outcome]) -> BatchReply:
        """The answer to a batch: each check's result in order, a policy's as the window
        that decided (a shadow policy's denial answered allowed)."""
        if any(check.policy is not None for check in checks):
            concluded = [conclude(c, o) for c, o in zip(checks, outcomes, strict=True)]
            decided = [c for c, _, _ in concluded]
            answers = [a for _, a, _ in concluded]
            results = [
                to_result(answer, check.limit)
                for check, answer in zip(decided, answers, strict=True)
            ]
            return BatchReply(
                _encoder.encode(BatchResult(results=results)), decided, outcomes, answers
            )
        results = [
            to_result(outcome, check.limit) for check, outcome in zip(checks, outcomes, strict=True)
        ]
        return BatchReply(_encoder.encode(BatchResult(results=results)), checks, outcomes, outcomes)

    async def answer_batch(self, principal: Principal, body: bytes, started: int) -> BatchReply:
        """Decide the checks ``body`` asks for (the key's signature already verified)."""
        request: BatchRequest = decode(batch_decoder, body)
        founds = await self.find_policies(principal.tenant, request)
        checks = self.prepare_batch(principal, request, started, founds)
        outcomes = await self._decider.decide(checks, principal.fail_mode)
        return self.batch_answer(checks, outcomes)

    async def batch(self, scope: Scope, receive: Any, send: Any) -> None:
        started = time.perf_counter_ns()
        principal = cached_principal(self._auth, scope) or await authenticate(
            self._auth, scope, self._api_limits
        )
        body = await read_body(scope, receive, self._max_batch_body)
        signing_key = principal.signing_key
        if signing_key is not None:
            await verify_signature(signing_key, scope, body, self._api_limits)
        reply = await self.answer_batch(principal, body, started)
        await respond(send, 200, reply.body, [(b"content-type", JSON)])
        self.record_batch(started, reply)

    def record_batch(self, started: int, reply: BatchReply) -> None:
        """What follows an answered batch: its decisions emitted, counted, timed."""
        elapsed = time.perf_counter_ns() - started
        if self._emits:
            ts_ms = time.time_ns() // 1_000_000
            latency_us = elapsed // 1000
            self._sink.emit(
                [
                    Decision(ts_ms, check, outcome, latency_us)
                    for check, outcome in zip(reply.checks, reply.outcomes, strict=True)
                ]
            )
        metrics = self._metrics
        for outcome, answer in zip(reply.outcomes, reply.answers, strict=True):
            if answer is not outcome:  # a shadow policy's would-be denial
                metrics.count_shadow_denial(outcome.reason)
        metrics.count_decisions(reply.answers)
        metrics.batch_seconds.observe(elapsed / 1e9)
        if metrics.shared:
            metrics.flush()
