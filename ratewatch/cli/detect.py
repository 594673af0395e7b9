"""``ratewatch detect``: abuse detection of the distributed deployment; and the same
detection inside the embedded pipeline worker of ``ratewatch up``.

Both wire one ``DetectionLoop``: the detector (``detectors.detector.AbuseDetector``) over
the decisions, and the actions (``detectors.actions.BlockActions``) writing blocks, audit
entries and alerts into the limiter's Redis.  Only the source of decisions differs: a
consumer group on the Valkey event stream (embedded), or a FastStream consumer group on
the Kafka decision topic (``detect``).  The detection process owns its models, kept under
``<data-dir>/models``.  ``detect --metrics-port`` serves the loop's metrics
(``detectors/metrics.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ratewatch.cli.metrics import metrics_endpoint, metrics_options
from ratewatch.cli.options import data_dir_option, option, run, user_errors

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from redis.asyncio import Redis

    from detectors.metrics import DetectionMetrics
    from detectors.runner import DetectionLoop
    from limiter.keyspace import Keyspace

log = logging.getLogger("ratewatch.detect")

DEFAULT_GROUP = "ratewatch-detect"


def build_detection(
    redis: Redis,
    keyspace: Keyspace,
    model_dir: Path | None,
    interval: float,
    metrics: DetectionMetrics | None = None,
) -> DetectionLoop:
    from detectors.actions import BlockActions
    from detectors.detector import AbuseDetector
    from detectors.offenders import OffenderHistory
    from detectors.registry import ModelRegistry
    from detectors.runner import DetectionLoop
    from limiter.state.allowlist import Allowlist
    from limiter.state.blocks import BlockStore
    from limiter.state.tenants import TenantSettingsStore
    from stream.alerts import AlertOutbox
    from stream.audit_outbox import AuditOutbox

    detector = AbuseDetector(registry=ModelRegistry(directory=model_dir, metrics=metrics))
    actions = BlockActions(
        BlockStore(redis, keyspace),
        Allowlist(redis, keyspace),
        TenantSettingsStore(redis, keyspace),
        OffenderHistory(redis, keyspace),
        AuditOutbox(redis, keyspace.audit),
        AlertOutbox(redis, keyspace.alerts),
    )
    return DetectionLoop(detector, actions, interval, metrics)


async def run_embedded_detection(
    redis: Redis,
    keyspace: Keyspace,
    stop: asyncio.Event,
    model_dir: Path | None,
    metrics: DetectionMetrics | None = None,
) -> None:
    """Detect on the Valkey event stream until ``stop`` is set (in the pipeline worker)."""
    from detectors.redis_source import RedisDecisionSource

    loop = build_detection(redis, keyspace, model_dir, 5.0, metrics)
    source = RedisDecisionSource(redis, keyspace.events)
    await source.ensure_group()
    evaluator = asyncio.create_task(loop.run(stop), name="ratewatch-detect")
    log.info("detecting abuse in %s", keyspace.events)
    try:
        while not stop.is_set():
            try:
                events = await source.read()
            except Exception:  # Redis away for a moment: the pipeline survives it too
                log.warning("reading decisions for detection failed", exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            if events:
                loop.observe(events)
    finally:
        evaluator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await evaluator
        log.info("detection stopped: %s", loop.stats)


@click.command()
@data_dir_option
@option("--kafka", required=True, help="Kafka bootstrap servers (host:port[,host:port]).")
@option("--redis-url", required=True, help="The limiter's Redis, where blocks are written.")
@option("--key-prefix", default="rw", show_default=True, help="The limiter's Redis key prefix.")
@option("--group", default=DEFAULT_GROUP, show_default=True, help="Kafka consumer group.")
@option(
    "--interval",
    type=click.FloatRange(min=0.5, max=60),
    default=5.0,
    show_default=True,
    help="Seconds between evaluations.",
)
@metrics_options
def detect(
    data_dir: Path,
    kafka: str,
    redis_url: str,
    key_prefix: str,
    group: str,
    interval: float,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Detect abuse in the decision stream and block it (distributed deployment)."""
    with user_errors():
        from limiter.redis_client import check_redis_url
        from limiter.settings import check_bootstrap

        check_redis_url(redis_url)
        check_bootstrap(kafka)
    with metrics_endpoint(metrics_port, metrics_host) as registry:
        run(_run_detect(data_dir, kafka, redis_url, key_prefix, group, interval, registry))


async def _run_detect(
    data_dir: Path,
    kafka: str,
    redis_url: str,
    key_prefix: str,
    group: str,
    interval: float,
    registry: CollectorRegistry | None,
) -> None:
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    from detectors.metrics import DetectionMetrics
    from limiter.keyspace import Keyspace
    from limiter.redis_client import connect
    from stream.events import DECISIONS_TOPIC, MalformedEvent, decode

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    redis = await connect(redis_url, socket_timeout=5.0)
    metrics = DetectionMetrics(registry)
    loop = build_detection(redis, Keyspace(key_prefix), data_dir / "models", interval, metrics)
    broker = KafkaBroker(
        kafka, apply_types=False, logger=logging.getLogger("ratewatch.detect.faststream")
    )

    async def on_batch(messages: Any) -> None:
        events = []
        for message in messages:
            with contextlib.suppress(MalformedEvent):
                events.append(decode(message))
        loop.observe(events)

    # detection needs the traffic from now on, not the topic's history; a lost batch only
    # shifts a rate, so offsets are committed as the batches arrive
    subscriber = broker.subscriber(
        DECISIONS_TOPIC,
        batch=True,
        group_id=group,
        max_records=5000,
        auto_offset_reset="latest",
        ack_policy=AckPolicy.ACK_FIRST,
        decoder=_raw_values,
    )
    subscriber(on_batch)
    evaluator = asyncio.create_task(loop.run(stop), name="ratewatch-detect")
    await broker.start()
    click.echo(f"detecting abuse in {DECISIONS_TOPIC} at {kafka} as group {group}")
    try:
        await stop.wait()
    finally:
        await broker.stop()
        evaluator.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await evaluator
        await redis.aclose()
        log.info("detection stopped: %s", loop.stats)


async def _raw_values(message: Any) -> Any:
    # a batch message's raw records: their values are the encoded events
    return [record.value for record in message.raw_message]
