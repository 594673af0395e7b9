"""``ShouldRateLimit``: the tenant from the call's API key, its descriptors decided in one
atomic call of the same decider the HTTP check uses, the decisions handed to the same sink.

Errors are gRPC statuses, never a crash: UNAUTHENTICATED without a valid key (counted as
a failed authentication of the peer's address, RESOURCE_EXHAUSTED with ``retry-after``
past the limit on those), PERMISSION_DENIED for a signed key (a call carries no
signature), INVALID_ARGUMENT for a descriptor that cannot be decided, NOT_FOUND for a
policy the tenant does not have, UNAVAILABLE when Redis is down and the key (or the
policy) was never seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc

from limiter.algorithms import Algorithm, Outcome
from limiter.api_limits import ApiLimiter, Limited
from limiter.auth import Authenticator, Principal
from limiter.emit import Decision, DecisionSink, NullSink
from limiter.errors import StoreUnavailable
from limiter.failover import FailoverDecider
from limiter.grpc.answers import Verdict, respond
from limiter.grpc.descriptors import InvalidRequest, Planned, plan
from limiter.metrics import LimiterMetrics
from limiter.policies.cache import PolicyCache, UnknownPolicy
from limiter.policies.checks import answered, decided_check, policy_check
from limiter.policies.model import resolve
from limiter.state.apikeys import MAX_KEY_LENGTH
from limiter.store.base import Check

log = logging.getLogger("ratewatch.limiter")

AUTHORIZATION = "authorization"


def bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The API key in the call's ``authorization`` metadata: ``Bearer <key>`` as on HTTP
    (what Envoy's ``initial_metadata`` sends), or the bare key."""
    for name, value in metadata or ():
        if name == AUTHORIZATION:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if text[:7].lower() == "bearer ":
                text = text[7:]
            return text.strip() or None
    return None


def peer_address(peer: str) -> str:
    """The address in a gRPC peer (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return peer


class RateLimitService:
    """The servicer of ``envoy.service.ratelimit.v3.RateLimitService``."""

    def __init__(
        self,
        auth: Authenticator,
        decider: FailoverDecider,
        sink: DecisionSink,
        metrics: LimiterMetrics,
        default_algorithm: Algorithm,
        policies: PolicyCache | None = None,
        api_limits: ApiLimiter | None = None,
    ):
        self._auth = auth
        self._decider = decider
        self._sink = sink
        self._emits = not isinstance(sink, NullSink)
        self._metrics = metrics
        self._algorithm = default_algorithm
        self._policies = policies
        self._api_limits = api_limits  # failed authentication per client address

    async def ShouldRateLimit(  # the protocol's name
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        started = time.perf_counter_ns()
        token = bearer(context.invocation_metadata())  # type: ignore[arg-type]
        principal = None if token is None else self._auth.cached(token)
        if principal is None:
            principal = await self._authenticate(token, context)
        tenant = principal.tenant
        try:
            planned = plan(request, tenant, principal.segment, self._algorithm, started)
            checks = [
                item.check  # a descriptor's own limit, or none: nothing to look up
                if item.policy is None
                else await self._policy_check(tenant, principal.segment, started, item, index)
                for index, item in enumerate(planned)
            ]
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except UnknownPolicy as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except StoreUnavailable:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the policy store is unreachable and this policy is not cached",
            )
        decided = [check for check in checks if check is not None]
        outcomes: list[Outcome] = (
            await self._decider.decide(decided, principal.fail_mode) if decided else []
        )
        verdicts, events, answers = self._verdicts(checks, outcomes)
        response = respond(verdicts)
        elapsed = time.perf_counter_ns() - started
        metrics = self._metrics
        if decided:
            if self._emits:
                ts_ms = time.time_ns() // 1_000_000
                latency_us = elapsed // 1000
                self._sink.emit(
                    [
                        Decision(ts_ms, check, outcome, latency_us)
                        for check, outcome in zip(events, outcomes, strict=True)
                    ]
                )
            metrics.count_decisions(answers)
        metrics.rls_seconds.observe(elapsed / 1e9)
        if metrics.shared:
            metrics.flush()
        return response

    async def _policy_check(
        self, tenant: str, segment: str | None, started_ns: int, item: Planned, index: int
    ) -> Check:
        """The check of a descriptor that names a policy: the windows of the override of
        its key that applies, else the policy's own."""
        name = item.policy
        assert name is not None
        if self._policies is None:
            raise InvalidRequest(f"descriptors[{index}] names a policy: this server has none")
        found = self._policies.cached(tenant, name)
        if found is None:
            try:
                found = await self._policies.get(tenant, name)
            except UnknownPolicy as exc:
                raise UnknownPolicy(f"{exc} - at descriptors[{index}]") from None
        return policy_check(
            tenant,
            item.key,
            resolve(*found, item.key),
            self._algorithm,
            item.cost,
            item.ip,
            None,
            None,
            None,
            segment,
            started_ns,
        )

    def _verdicts(
        self, checks: list[Check | None], outcomes: list[Outcome]
    ) -> tuple[list[Verdict | None], list[Check], list[Outcome]]:
        """Each descriptor's verdict (None: no limit); the decided checks as their events
        tell them (a policy's as the window that decided); what each was answered (in
        shadow mode a policy's denial is answered allowed)."""
        found = iter(outcomes)
        verdicts: list[Verdict | None] = []
        events: list[Check] = []
        answers: list[Outcome] = []
        for check in checks:
            if check is None:
                verdicts.append(None)
                continue
            outcome = next(found)
            if check.policy is None:
                events.append(check)
                answers.append(outcome)
                verdicts.append(Verdict(check.limit, check.window_ms // 1000, outcome))
                continue
            decided = decided_check(check, outcome)
            answer = answered(check, outcome)
            if answer is not outcome:
                self._metrics.count_shadow_denial(outcome.reason)
            events.append(decided)
            answers.append(answer)
            windows = tuple((limit, window_ms // 1000) for limit, window_ms in check.windows)
            verdicts.append(
                Verdict(decided.limit, decided.window_ms // 1000, answer, check.policy, windows)
            )
        return verdicts, events, answers

    async def _authenticate(
        self, token: str | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Principal:
        if token is None:
            await self._failed(context)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "send an API key as the call's 'authorization: Bearer <key>' metadata",
            )
        if len(token) > MAX_KEY_LENGTH:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the API key is {len(token)} characters long: no key is longer than "
                f"{MAX_KEY_LENGTH}",
            )
        try:
            principal = await self._auth.authenticate(token)
        except StoreUnavailable:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the key store is unreachable and this key is not cached",
            )
        if principal is None:
            await self._failed(context)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid or was revoked"
            )
        if principal.signing_key is not None:
            # its requests must be signed, and a gRPC call has no signature to check
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this key requires signed requests, which gRPC calls cannot carry: give "
                "the gateway an unsigned key",
            )
        return principal

    async def _failed(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Count a failed authentication of the peer's address; RESOURCE_EXHAUSTED past
        its limit (as HTTP's 429), with the seconds to wait in ``retry-after``."""
        if self._api_limits is None:
            return
        address = peer_address(context.peer())
        retry_after = await self._api_limits.hit(Limited.AUTH_FAILURE, address)
        if retry_after is not None:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many calls without a valid API key from {address}: retry in {retry_after}s",
                trailing_metadata=(("retry-after", str(retry_after)),),
            )
