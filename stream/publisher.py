"""Outbox events onto their Kafka topic, for the distributed deployment's other readers:
audit events on ``ratewatch.audit.v1`` (a SIEM, an archive), alert events on
``ratewatch.alerts.v1`` (paging, chat, a SOAR).

The outbox drain calls ``publish`` with each batch before it acknowledges the batch in the
outbox, so the topic is at least once: a batch retried after a failed or doubtful send may
arrive twice, with the same ``event_id``s.  Messages are keyed by tenant, so one tenant's
events keep their order within a partition; ``acks="all"``: a message is published once
every in-sync replica has it.  The producer is started on first use, so a broker that is
down when the process starts delays the drain (which retries) instead of failing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

log = logging.getLogger("ratewatch.outbox")


class TenantEvent(Protocol):
    @property
    def tenant(self) -> str: ...


E = TypeVar("E", bound=TenantEvent)


class EventPublisher(Generic[E]):
    """Publishes events encoded by ``encode`` on ``topic``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        encode: Callable[[E], bytes],
        *,
        client_id: str = "ratewatch-outbox",
        request_timeout_ms: int = 15_000,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._encode = encode
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._producer: AIOKafkaProducer | None = None
        self.published = 0

    async def publish(self, events: Sequence[E]) -> None:
        """Send every event and wait until the broker acknowledged all of them; raises
        (KafkaError, TimeoutError) if it did not, and the batch must be sent again."""
        if not events:
            return
        producer = await self._started()
        try:
            futures = [
                await producer.send(self.topic, self._encode(event), key=event.tenant.encode())
                for event in events
            ]
            await asyncio.gather(*futures)
        except (KafkaError, TimeoutError):
            # a producer that failed a send may hold the batch for a later retry of its own;
            # the drain sends the batch again, so start afresh rather than send it twice
            await self.close()
            raise
        self.published += len(events)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await asyncio.wait_for(producer.stop(), 5.0)

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self._client_id,
                acks="all",
                linger_ms=0,  # a batch is sent at once, and waited for as a whole
                request_timeout_ms=self._request_timeout_ms,
            )
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(KafkaError, OSError, TimeoutError):
                    await producer.stop()
                raise
            self._producer = producer
            log.info("publishing to %s at %s", self.topic, self.bootstrap)
        return self._producer
