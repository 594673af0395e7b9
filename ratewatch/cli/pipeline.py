"""``ratewatch pipeline``: the embedded pipeline worker that ``ratewatch up`` supervises.

It owns chDB: applies the schema, writes the decisions it reads from the Valkey event
stream (exactly once, see ``stream/handlers.py``), drains the audit outbox into the audit
log and the alert outbox into the alerts table (``stream/outbox_drain.py``), announces the
alerts to the tenants' webhooks (``webhooks/worker.py``), detects abuse
in the same stream and blocks it (``detectors/service.py``), and answers other
processes' read-only queries on the query socket.  Every chDB call runs on one dedicated thread.
With ``--metrics-port`` it serves the consumer's, the drains' and the detection's metrics.
"""

from __future__ import annotations

from pathlib import Path

import click

from ratewatch.cli.metrics import metrics_endpoint, metrics_options
from ratewatch.cli.options import (
    batch_bounds,
    batch_options,
    data_dir_option,
    key_secret,
    option,
    run,
    user_errors,
    webhooks_allow_private_option,
)
from ratewatch.processes.limiter_load import DEFAULT_BUSY_CORES
from stream.deferral import DEFAULT_MAX_SECONDS


@click.command(hidden=True)
@data_dir_option
@option("--redis-url", required=True, help="The Redis holding the event stream.")
@option("--clickhouse-url", default=None, help="Default: chdb:///<data-dir>/clickhouse.")
@option("--key-prefix", default="rw", show_default=True)
@webhooks_allow_private_option
@batch_options
@metrics_options
@option(
    "--hold-for",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The limiter's pid file: hold the inserts while the limiter is busy.",
)
@option("--hold-above", type=click.FloatRange(0, 64, min_open=True), default=DEFAULT_BUSY_CORES)
@option("--hold-max", type=click.FloatRange(0.1, 600), default=DEFAULT_MAX_SECONDS)
def pipeline(
    data_dir: Path,
    redis_url: str,
    clickhouse_url: str | None,
    key_prefix: str,
    webhooks_allow_private: bool,
    batch_max_decisions: int,
    batch_max_age: float,
    batch_min_decisions: int,
    batch_min_age: float,
    metrics_port: int | None,
    metrics_host: str,
    hold_for: Path | None,
    hold_above: float,
    hold_max: float,
) -> None:
    """Consume the embedded event stream into the analytics store."""
    from ratewatch.processes.optional_imports import REDIS_EXTRAS, SKLEARN_EXTRAS, keep_out

    # pandas (chDB's dependency) and redis-py's extras: nothing here uses them
    keep_out((*SKLEARN_EXTRAS, *REDIS_EXTRAS))
    from analytics.clickhouse import chdb_url
    from ratewatch.cli.analytics import analytics_errors
    from ratewatch.processes.limiter_load import LimiterLoad
    from ratewatch.processes.pipeline import run_pipeline

    batch = batch_bounds(batch_max_decisions, batch_max_age, batch_min_decisions, batch_min_age)

    url = clickhouse_url or chdb_url(data_dir.resolve() / "clickhouse")
    with user_errors():
        secret = key_secret(data_dir)
    with analytics_errors(), metrics_endpoint(metrics_port, metrics_host) as registry:
        run(
            run_pipeline(
                redis_url,
                url,
                key_prefix,
                data_dir.resolve() / "models",
                key_secret=secret,
                webhooks_allow_private=webhooks_allow_private,
                batch=batch,
                metrics=registry,
                busy_checks=None if hold_for is None else LimiterLoad(hold_for, hold_above).busy,
                hold_seconds=hold_max,
            )
        )
