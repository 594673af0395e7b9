"""``ratewatch serve``: the limiter's HTTP API alone (the distributed deployment's scaled
process, and the child that ``ratewatch up`` supervises): the raw check path and the
control plane in one ASGI app (``control/app.py``), one process or several workers on one
socket (``ratewatch/processes/serving.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ratewatch.cli.options import backlog_options, key_secret, service_options, user_errors


def _serve(
    host: str,
    port: int,
    data_dir: Path,
    redis_url: str,
    fail_mode: str,
    key_prefix: str,
    kafka: str | None,
    clickhouse_url: str | None,
    redis_events: bool = False,
    workers: int = 1,
    webhooks_allow_private: bool = False,
    backlog_max_mb: int = 256,
    backlog_max_age: float = 300.0,
) -> None:
    with user_errors():
        from ratewatch.processes.serving import listen, prepare_metrics_dir, run_server, run_workers

        metrics_dir = prepare_metrics_dir(data_dir, workers)

        from control.app import create_app
        from limiter.redis_client import redact
        from limiter.settings import LimiterSettings
        from limiter.state.tenants import parse_fail_mode

        secret = key_secret(data_dir)
        bootstrap_key = os.environ.get("RATEWATCH_BOOTSTRAP_KEY") or None

        def settings_of(worker: int) -> LimiterSettings:
            return LimiterSettings(
                redis_url=redis_url,
                data_dir=data_dir,
                host=host,
                port=port,
                key_prefix=key_prefix,
                fail_mode=parse_fail_mode(fail_mode),
                kafka=kafka or None,
                redis_events=redis_events,
                backlog_max_bytes=backlog_max_mb << 20,
                backlog_max_age=backlog_max_age,
                worker=worker,
                metrics_dir=metrics_dir,
                clickhouse_url=clickhouse_url or None,
                webhooks_allow_private=webhooks_allow_private,
            )

        def serve(worker: int) -> bool:
            # worker 0 alone registers the bootstrap key, so a new one is made only once
            app = create_app(
                settings_of(worker),
                secret,
                bootstrap_key=bootstrap_key if worker == 0 else None,
                bootstrap=worker == 0,
                on_new_key=_show_new_key,
            )
            return run_server(app, sock)

        settings_of(0)  # validated before anything starts
        try:
            sock = listen(host, port)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        click.echo(
            f"RateWatch listening on http://{host}:{port} (Redis: {redact(redis_url)}, "
            f"{workers} worker{'s' if workers > 1 else ''})"
        )
        if workers == 1:
            if not serve(0):
                raise click.ClickException(f"the limiter did not start on {host}:{port}")
        else:
            run_workers(workers, serve, metrics_dir)


def _show_new_key(api_key: str) -> None:
    click.echo("Created tenant 'default' with an admin API key (shown only this once):")
    click.echo(f"  {api_key}")


@click.command()
@service_options
@click.option(
    "--redis-events",
    is_flag=True,
    hidden=True,
    help="Append decisions to the Redis event stream (the embedded pipeline).",
)
@backlog_options(hidden=True)
def serve(
    host: str,
    port: int,
    data_dir: Path,
    redis_url: str | None,
    kafka: str | None,
    clickhouse_url: str | None,
    fail_mode: str,
    key_prefix: str,
    workers: int,
    webhooks_allow_private: bool,
    redis_events: bool,
    backlog_max_mb: int,
    backlog_max_age: float,
) -> None:
    """Run the limiter API alone (distributed deployment) against --redis-url."""
    if redis_url is None:
        with user_errors():
            from limiter.embedded import running_url

            redis_url = running_url(data_dir)
        if redis_url is None:
            raise click.UsageError(
                "serve needs --redis-url (or a running `ratewatch up` on --data-dir)"
            )
    _serve(
        host,
        port,
        data_dir,
        redis_url,
        fail_mode,
        key_prefix,
        kafka,
        clickhouse_url,
        redis_events,
        workers,
        webhooks_allow_private,
        backlog_max_mb,
        backlog_max_age,
    )
