"""``ratewatch serve``: the limiter's HTTP API alone (the distributed deployment's scaled
process, and the child that ``ratewatch up`` supervises): the raw check path and the
control plane in one ASGI app (``control/app.py``), one process or several workers on one
socket (``ratewatch/processes/serving.py``)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ratewatch.cli.options import (
    api_limit_values,
    backlog_options,
    key_secret,
    limiter_options,
    service_options,
    user_errors,
)

if TYPE_CHECKING:
    from limiter.api_limits import ApiLimits, Rate


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
    api_limits: dict[str, str] | None = None,
    trusted_proxies: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    *,
    header_timeout: float = 10.0,
    body_timeout: float = 30.0,
    keep_alive_timeout: float = 5.0,
    max_connections: int = 1000,
    max_header_bytes: int = 64 * 1024,
    metrics_token: str | None = None,
    tracing: bool = False,
    denial_cache_entries: int = 0,
    grpc_port: int | None = None,
) -> None:
    from ratewatch.processes.optional_imports import REDIS_EXTRAS, UVICORN_EXTRAS, keep_out

    keep_out(UVICORN_EXTRAS if tracing else (*UVICORN_EXTRAS, *REDIS_EXTRAS))
    with user_errors():
        from ratewatch.processes.serving import (
            listen,
            parse_trusted_proxies,
            prepare_metrics_dir,
            run_server,
            run_workers,
        )
        from ratewatch.processes.tls import tls_files

        # every file and value is checked before anything starts
        tls = tls_files(tls_cert, tls_key)
        proxies = parse_trusted_proxies(trusted_proxies)
        metrics_dir = prepare_metrics_dir(data_dir, workers)

        from control.app import create_app
        from limiter.redis_client import redact
        from limiter.settings import LimiterSettings
        from limiter.state.bootstrap import check_bootstrap_key
        from limiter.state.tenants import parse_fail_mode
        from limiter.tracing import check_tracing
        from ratewatch.processes.http_protocol import ConnectionLimits

        api_rates = parse_api_limits(api_limits or {})
        tracing = check_tracing(tracing)  # each worker starts its own exporter

        bootstrap_key = os.environ.get("RATEWATCH_BOOTSTRAP_KEY") or None
        if bootstrap_key is not None:
            check_bootstrap_key(bootstrap_key)  # before anything is created or started
        secret = key_secret(data_dir)

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
                api_limits=api_rates,
                header_timeout=header_timeout,
                body_timeout=body_timeout,
                keep_alive_timeout=keep_alive_timeout,
                max_connections=max_connections,
                max_header_bytes=max_header_bytes,
                metrics_token=metrics_token or None,
                tracing=tracing,
                trusted_proxies=proxies,
                denial_cache_entries=denial_cache_entries,
                grpc_port=grpc_port,
                workers=workers,
                grpc_tls=(tls.cert, tls.key) if tls is not None else None,
            )

        def serve(worker: int) -> bool:
            # worker 0 alone registers the bootstrap key, so a new one is made only once
            settings = settings_of(worker)
            app = create_app(
                settings,
                secret,
                bootstrap_key=bootstrap_key if worker == 0 else None,
                bootstrap=worker == 0,
                on_new_key=_show_new_key,
            )
            limits = ConnectionLimits(
                settings.header_timeout,
                settings.body_timeout,
                settings.max_header_bytes,
                settings.max_connections,
            )
            return run_server(app, sock, limits, settings.keep_alive_timeout, tls, proxies)

        settings_of(0)  # validated before anything starts
        try:
            sock = listen(host, port)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        if grpc_port is not None:
            try:
                check_grpc_port(host, grpc_port)
            except click.ClickException:
                sock.close()
                raise
        scheme = "https" if tls is not None else "http"
        click.echo(
            f"RateWatch listening on {scheme}://{host}:{port} (Redis: {redact(redis_url)}, "
            f"{workers} worker{'s' if workers > 1 else ''})"
        )
        click.echo(f"Console: {console_url(scheme, host, port)}")
        if grpc_port is not None:
            click.echo(f"Envoy rate limit service (gRPC) on {host}:{grpc_port}")
        if workers == 1:
            if not serve(0):
                raise click.ClickException(f"the limiter did not start on {host}:{port}")
        else:
            run_workers(workers, serve, metrics_dir)


def check_grpc_port(host: str, port: int) -> None:
    """A one-line error now if the gRPC port cannot be bound: the workers bind it
    themselves (grpcio must not be loaded before they fork), and would fail one by one."""
    # looked up, not imported: importing grpcio before the fork is what must not happen
    if importlib.util.find_spec("grpc") is None or importlib.util.find_spec("envoy") is None:
        raise click.ClickException(
            "--grpc-port needs the gRPC extra: pip install 'ratewatch[server,grpc]'"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise click.ClickException(f"cannot listen on {host}:{port} (gRPC): {reason}") from None


def parse_api_limits(texts: dict[str, str]) -> ApiLimits:
    """The API limit options' values (``API_LIMIT_OPTIONS``), each error naming its option."""
    from limiter.api_limits import ApiLimits, parse_rate
    from limiter.errors import ConfigError

    rates: dict[str, Rate | None] = {}
    for name, text in texts.items():
        try:
            rates[_LIMIT_FIELDS[name]] = parse_rate(text)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return ApiLimits(**rates)


_LIMIT_FIELDS = {
    "--control-rate-limit": "control",
    "--test-ping-rate-limit": "test_ping",
    "--privacy-rate-limit": "privacy",
    "--auth-failure-limit": "auth_failures",
}


def console_url(scheme: str, host: str, port: int) -> str:
    """Where a browser on this machine opens the console: an address that listens on every
    interface is reached at the loopback one."""
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in shown:  # an IPv6 address is bracketed in a URL
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{port}/"


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
@limiter_options
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
    control_rate_limit: str,
    test_ping_rate_limit: str,
    privacy_rate_limit: str,
    auth_failure_limit: str,
    trusted_proxies: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    header_timeout: float,
    body_timeout: float,
    keep_alive_timeout: float,
    max_connections: int,
    max_header_bytes: int,
    metrics_token: str | None,
    tracing: bool,
    denial_cache_entries: int,
    grpc_port: int | None,
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
        api_limit_values(
            control_rate_limit, test_ping_rate_limit, privacy_rate_limit, auth_failure_limit
        ),
        trusted_proxies,
        tls_cert,
        tls_key,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout,
        max_connections=max_connections,
        max_header_bytes=max_header_bytes,
        metrics_token=metrics_token,
        tracing=tracing,
        denial_cache_entries=denial_cache_entries,
        grpc_port=grpc_port,
    )
