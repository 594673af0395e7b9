"""The hot path: ``POST /v1/check`` and ``POST /v1/batch`` as raw ASGI handlers.

Per request: the auth cache, one (coalesced) Redis round trip, the emit seam; for a signed
key's request, its signature.  Nothing else that could be done once at start is done here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

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

_check_decoder = msgspec.json.Decoder(CheckRequest)
_batch_decoder = msgspec.json.Decoder(BatchRequest)
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
        name = request.policy
        assert name is not None
        if request.limit is not None or request.window is not None:
            raise Problem(
                422,
                "validation-error",
                f"give `limit` and `window`, or a `policy`, not both - at `{_where(index)}`",
            )
        if self._policies is None:
            raise Problem(422, "validation-error", "this server has no policies")
        found = self._policies.cached(tenant, name)
        if found is not None:
            return found
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
        request: CheckRequest = decode(_check_decoder, body)
        if request.policy is not None:
            await self._policy_check(principal, request, started, send)
            return
        check = self.to_check(principal.tenant, request, started, None, principal.segment)
        outcome = (await self._decider.decide([check], principal.fail_mode))[0]
        result = to_result(outcome, check.limit)
        headers: Headers = [
            (b"content-type", JSON),
            (b"ratelimit-policy", b'"default";q=%d;w=%d' % (check.limit, check.window_ms // 1000)),
            (b"ratelimit", b'"default";r=%d;t=%d' % (result.remaining, result.reset_in)),
        ]
        if result.retry_after is not None:
            headers.append((b"retry-after", b"%d" % result.retry_after))
        await respond(send, 200, _encoder.encode(result), headers)
        self.record(started, check, outcome, outcome, self._metrics.check_seconds)

    async def _policy_check(
        self, principal: Principal, request: CheckRequest, started: int, send: Any
    ) -> None:
        """``check`` for a request that names a policy: the answer and the headers
        describe the window that decided, ``RateLimit-Policy`` lists every window."""
        found = await self.find_policy(principal.tenant, request)
        resolved = resolve(*found, request.key)
        check = self.resolved_check(
            principal.tenant, request, resolved, started, None, principal.segment
        )
        outcome = (await self._decider.decide([check], principal.fail_mode))[0]
        decided, answer, window = conclude(check, outcome)
        result = to_result(answer, decided.limit)
        item = resolved.items[window]
        headers: Headers = [
            (b"content-type", JSON),
            (b"ratelimit-policy", resolved.header),
            (b"ratelimit", b'"%s";r=%d;t=%d' % (item, result.remaining, result.reset_in)),
        ]
        if result.retry_after is not None:
            headers.append((b"retry-after", b"%d" % result.retry_after))
        await respond(send, 200, _encoder.encode(result), headers)
        self.record(started, decided, outcome, answer, self._metrics.check_seconds)

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

    async def batch(self, scope: Scope, receive: Any, send: Any) -> None:
        started = time.perf_counter_ns()
        principal = cached_principal(self._auth, scope) or await authenticate(
            self._auth, scope, self._api_limits
        )
        body = await read_body(scope, receive, self._max_batch_body)
        signing_key = principal.signing_key
        if signing_key is not None:
            await verify_signature(signing_key, scope, body, self._api_limits)
        request: BatchRequest = decode(_batch_decoder, body)
        tenant = principal.tenant
        checks = [
            self.to_check(tenant, item, started, index, principal.segment)
            if item.policy is None
            else self.to_policy_check(
                tenant,
                item,
                await self.find_policy(tenant, item, index),
                started,
                index,
                principal.segment,
            )
            for index, item in enumerate(request.checks)
        ]
        outcomes = await self._decider.decide(checks, principal.fail_mode)
        if any(check.policy is not None for check in checks):
            # as the windows that decided; shadow mode's denials answered allowed
            concluded = [conclude(c, o) for c, o in zip(checks, outcomes, strict=True)]
            decided = [c for c, _, _ in concluded]
            answers = [a for _, a, _ in concluded]
            for outcome, answer in zip(outcomes, answers, strict=True):
                if answer is not outcome:
                    self._metrics.count_shadow_denial(outcome.reason)
            checks, results = (
                decided,
                [
                    to_result(answer, check.limit)
                    for check, answer in zip(decided, answers, strict=True)
                ],
            )
            counted = answers
        else:
            results = [
                to_result(outcome, check.limit)
                for check, outcome in zip(checks, outcomes, strict=True)
            ]
            counted = outcomes
        await respond(
            send, 200, _encoder.encode(BatchResult(results=results)), [(b"content-type", JSON)]
        )
        elapsed = time.perf_counter_ns() - started
        if self._emits:
            ts_ms = time.time_ns() // 1_000_000
            latency_us = elapsed // 1000
            self._sink.emit(
                [
                    Decision(ts_ms, check, outcome, latency_us)
                    for check, outcome in zip(checks, outcomes, strict=True)
                ]
            )
        metrics = self._metrics
        metrics.count_decisions(counted)
        metrics.batch_seconds.observe(elapsed / 1e9)
        if metrics.shared:
            metrics.flush()
