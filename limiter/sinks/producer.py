"""The Kafka side of the decision sink: one aiokafka producer, fed whole rounds of records.

A round is one batch per partition, handed to aiokafka's batch API: the sink does the
batching and the linger itself, so aiokafka's per-message path (and its pure-Python
partitioner, once per message) stays off the event loop's budget.  Partitions follow
Kafka's default (murmur2 of the key), cached per key, so other clients agree on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    RequestTimedOutError,
)
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

from limiter.sinks.rounds import Flight, Round
from stream.events import RESENT_HEADER

log = logging.getLogger("ratewatch.stream")

MAX_BATCH_BYTES = 1024 * 1024
_PARTITION_CACHE = 1 << 16
_UNREACHABLE = (KafkaConnectionError, KafkaTimeoutError, RequestTimedOutError, TimeoutError)
# a record sent again after a send in doubt: the consumer drops it if its event is stored
_RESENT = [(RESENT_HEADER, b"1")]
_FIRST: list[tuple[str, bytes]] = []


class StreamUnavailable(Exception):
    """The broker could not be reached or did not answer in time."""


class _Refused(Exception):
    """The broker answered but would not start an idempotent producer."""


class Producer:
    """One aiokafka producer, created on ``connect`` and again after it fails."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        client_id: str,
        request_timeout_ms: int,
        connect_timeout: float,
        idempotence: bool | None,
        on_delivered: Callable[[int, bool], None],
    ):
        self.bootstrap = bootstrap
        self.topic = topic
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout = connect_timeout
        self.idempotence = idempotence  # None: use it if the broker supports it
        self.last_error: str | None = None
        self._on_delivered = on_delivered  # (events, replayed) per acknowledged batch
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[int] = []
        self._cache: dict[bytes, int] = {}
        self._connecting = asyncio.Lock()

    @property
    def connected(self) -> bool:
        """Started, and the last thing asked of the broker went well."""
        return self.ready and self.last_error is None

    @property
    def ready(self) -> bool:
        producer = self._producer
        if producer is None or not self._partitions:
            return False
        task = producer._sender.sender_task  # a dead sender never delivers again
        return task is not None and not task.done()

    async def connect(self) -> None:
        """Start a producer and learn the topic's partitions; StreamUnavailable if not."""
        async with self._connecting:  # start() and the recovery task may both ask
            if self.ready:
                return
            await self.close(1.0)
            try:
                producer = await self._start(self.idempotence is not False)
            except _Refused as exc:
                log.warning(
                    "Kafka at %s refused an idempotent producer (%r); sending without"
                    " idempotence: a batch in doubt may arrive twice (with the same event_id)",
                    self.bootstrap,
                    exc.__cause__,
                )
                self.idempotence = False
                producer = await self._start(False)
            if self.idempotence is None:
                self.idempotence = True
            self._producer = producer
            await self.probe()

    async def probe(self) -> None:
        """One metadata round trip to the broker; refreshes the topic's partitions."""
        producer = self._producer
        if producer is None:
            raise StreamUnavailable("not connected")
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), self.connect_timeout)
        except (KafkaError, TimeoutError) as exc:
            self.last_error = f"Kafka at {self.bootstrap} did not answer: {exc!r}"
            raise StreamUnavailable(self.last_error) from exc
        try:
            partitions = await asyncio.wait_for(
                producer.partitions_for(self.topic), self.connect_timeout
            )
        except (KafkaError, TimeoutError) as exc:
            self.last_error = f"Kafka at {self.bootstrap} has no topic {self.topic}: {exc!r}"
            raise StreamUnavailable(self.last_error) from exc
        self.last_error = None
        if sorted(partitions) != self._partitions:
            self._partitions = sorted(partitions)
            self._cache.clear()

    async def submit(self, round_: Round) -> None:
        """Hand the round to aiokafka, one batch per partition; each flight gets its future
        as soon as its batch is queued, so a cancelled submit leaves the rest undelivered."""
        producer = self._producer
        if producer is None or not self._partitions:
            raise StreamUnavailable("not connected")
        filling: dict[int, tuple[Any, Flight]] = {}
        batches: list[tuple[int, Any, Flight]] = []
        cache = self._cache
        resent = round_.resent  # the first ``resent`` records carry the header
        headers = _FIRST
        for index, (key, value, ts_ms) in enumerate(round_.records):  # once per decision
            if resent:
                headers = _RESENT if index < resent else _FIRST
            partition = cache.get(key)
            if partition is None:
                partition = self._partition(key)
            entry = filling.get(partition)
            if (
                entry is None
                or entry[0].append(timestamp=ts_ms, key=key, value=value, headers=headers) is None
            ):
                builder = producer.create_batch()
                if builder.append(timestamp=ts_ms, key=key, value=value, headers=headers) is None:
                    raise ValueError(f"a decision event of {len(value)} bytes is too large")
                entry = filling[partition] = (builder, Flight([]))
                batches.append((partition, builder, entry[1]))
                round_.flights.append(entry[1])
            entry[1].indices.append(index)
        for partition, builder, flight in batches:
            flight.future = await producer.send_batch(builder, self.topic, partition=partition)

    async def deliver(self, round_: Round, patience: float) -> bool:
        """Send the round; True once the broker acknowledged all of it within ``patience``
        seconds.  Otherwise ``last_error`` says why; unsettled flights may still land."""
        if not self.ready:
            self.last_error = "not connected to Kafka"
            return False
        deadline = time.monotonic() + patience
        round_.handed = True
        submit = asyncio.create_task(self.submit(round_))
        await asyncio.wait([submit], timeout=patience)
        if not submit.done():
            submit.cancel()
        try:
            await submit
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            self.last_error = "handing the batch to the producer timed out"
        except Exception as exc:  # whatever the failure, the round is spooled
            self.last_error = f"could not hand the batch to the producer: {exc!r}"
        for flight in round_.flights:
            if flight.future is not None:
                flight.future.add_done_callback(self._landed(len(flight.indices), round_.replay))
        unsettled = round_.unsettled()
        if unsettled:
            await asyncio.wait(unsettled, timeout=max(0.0, deadline - time.monotonic()))
        if round_.delivered():
            self.last_error = None
            return True
        error = round_.first_error()
        self.last_error = repr(error) if error else "Kafka did not acknowledge in time"
        return False

    def _landed(self, count: int, replay: bool) -> Callable[[asyncio.Future[object]], None]:
        def landed(future: asyncio.Future[object]) -> None:
            # also retrieves a failure, which asyncio would otherwise log as unretrieved
            if not future.cancelled() and future.exception() is None:
                self._on_delivered(count, replay)

        return landed

    async def close(self, grace: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer, grace)

    def _partition(self, key: bytes) -> int:
        partition = self._cache.get(key)
        if partition is None:
            if len(self._cache) >= _PARTITION_CACHE:
                self._cache.clear()
            partitions = self._partitions
            partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            self._cache[key] = partition
        return partition

    async def _start(self, idempotent: bool) -> AIOKafkaProducer:
        producer = self._new(idempotent)
        try:
            await asyncio.wait_for(producer.start(), self.connect_timeout)
        except (KafkaError, TimeoutError) as exc:
            await self._stop(producer, 1.0)
            if idempotent and self.idempotence is None and not isinstance(exc, _UNREACHABLE):
                raise _Refused from exc  # it answered, so it is there: it refused the feature
            self.last_error = f"cannot reach Kafka at {self.bootstrap}: {exc!r}"
            raise StreamUnavailable(self.last_error) from exc
        return producer

    def _new(self, idempotent: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=idempotent,
            linger_ms=0,  # the sink lingers before building a round
            max_batch_size=MAX_BATCH_BYTES,
            max_request_size=2 * MAX_BATCH_BYTES,
            request_timeout_ms=self.request_timeout_ms,
        )

    @staticmethod
    async def _stop(producer: AIOKafkaProducer, grace: float) -> None:
        """Stop, waiting at most ``grace`` seconds for batches in flight; then abandon them:
        cut the connections and stop the sender, which would otherwise resend them later
        (and, without idempotence, write them twice: they are in the spool)."""
        try:
            await asyncio.wait_for(producer.stop(), grace)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("Kafka producer did not stop in %.1fs (%r): abandoning it", grace, exc)
            with contextlib.suppress(KafkaError, OSError):
                await producer.client.close()
            sender = producer._sender.sender_task
            if sender is not None and not sender.done():
                sender.cancel()
                await asyncio.wait([sender], timeout=1.0)
