"""Decision sinks that stream every decision to the event bus (see ``limiter.emit``).

``KafkaSink`` sends to Kafka and spools to disk while the broker is unreachable.  Importing
this package does not import aiokafka; import ``limiter.sinks.kafka`` for the sink.
"""

from __future__ import annotations

from typing import Protocol

from limiter.emit import DecisionSink


class StreamSink(DecisionSink, Protocol):
    """A sink with a connection to start and a state to show on /health/detailed."""

    async def start(self) -> None: ...

    def status(self) -> dict[str, object]: ...


__all__ = ["StreamSink"]
