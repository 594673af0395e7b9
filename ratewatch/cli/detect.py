"""``ratewatch detect``: abuse detection of the distributed deployment, on the Kafka
decision topic (``detectors/kafka_source.py``), writing blocks into the limiter's Redis.
The embedded pipeline worker of ``ratewatch up`` runs the same detection on the Valkey
event stream (``detectors/service.py``).  The process owns its models, kept under
``<data-dir>/models``; ``--metrics-port`` serves the loop's metrics
(``detectors/metrics.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ratewatch.cli.metrics import metrics_endpoint, metrics_options
from ratewatch.cli.options import data_dir_option, option, run, user_errors

log = logging.getLogger("ratewatch.detect")

DEFAULT_GROUP = "ratewatch-detect"


@click.command()
@data_dir_option
@option("--kafka", required=True, help="Kafka bootstrap servers (host:port[,host:port]).")
@option("--redis-url", required=True, help="The limiter's Redis, where blocks are written.")
@option("--key-prefix", default="rw", show_default=True, help="The limiter's Redis key prefix.")
@option("--group", default=DEFAULT_GROUP, show_default=True, help="Kafka consumer group.")
@option(
    "--interval",
    type=click.FloatRange(min=0.5, max=60),
    default=2.0,  # detectors.runner.EVALUATION_INTERVAL (not imported: it loads polars)
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
    from ratewatch.processes.optional_imports import REDIS_EXTRAS, SKLEARN_EXTRAS, keep_out

    # pandas (chDB's dependency) and redis-py's extras: nothing here uses them
    keep_out((*SKLEARN_EXTRAS, *REDIS_EXTRAS))
    with user_errors():
        from limiter.redis_client import check_redis_url
        from limiter.settings import check_bootstrap

        check_redis_url(redis_url)
        check_bootstrap(kafka)
    with metrics_endpoint(metrics_port, metrics_host) as registry:
        from ratewatch.processes.detect import run_detect

        run(run_detect(data_dir, kafka, redis_url, key_prefix, group, interval, registry))
