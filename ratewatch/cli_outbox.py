"""The audit drain as a task of the process that owns the analytics store: ``ratewatch
pipeline`` (embedded) and ``ratewatch stream`` (distributed, which also publishes to Kafka).

The drain's inserts run on the store's thread (``in_store``), with a ClickHouse client of
their own: the decision store replaces its client after a failure, which would leave a
shared one closed under the audit writer.
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

    from analytics.audit_store import AuditLogWriter
    from stream.audit_drain import AuditDrain, Publish

log = logging.getLogger("ratewatch.audit")

InStore = Callable[..., Awaitable[Any]]  # runs a call on the store's own thread
STOP_TIMEOUT = 30.0


class AuditTask:
    def __init__(
        self,
        drain: AuditDrain,
        writer: AuditLogWriter,
        in_store: InStore,
        closers: Sequence[Callable[[], Awaitable[object]]] = (),
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.drain = drain
        self.stop_timeout = stop_timeout
        self._writer = writer
        self._in_store = in_store
        self._closers = closers
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        redis: Redis,
        stream: str,
        in_store: InStore,
        *,
        consumer: str,
        publish: Publish | None = None,
        closers: Sequence[Callable[[], Awaitable[object]]] = (),
    ) -> AuditTask:
        """A drain of the outbox ``stream`` into the audit log at ``url`` (and ``publish``);
        ``closers`` are awaited once it stopped (the clients it was given)."""
        from analytics.audit_store import AuditLogWriter
        from analytics.clickhouse import connect
        from stream.audit_drain import AuditDrain

        writer = AuditLogWriter(await in_store(connect, url), reconnect=lambda: connect(url))
        write = functools.partial(in_store, writer.write)
        drain = AuditDrain(redis, stream, write, publish, consumer=consumer)
        return cls(drain, writer, in_store, closers)

    def start(self, stop: asyncio.Event) -> None:
        """Drain until ``stop`` is set.  A drain that ends by itself has failed: it sets
        ``stop`` too, so the process ends and its supervisor starts a fresh one."""
        self._task = asyncio.create_task(self.drain.run(stop), name="ratewatch-audit-drain")
        self._task.add_done_callback(lambda _: stop.set())

    async def stop(self) -> None:
        """Once ``stop`` is set: wait for the batch in hand (cancel the drain if it takes
        longer than ``stop_timeout``), then close the writer and the clients."""
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait([task], timeout=self.stop_timeout)
            if not done:
                log.warning(
                    "the audit drain did not stop within %.0fs: cancelling it", self.stop_timeout
                )
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:
                    log.exception("the audit drain failed")
        for close in self._closers:
            try:
                await close()
            except Exception as exc:
                log.warning("closing the audit drain's client failed: %r", exc)
        await self._in_store(self._writer.close)
