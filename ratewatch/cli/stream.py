"""``ratewatch stream``: the analytics consumer of the distributed deployment.

Reads decision events from Kafka and writes them to ClickHouse (chDB in
``<data-dir>/clickhouse`` unless ``--clickhouse-url``).  With ``--redis-url`` it also drains
the audit and the alert outbox of that Redis into their tables and onto their topics,
``ratewatch.audit.v1`` and ``ratewatch.alerts.v1`` (``stream/outbox_drain.py``), and
announces the alerts to the tenants' webhooks (``webhooks/worker.py``).  With
``--metrics-port`` it serves what it does as Prometheus metrics (``stream/consumer_metrics.py``,
``stream/dead_letters.py``, ``stream/outbox_metrics.py``).  It
applies the migrations first, and for chDB it answers read-only queries on the directory's
socket, as chDB belongs to this process while it runs (``ratewatch sql --data-dir D``
works meanwhile).  SIGTERM or Ctrl-C finish and commit the
batch being written, then close chDB.

Defaults that name stream constants are resolved inside the command: the light install
(SDK only) imports this module without the service's libraries.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ratewatch.cli.analytics import analytics_errors, clickhouse_url_option, resolve_url
from ratewatch.cli.metrics import metrics_endpoint, metrics_options
from ratewatch.cli.options import data_dir_option, option, webhooks_allow_private_option

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


@click.command()
@data_dir_option
@clickhouse_url_option
@option("--kafka", required=True, help="Kafka bootstrap servers (host:port[,host:port]).")
@option("--group", default=None, help="Consumer group [default: ratewatch-analytics].")
@option("--topic", default=None, help="Decision topic [default: ratewatch.decisions.v1].")
@option(
    "--session-timeout",
    type=click.FloatRange(min=3),
    default=10.0,
    show_default=True,
    help="Seconds after which the group gives a silent member's partitions to the others.",
)
@option(
    "--retention-days",
    type=click.IntRange(min=1),
    default=None,
    help="Days of raw decisions to keep (as for `ratewatch migrate`); unset: keep the "
    "tables' current retention (30 days for new ones).",
)
@option(
    "--redis-url",
    default=None,
    help="The limiter's Redis: drain its audit and alert outboxes into ClickHouse and Kafka, "
    "and deliver the alerts to webhooks.",
)
@option("--key-prefix", default="rw", show_default=True, help="The limiter's Redis key prefix.")
@webhooks_allow_private_option
@metrics_options
def stream(
    data_dir: Path,
    clickhouse_url: str | None,
    kafka: str,
    group: str | None,
    topic: str | None,
    session_timeout: float,
    retention_days: int | None,
    redis_url: str | None,
    key_prefix: str,
    webhooks_allow_private: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Consume decision events from Kafka into ClickHouse, each stored exactly once."""
    with analytics_errors():
        from stream.events import DECISIONS_TOPIC
        from stream.kafka_consumer import DEFAULT_GROUP, ConsumerSettings

        try:
            settings = ConsumerSettings(
                bootstrap=kafka,
                topic=topic or DECISIONS_TOPIC,
                group=group or DEFAULT_GROUP,
                session_timeout_ms=int(session_timeout * 1000),
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        if redis_url is not None:
            from limiter.errors import ConfigError
            from limiter.redis_client import check_redis_url

            try:
                check_redis_url(redis_url)
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from None
        url = resolve_url(data_dir, clickhouse_url)
        with metrics_endpoint(metrics_port, metrics_host) as registry:
            asyncio.run(
                run_stream(
                    url,
                    settings,
                    retention_days,
                    redis_url,
                    key_prefix,
                    webhooks_allow_private=webhooks_allow_private,
                    metrics=registry,
                )
            )


async def run_stream(
    url: str,
    settings: ConsumerSettings,
    retention_days: int | None,
    redis_url: str | None = None,
    key_prefix: str = "rw",
    *,
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
            redis = await connect(redis_url, socket_timeout=5.0)
            outboxes = await _open_outboxes(
                url, redis, key_prefix, settings.bootstrap, executor, OutboxMetrics(metrics)
            )
            webhooks = open_webhook_task(
                redis,
                key_prefix,
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
    """The drains of the limiter's audit and alert outboxes into their tables (inserted on
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
        in_store,
        consumer=socket.gethostname(),
        bootstrap=bootstrap,
        metrics=metrics,
    )
