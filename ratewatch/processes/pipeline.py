"""The embedded pipeline worker that ``ratewatch up`` supervises (``ratewatch pipeline``).

It owns chDB: applies the schema, writes the decisions it reads from the Valkey event
stream (exactly once, see ``stream/handlers.py``), drains the audit outbox into the audit
log and the alert outbox into the alerts table (``stream/outbox_drain.py``), announces the
alerts to the tenants' webhooks (``webhooks/worker.py``), detects abuse
in the same stream and blocks it (``detectors/service.py``), and answers other
processes' read-only queries on the query socket.  Every chDB call runs on one dedicated thread.
With ``--metrics-port`` it serves the consumer's, the drains' and the detection's metrics.
With ``busy_checks`` (in ``up``: the limiter's load, ``limiter_load.py``) the consumer holds
its reads and inserts while the checks are busy, for at most ``hold_seconds`` at a time
(``stream/deferral.py``).
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

from stream.deferral import DEFAULT_MAX_SECONDS, Deferral

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from stream.batching import BatchBounds

log = logging.getLogger("ratewatch.pipeline")
T = TypeVar("T")

# the big libraries whose start-up code (registering every function, format and engine)
# runs once: ratewatch/processes/library_pages.py
STARTED_LIBRARIES = ("_chdb.", "_polars_runtime.", "libarrow")


async def run_pipeline(
    redis_url: str,
    url: str,
    key_prefix: str,
    model_dir: Path | None = None,
    *,
    key_secret: bytes,
    webhooks_allow_private: bool = False,
    batch: BatchBounds | None = None,
    metrics: CollectorRegistry | None = None,
    busy_checks: Callable[[], bool] | None = None,
    hold_seconds: float = DEFAULT_MAX_SECONDS,
) -> None:
    from analytics.clickhouse import chdb_path, connect, query_socket_path
    from analytics.event_store import ClickHouseEventStore
    from analytics.migrate import migrate
    from analytics.outbox_tasks import open_outbox_tasks
    from analytics.query_server import QueryServer
    from detectors.fit_process import ProcessFitter
    from detectors.metrics import DetectionMetrics
    from detectors.service import run_embedded_detection
    from limiter.keyspace import Keyspace
    from limiter.redis_client import redis_from_url
    from ratewatch.processes.fit_command import FIT_COMMAND
    from ratewatch.processes.library_pages import page_out
    from stream.consumer_group import trim_acknowledged
    from stream.consumer_metrics import ConsumerMetrics
    from stream.dead_letters import DeadLetterMetrics
    from stream.events import DEAD_LETTER_SUFFIX, decode_entry
    from stream.handlers import BatchHandler
    from stream.outbox_metrics import OutboxMetrics
    from stream.redis_consumer import CONSUMER, StreamPipeline, ensure_group
    from stream.redis_dead_letters import RedisDeadLetters
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
        redis_url, keyspace.events + DEAD_LETTER_SUFFIX, metrics=DeadLetterMetrics(metrics)
    )
    consumer_metrics = ConsumerMetrics(metrics)
    handler = BatchHandler(store, dead_letters, decoder=decode_entry, metrics=consumer_metrics)
    deferral = None
    if busy_checks is not None:
        deferral = Deferral(busy_checks, hold_seconds, on_held=consumer_metrics.held.inc)

    async def in_store(call: Callable[..., T], *args: Any) -> T:
        return await loop.run_in_executor(chdb_thread, call, *args)

    outboxes = await open_outbox_tasks(
        url,
        redis,
        keyspace.audit,
        keyspace.alerts,
        keyspace.incident_log,
        in_store,
        consumer=CONSUMER,
        metrics=OutboxMetrics(metrics),
    )
    webhooks = open_webhook_task(
        redis, key_prefix, key_secret, consumer=CONSUMER, allow_private=webhooks_allow_private
    )

    stop = asyncio.Event()
    pipeline = StreamPipeline(
        redis, keyspace.events, handler, store, in_store, stop, bounds=batch, deferral=deferral
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    path = chdb_path(url)
    queries = QueryServer(url, query_socket_path(path)) if path is not None else None
    if queries is not None:
        await queries.start()
    # before the trimmer and detection's group: the stream is trimmed as its groups read it
    await ensure_group(redis, keyspace.events)
    consumer = asyncio.create_task(pipeline.run(), name="ratewatch-pipeline-consumer")
    # a consumer that ends by itself has failed: the process ends for its supervisor
    consumer.add_done_callback(lambda _: stop.set())
    trimmer = asyncio.create_task(trim_acknowledged(redis, keyspace.events))
    for outbox in outboxes:
        outbox.start(stop)
    webhooks.start(stop)
    detection = asyncio.create_task(
        run_embedded_detection(
            redis,
            keyspace,
            stop,
            model_dir,
            DetectionMetrics(metrics),
            ProcessFitter(command=FIT_COMMAND),
        )
    )
    log.info("pipeline consuming %s into %s", keyspace.events, url.split("?")[0])
    # started: the libraries' start-up code has run and need not stay resident
    released = await asyncio.to_thread(page_out, STARTED_LIBRARIES)
    log.debug("paged out the start-up pages of %d MiB of libraries", released >> 20)
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
        # the consumer finishes the batch in hand (and acknowledges it) before it returns
        await asyncio.wait([consumer])
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
    consumer.result()  # the consumer's failure, if it failed: the process exits with it
