"""``ratewatch pipeline``: the embedded pipeline worker that ``ratewatch up`` supervises.

It owns chDB: applies the schema, writes the decisions it reads from the Valkey event
stream (exactly once, see ``stream/handlers.py``), drains the audit outbox into the audit
log and the alert outbox into the alerts table (``stream/outbox_drain.py``), announces the
alerts to the tenants' webhooks (``webhooks/worker.py``), detects abuse
in the same stream and blocks it (``ratewatch/cli/detect.py``), and answers other
processes' read-only queries on the query socket.  Every chDB call runs on one dedicated thread.
With ``--metrics-port`` it serves the consumer's, the drains' and the detection's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ratewatch.cli.metrics import metrics_endpoint, metrics_options
from ratewatch.cli.options import data_dir_option, option, run, webhooks_allow_private_option

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("ratewatch.pipeline")
T = TypeVar("T")


@click.command(hidden=True)
@data_dir_option
@option("--redis-url", required=True, help="The Redis holding the event stream.")
@option("--clickhouse-url", default=None, help="Default: chdb:///<data-dir>/clickhouse.")
@option("--key-prefix", default="rw", show_default=True)
@webhooks_allow_private_option
@metrics_options
def pipeline(
    data_dir: Path,
    redis_url: str,
    clickhouse_url: str | None,
    key_prefix: str,
    webhooks_allow_private: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Consume the embedded event stream into the analytics store."""
    from analytics.clickhouse import chdb_url
    from ratewatch.cli.analytics import analytics_errors

    url = clickhouse_url or chdb_url(data_dir.resolve() / "clickhouse")
    with analytics_errors(), metrics_endpoint(metrics_port, metrics_host) as registry:
        run(
            run_pipeline(
                redis_url,
                url,
                key_prefix,
                data_dir.resolve() / "models",
                webhooks_allow_private=webhooks_allow_private,
                metrics=registry,
            )
        )


async def run_pipeline(
    redis_url: str,
    url: str,
    key_prefix: str,
    model_dir: Path | None = None,
    *,
    webhooks_allow_private: bool = False,
    metrics: CollectorRegistry | None = None,
) -> None:
    from analytics.clickhouse import chdb_path, connect, query_socket_path
    from analytics.event_store import ClickHouseEventStore
    from analytics.migrate import migrate
    from analytics.outbox_tasks import open_outbox_tasks
    from analytics.query_server import QueryServer
    from detectors.metrics import DetectionMetrics
    from limiter.keyspace import Keyspace
    from limiter.redis_client import redis_from_url
    from ratewatch.cli.detect import run_embedded_detection
    from stream.consumer_metrics import ConsumerMetrics
    from stream.dead_letters import DeadLetterMetrics
    from stream.handlers import BatchHandler
    from stream.outbox_metrics import OutboxMetrics
    from stream.redis_consumer import (
        CONSUMER,
        StreamPipeline,
        build_broker,
        ensure_group,
        trim_acknowledged,
    )
    from stream.redis_dead_letters import RedisDeadLetters
    from stream.redis_entries import decode_entry
    from webhooks.task import open_webhook_task

    loop = asyncio.get_running_loop()
    chdb_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb-writer")
    client = await loop.run_in_executor(chdb_thread, connect, url)
    applied = await loop.run_in_executor(chdb_thread, migrate, client)
    if applied:
        log.info("applied migrations %s", ", ".join(applied))
    keyspace = Keyspace(key_prefix)
    redis = redis_from_url(redis_url, 5.0)
    store = ClickHouseEventStore(client, reconnect=lambda: connect(url))
    dead_letters = RedisDeadLetters(
        redis_url, keyspace.events + ":dlq", metrics=DeadLetterMetrics(metrics)
    )
    handler = BatchHandler(
        store, dead_letters, decoder=decode_entry, metrics=ConsumerMetrics(metrics)
    )

    async def in_store(call: Callable[..., T], *args: Any) -> T:
        return await loop.run_in_executor(chdb_thread, call, *args)

    outboxes = await open_outbox_tasks(
        url,
        redis,
        keyspace.audit,
        keyspace.alerts,
        in_store,
        consumer=CONSUMER,
        metrics=OutboxMetrics(metrics),
    )
    webhooks = open_webhook_task(
        redis, key_prefix, consumer=CONSUMER, allow_private=webhooks_allow_private
    )

    stop = asyncio.Event()
    pipeline = StreamPipeline(redis, keyspace.events, handler, store, in_store, stop)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    path = chdb_path(url)
    queries = QueryServer(url, query_socket_path(path)) if path is not None else None
    broker = build_broker(redis_url, pipeline, keyspace.events)
    if queries is not None:
        await queries.start()
    await ensure_group(redis, keyspace.events)
    recovered = await pipeline.recover()
    if recovered:
        log.info("recovered %d entries a previous worker had read but not acknowledged", recovered)
    await broker.start()
    trimmer = asyncio.create_task(trim_acknowledged(redis, keyspace.events))
    for outbox in outboxes:
        outbox.start(stop)
    webhooks.start(stop)
    detection = asyncio.create_task(
        run_embedded_detection(redis, keyspace, stop, model_dir, DetectionMetrics(metrics))
    )
    log.info("pipeline consuming %s into %s", keyspace.events, url.split("?")[0])
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 30)
            stats = handler.stats
            log.info(
                "written %d events in %d batches, %d replayed skipped, %d malformed; %s",
                stats.written,
                stats.batches,
                stats.skipped,
                stats.malformed,
                "; ".join(
                    f"{o.drain.name}s: {o.drain.stats.written} written, "
                    f"{o.drain.stats.malformed} malformed"
                    for o in outboxes
                ),
            )
    finally:
        stop.set()  # also when leaving on an error: the outbox drains stop with the rest
        # the broker finishes the batch in hand (and acknowledges it) before it returns
        await broker.stop()
        for outbox in outboxes:
            await outbox.stop()  # each finishes its batch too
        await webhooks.stop()  # and the deliveries in flight
        await detection
        trimmer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trimmer
        if queries is not None:
            await queries.close()
        await redis.aclose()
        await loop.run_in_executor(chdb_thread, client.close)
        chdb_thread.shutdown()
