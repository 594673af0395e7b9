"""Client spans for the SDK's calls, when OpenTelemetry is installed and not disabled.

A client made while ``opentelemetry-api`` is importable (``pip install 'ratewatch[otel]'``,
or any app that uses OpenTelemetry) and ``OTEL_SDK_DISABLED`` is not ``true`` wraps each call
in a client span and sends its W3C ``traceparent``, so the service's span of the check is
that span's child.  The application owns the tracer provider and the exporter: with none
configured the spans are OpenTelemetry's no-op ones.  Without OpenTelemetry a client takes
the plain path, decided once when it is made.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

TRACER_NAME = "ratewatch.client"


class ClientTracing:
    """Spans of one client's requests to one service."""

    def __init__(self, tracer: Tracer, base_url: str):
        from opentelemetry.propagate import inject
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._tracer = tracer
        self._inject = inject
        self._kind = SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self._base_url = base_url

    @contextmanager
    def request(self, path: str) -> Iterator[tuple[dict[str, str], Span]]:
        """A client span for ``POST path``; yields the headers that carry its context
        (to send with the request) and the span (for ``answered``)."""
        with self._tracer.start_as_current_span(
            f"POST {path}",
            kind=self._kind,
            attributes={
                "http.request.method": "POST",
                "url.full": self._base_url + path,
            },
        ) as span:
            headers: dict[str, str] = {}
            self._inject(headers)
            yield headers, span

    def answered(self, span: Span, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_status(self._error)


def client_tracing(base_url: str) -> ClientTracing | None:
    """The tracing of a client of ``base_url``, or None when OpenTelemetry is not installed
    or is disabled (``OTEL_SDK_DISABLED=true``)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return ClientTracing(trace.get_tracer(TRACER_NAME), base_url)
