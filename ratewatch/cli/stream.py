"""``ratewatch stream``: the analytics consumer of the distributed deployment.

Reads decision events from Kafka and writes them to ClickHouse (chDB in
``<data-dir>/clickhouse`` unless ``--clickhouse-url``).  With ``--redis-url`` it also drains
the audit, the alert and the incident outbox of that Redis into their tables and onto their
topics, ``ratewatch.audit.v1``, ``ratewatch.alerts.v1`` and ``ratewatch.incidents.v1``
(``stream/outbox_drain.py``), and
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
from pathlib import Path

import click

from ratewatch.cli.analytics import analytics_errors, clickhouse_url_option, resolve_url
from ratewatch.cli.metrics import metrics_endpoint, metrics_options
from ratewatch.cli.options import (
    batch_bounds,
    batch_options,
    data_dir_option,
    key_secret,
    option,
    user_errors,
    webhooks_allow_private_option,
)


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
    help="The limiter's Redis: drain its audit, alert and incident outboxes into ClickHouse "
    "and Kafka, and deliver the alerts to webhooks.",
)
@option("--key-prefix", default="rw", show_default=True, help="The limiter's Redis key prefix.")
@webhooks_allow_private_option
@batch_options
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
    batch_max_decisions: int,
    batch_max_age: float,
    batch_min_decisions: int,
    batch_min_age: float,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Consume decision events from Kafka into ClickHouse, each stored exactly once."""
    with analytics_errors():
        from stream.events import DECISIONS_TOPIC
        from stream.kafka_consumer import DEFAULT_GROUP, ConsumerSettings

        batch = batch_bounds(batch_max_decisions, batch_max_age, batch_min_decisions, batch_min_age)
        try:
            settings = ConsumerSettings(
                bootstrap=kafka,
                topic=topic or DECISIONS_TOPIC,
                group=group or DEFAULT_GROUP,
                session_timeout_ms=int(session_timeout * 1000),
                batch=batch,
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
        from ratewatch.processes.stream import run_stream

        url = resolve_url(data_dir, clickhouse_url)
        # the webhook worker (with --redis-url) opens the secrets with the server's key secret
        secret = None
        if redis_url is not None:
            with user_errors():
                secret = key_secret(data_dir)
        with metrics_endpoint(metrics_port, metrics_host) as registry:
            asyncio.run(
                run_stream(
                    url,
                    settings,
                    retention_days,
                    redis_url,
                    key_prefix,
                    key_secret=secret,
                    webhooks_allow_private=webhooks_allow_private,
                    metrics=registry,
                )
            )
