"""The tracing of one limiter process: its tracer provider, exporter and traced parts.

Configured by OpenTelemetry's standard variables, read by the SDK itself:
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (and their
``_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``, certificates), ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (parent-based always-on by default, so
a caller's sampling decision in ``traceparent`` is followed) and ``OTEL_BSP_*`` for the
batching.  Only what the extra ships is accepted: the OTLP/HTTP protobuf exporter, the
console one (to look at spans without a collector) or none (trace ids still reach the
decisions); anything else is refused at start, naming the variable.

Spans are exported from a background thread in batches, so a request never waits on the
collector.  Each worker process starts its own (after the fork: a thread does not survive
one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Tracer,
    set_span_in_context,
)

from limiter.algorithms import Outcome
from limiter.coalescer import Decide
from limiter.errors import ConfigError
from limiter.store.base import Check

TRACER_NAME = "ratewatch.limiter"
DEFAULT_SERVICE_NAME = "ratewatch"
STORE_SPAN = "redis check-script"
# a store call carries up to thousands of checks; past this many, its span links to the
# first ones only (a backend shows a few hundred links at best)
MAX_LINKS = 128
# "none": spans are made (so trace ids reach the decisions) but exported nowhere
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf",)


def check_environment(environ: Mapping[str, str]) -> str:
    """The exporter named by ``OTEL_TRACES_EXPORTER``; ConfigError for one not shipped."""
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter not in EXPORTERS:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={exporter!r} is not supported: use one of {', '.join(EXPORTERS)}"
        )
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(name, "").strip().lower()
        if protocol and protocol not in PROTOCOLS:
            raise ConfigError(
                f"{name}={protocol!r} is not supported: the OTLP exporter speaks "
                f"{', '.join(PROTOCOLS)}"
            )
    return exporter


def _processor(exporter: str) -> SpanProcessor | None:
    if exporter == "none":
        return None
    if exporter == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter())
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        # xds-protos (the `grpc` extra) ships a stale copy of opentelemetry-proto's modules
        # (grpc/grpc#42926); whichever package pip installed last owns those files
        raise ConfigError(
            f"the OTLP exporter cannot load its protobuf modules ({exc}); if xds-protos was "
            "installed after opentelemetry-proto, repair it with: "
            "pip install --force-reinstall --no-deps opentelemetry-proto"
        ) from None
    return BatchSpanProcessor(OTLPSpanExporter())


class Tracing:
    """One process's tracer, and the traced versions of the check path's parts."""

    def __init__(self, provider: TracerProvider):
        self._provider = provider
        self.tracer: Tracer = provider.get_tracer(TRACER_NAME)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Tracing:
        exporter = check_environment(environ)
        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        provider = TracerProvider(resource=resource)
        processor = _processor(exporter)
        if processor is not None:
            provider.add_span_processor(processor)
        return cls(provider)

    def check_handler(self, *args: Any, **kwargs: Any) -> Any:
        """The traced check handler, made of ``CheckHandler``'s arguments."""
        from limiter.tracing.handler import TracedCheckHandler

        return TracedCheckHandler(self.tracer, *args, **kwargs)

    def store_call(self, decide: Decide) -> Decide:
        """``decide`` (one coalesced store call), in a span of its own.

        The call serves the checks of many requests, so no request's context is current
        when it runs: its span is a child of its first traced check's span and links to
        every traced check's (up to ``MAX_LINKS``), so each request's trace shows the call
        that decided it."""
        tracer = self.tracer

        async def traced(checks: Sequence[Check]) -> list[Outcome]:
            contexts: list[SpanContext] = [
                check.span
                for check in checks
                if isinstance(check.span, SpanContext) and check.span.trace_flags.sampled
            ]
            if not contexts:
                return await decide(checks)
            with tracer.start_as_current_span(
                STORE_SPAN,
                context=set_span_in_context(NonRecordingSpan(contexts[0])),
                kind=SpanKind.CLIENT,
                links=[Link(context) for context in contexts[:MAX_LINKS]],
                attributes={
                    "db.system.name": "redis",
                    "db.operation.name": "EVALSHA",
                    "ratewatch.checks": len(checks),
                    "ratewatch.traced_checks": len(contexts),
                },
            ):
                return await decide(checks)

        return traced

    async def shutdown(self) -> None:
        """Export what is queued, then stop (in a thread: it may wait on the collector)."""
        await asyncio.to_thread(self._provider.shutdown)
