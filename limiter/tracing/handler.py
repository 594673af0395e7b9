"""The traced check handler: ``CheckHandler`` with a server span around each request.

Chosen at start in place of the plain handler when tracing is on, so the plain one carries
no tracing code.  A request's ``traceparent`` (W3C Trace Context) makes its span a child of
the caller's; each check carries the span's trace id into its decision event, so a trace
and the decision it produced join on ``trace_id``.  The span records the tenant and the
outcome (allowed, reason) and the check's numbers, never the key, an address or a user id:
those are the caller's, and the decision event holds them where erasure reaches them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.trace import (
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    format_trace_id,
    get_current_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from limiter.algorithms import REASON_LABELS, Outcome
from limiter.errors import LimiterError
from limiter.http.asgi import Scope
from limiter.http.checks import CheckHandler, Decider
from limiter.http.problems import Problem
from limiter.http.schemas import CheckRequest
from limiter.policies.model import Resolved
from limiter.state.tenants import FailMode
from limiter.store.base import Check

CHECK_SPAN = "POST /v1/check"
BATCH_SPAN = "POST /v1/batch"
# the request headers of W3C Trace Context, as the propagator names them
_TRACE_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
_propagator = TraceContextTextMapPropagator()

Handle = Callable[[Scope, Any, Any], Awaitable[None]]


def trace_headers(scope: Scope) -> dict[str, str]:
    """The request's Trace Context headers, for the propagator."""
    carrier: dict[str, str] = {}
    for name, value in scope["headers"]:
        field = _TRACE_HEADERS.get(name)
        if field is not None:
            carrier[field] = value.decode("latin-1")
    return carrier


class _RecordedDecider:
    """The decider, writing the outcome onto the request's span."""

    def __init__(self, decider: Decider):
        self._decider = decider

    async def decide(self, checks: Sequence[Check], fail_mode: FailMode) -> list[Outcome]:
        outcomes = await self._decider.decide(checks, fail_mode)
        span = get_current_span()
        if span.is_recording() and checks:
            first = checks[0]
            attributes: dict[str, Any] = {
                "ratewatch.tenant": first.tenant,
                "ratewatch.fail_mode": fail_mode.value,
                "ratewatch.checks": len(checks),
            }
            if len(checks) == 1:
                outcome = outcomes[0]
                attributes.update(
                    {
                        "ratewatch.algorithm": first.algorithm.value,
                        "ratewatch.limit": first.limit,
                        "ratewatch.window_s": first.window_ms // 1000,
                        "ratewatch.cost": first.cost,
                        "ratewatch.allowed": outcome.allowed,
                        "ratewatch.reason": REASON_LABELS[outcome.reason],
                        "ratewatch.remaining": outcome.remaining,
                    }
                )
            else:
                attributes["ratewatch.denied"] = sum(not o.allowed for o in outcomes)
            span.set_attributes(attributes)
        return outcomes


def _in_current_trace(check: Check) -> Check:
    """``check`` carrying the current span's trace id and context, if there is a span."""
    context = get_current_span().get_span_context()
    if not context.is_valid:
        return check
    return check._replace(trace_id=format_trace_id(context.trace_id), span=context)


class TracedCheckHandler(CheckHandler):
    def __init__(self, tracer: Tracer, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._tracer = tracer
        self._decider = _RecordedDecider(self._decider)

    def to_check(
        self,
        tenant: str,
        request: CheckRequest,
        started_ns: int,
        index: int | None = None,
        principal_segment: str | None = None,
    ) -> Check:
        check = super().to_check(tenant, request, started_ns, index, principal_segment)
        return _in_current_trace(check)

    def resolved_check(
        self,
        tenant: str,
        request: CheckRequest,
        resolved: Resolved,
        started_ns: int,
        index: int | None = None,
        principal_segment: str | None = None,
    ) -> Check:
        check = super().resolved_check(
            tenant, request, resolved, started_ns, index, principal_segment
        )
        return _in_current_trace(check)

    async def check(self, scope: Scope, receive: Any, send: Any) -> None:
        await self._traced(CHECK_SPAN, "/v1/check", super().check, scope, receive, send)

    async def batch(self, scope: Scope, receive: Any, send: Any) -> None:
        await self._traced(BATCH_SPAN, "/v1/batch", super().batch, scope, receive, send)

    async def _traced(
        self, name: str, route: str, handle: Handle, scope: Scope, receive: Any, send: Any
    ) -> None:
        with self._tracer.start_as_current_span(
            name,
            context=_propagator.extract(trace_headers(scope)),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": route},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await handle(scope, receive, send)
            except Problem as problem:  # the caller's mistake (4xx), or an answer of 5xx
                span.set_attribute("http.response.status_code", problem.status)
                span.set_attribute("error.type", problem.kind)
                if problem.status >= 500:
                    span.set_status(Status(StatusCode.ERROR, problem.detail))
                raise
            except LimiterError as exc:  # answered as a problem by the app
                span.set_attribute("error.type", type(exc).__name__)
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            span.set_attribute("http.response.status_code", 200)
