"""``ratewatch stream``'s process: decision events from Kafka into ClickHouse, exactly once;
with the limiter's Redis, also its audit, alert and incident outboxes (into their tables
and onto their topics) and the alerts' webhook deliveries; for chDB, the query socket."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from redis.asyncio import Redis

    from analytics.event_store import ClickHouseEventStore
    from analytics.outbox_tasks import OutboxTask
    from stream.kafka_consumer import ConsumerSettings
    from stream.outbox_metrics import OutboxMetrics
    from webhooks.task import WebhookTask

log = logging.getLogger("ratewatch.stream")
T = TypeVar("T")


async def run_stream(
    url: str,
    settings: ConsumerSettings,
    retention_days: int | None,
    redis_url: str | None = None,
    key_prefix: str = "rw",
    *,
    key_secret: bytes | None = None,
    webhooks_allow_private: bool = False,
    metrics: CollectorRegistry | None = None,
) -> None:
    """Migrate, serve queries (chDB), consume (and drain the outboxes of ``redis_url``,
    delivering its alerts to webhooks) until SIGTERM/SIGINT, then close in order.  What
    it does is counted on ``metrics`` (a registry of its own if None)."""
    from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

    from analytics.clickhouse import chdb_path, query_socket_path, redact
    from analytics.errors import AnalyticsError
    from analytics.query_server import QueryServer
    from limiter.redis_client import connect
    from stream.consumer_metrics import ConsumerMetrics
    from stream.dead_letters import DeadLetterMetrics
    from stream.kafka_consumer import DecisionConsumer
    from stream.outbox_metrics import OutboxMetrics
    from webhooks.task import open_webhook_task

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # chDB: one thread owns the writer's connection; the query server has its own
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb-writer")
    store = await loop.run_in_executor(executor, _open_store, url, retention_days)
    queries: QueryServer | None = None
    outboxes: list[OutboxTask] = []
    webhooks: WebhookTask | None = None
    redis: Redis | None = None
    try:
        path = chdb_path(url)
        if path is not None:
            queries = QueryServer(url, query_socket_path(path))
            await queries.start()
        if redis_url is not None:
            if key_secret is None:
                raise ValueError("the webhook worker needs the server's key secret")
            redis = await connect(redis_url, socket_timeout=5.0)
            outboxes = await _open_outboxes(
                url, redis, key_prefix, settings.bootstrap, executor, OutboxMetrics(metrics)
            )
            webhooks = open_webhook_task(
                redis,
                key_prefix,
                key_secret,
                consumer=socket.gethostname(),
                allow_private=webhooks_allow_private,
            )
        consumer = DecisionConsumer(
            settings,
            store,
            executor,
            DeadLetterMetrics(metrics),
            consumer_metrics=ConsumerMetrics(metrics),
        )
        store.rejects = consumer.dead_letters
        for outbox in outboxes:
            outbox.start(stopping)
        if webhooks is not None:
            webhooks.start(stopping)
        log.info("joining group %s on %s", settings.group, settings.bootstrap)
        starting = asyncio.ensure_future(consumer.start())
        stop_waiter = asyncio.ensure_future(stopping.wait())
        await asyncio.wait([starting, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
        try:
            if starting.done():
                starting.result()
                click.echo(
                    f"RateWatch stream: {settings.topic} at {settings.bootstrap} → "
                    f"{redact(url)} (group {settings.group})"
                )
                await stop_waiter
            else:
                starting.cancel()
        except KafkaError as exc:
            raise AnalyticsError(
                f"cannot consume from Kafka at {settings.bootstrap}: {exc}"
            ) from exc
        finally:
            stop_waiter.cancel()
            await consumer.stop()
    finally:
        stopping.set()
        for outbox in outboxes:
            await outbox.stop()
        if webhooks is not None:
            await webhooks.stop()
        if redis is not None:
            await redis.aclose()
        if queries is not None:
            await queries.close()
        await loop.run_in_executor(executor, store.close)
        executor.shutdown(wait=True)


def _open_store(url: str, retention_days: int | None) -> ClickHouseEventStore:
    from analytics.clickhouse import connect, redact
    from analytics.event_store import ClickHouseEventStore
    from analytics.migrate import migrate

    client = connect(url)
    try:
        applied = migrate(client, retention_days)
    except BaseException:
        client.close()
        raise
    if applied:
        log.info("applied migrations to %s: %s", redact(url), ", ".join(applied))
    return ClickHouseEventStore(client, reconnect=lambda: connect(url))


async def _open_outboxes(
    url: str,
    redis: Redis,
    key_prefix: str,
    bootstrap: str,
    executor: Executor,
    metrics: OutboxMetrics,
) -> list[OutboxTask]:
    """The drains of the limiter's audit, alert and incident outboxes into their tables (inserted on
    the store's thread) and onto their topics."""
    from analytics.outbox_tasks import open_outbox_tasks
    from limiter.keyspace import Keyspace

    loop = asyncio.get_running_loop()

    async def in_store(call: Callable[..., T], *args: Any) -> T:
        return await loop.run_in_executor(executor, call, *args)

    # one consumer per host: a restarted container resumes its own unacknowledged entries
    return await open_outbox_tasks(
        url,
        redis,
        Keyspace(key_prefix).audit,
        Keyspace(key_prefix).alerts,
        Keyspace(key_prefix).incident_log,
        in_store,
        consumer=socket.gethostname(),
        bootstrap=bootstrap,
        metrics=metrics,
    )
