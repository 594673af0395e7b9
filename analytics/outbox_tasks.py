"""The outbox drains (audit entries, alerts, incident changes) as tasks of the process that owns the
analytics store: ``ratewatch pipeline`` (embedded) and ``ratewatch stream`` (distributed,
which also publishes them to Kafka).

A drain's inserts run on the store's thread (``in_store``), with a ClickHouse client of
their own: the decision store replaces its client after a failure, which would leave a
shared one closed under the drain's writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from analytics.event_log import EventLogWriter
    from stream.outbox_drain import OutboxDrain
    from stream.outbox_metrics import OutboxMetrics

log = logging.getLogger("ratewatch.outbox")

InStore = Callable[..., Awaitable[Any]]  # runs a call on the store's own thread
Closer = Callable[[], Awaitable[object]]
STOP_TIMEOUT = 30.0


class OutboxTask:
    def __init__(
        self,
        drain: OutboxDrain[Any],
        writer: EventLogWriter[Any],
        in_store: InStore,
        closers: Sequence[Closer] = (),
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.drain = drain
        self.stop_timeout = stop_timeout
        self._writer = writer
        self._in_store = in_store
        self._closers = closers
        self._task: asyncio.Task[None] | None = None

    def start(self, stop: asyncio.Event) -> None:
        """Drain until ``stop`` is set.  A drain that ends by itself has failed: it sets
        ``stop`` too, so the process ends and its supervisor starts a fresh one."""
        self._task = asyncio.create_task(
            self.drain.run(stop), name=f"ratewatch-{self.drain.name}-drain"
        )
        self._task.add_done_callback(lambda _: stop.set())

    async def stop(self) -> None:
        """Once ``stop`` is set: wait for the batch in hand (cancel the drain if it takes
        longer than ``stop_timeout``), then close the writer and the clients."""
        task, name = self._task, self.drain.name
        if task is not None:
            done, _ = await asyncio.wait([task], timeout=self.stop_timeout)
            if not done:
                log.warning(
                    "the %s drain did not stop within %.0fs: cancelling it", name, self.stop_timeout
                )
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:
                    log.exception("the %s drain failed", name)
        for close in self._closers:
            try:
                await close()
            except Exception as exc:
                log.warning("closing the %s drain's client failed: %r", name, exc)
        await self._in_store(self._writer.close)


async def open_outbox_tasks(
    url: str,
    redis: Redis,
    audit_stream: str,
    alert_stream: str,
    incident_stream: str,
    in_store: InStore,
    *,
    consumer: str,
    bootstrap: str | None = None,
    metrics: OutboxMetrics | None = None,
) -> list[OutboxTask]:
    """The drains of the audit, the alert and the incident outbox (the streams
    ``audit_stream``, ``alert_stream`` and ``incident_stream`` of ``redis``) into their
    tables at ``url`` and, given a Kafka ``bootstrap``, onto their topics.  ``consumer``
    names the drains in their groups: one name per host, so a restarted process resumes its
    own unacknowledged entries.  ``metrics`` counts what the drains do, per outbox."""
    from analytics.alert_store import AlertLogWriter
    from analytics.audit_store import AuditLogWriter
    from analytics.clickhouse import connect
    from analytics.incident_log import IncidentLogWriter
    from stream import alerts, audit, incidents
    from stream.outbox_drain import ALERT_GROUP, AUDIT_GROUP, INCIDENT_GROUP, OutboxDrain
    from stream.publisher import EventPublisher

    async def task(
        name: str,
        stream: str,
        group: str,
        codec: Any,  # the outbox's contract module: decode, encode
        writer: EventLogWriter[Any],
        topic: str,
    ) -> OutboxTask:
        publish, closers = None, []
        if bootstrap is not None:
            publisher = EventPublisher[Any](
                bootstrap, topic, codec.encode, client_id=f"ratewatch-{name}"
            )
            publish, closers = publisher.publish, [publisher.close]
        write = functools.partial(in_store, writer.write)
        drain = OutboxDrain[Any](
            redis,
            stream,
            codec.decode,
            write,
            publish,
            name=name,
            group=group,
            consumer=consumer,
            metrics=metrics,
        )
        return OutboxTask(drain, writer, in_store, closers)

    def reconnect() -> Any:
        return connect(url)

    return [
        await task(
            "audit",
            audit_stream,
            AUDIT_GROUP,
            audit,
            AuditLogWriter(await in_store(connect, url), reconnect=reconnect),
            audit.AUDIT_TOPIC,
        ),
        await task(
            "alert",
            alert_stream,
            ALERT_GROUP,
            alerts,
            AlertLogWriter(await in_store(connect, url), reconnect=reconnect),
            alerts.ALERTS_TOPIC,
        ),
        await task(
            "incident",
            incident_stream,
            INCIDENT_GROUP,
            incidents,
            IncidentLogWriter(await in_store(connect, url), reconnect=reconnect),
            incidents.INCIDENTS_TOPIC,
        ),
    ]
