"""The ``ratewatch`` command: the one place that wires the components together.

Every option can also come from the environment as ``RATEWATCH_<OPTION>``.  Errors a user
can cause end in a one-line message and exit status 2 (usage) or 1 (everything else).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

T = TypeVar("T")

SERVER_EXTRA_HINT = "the RateWatch service needs its extra: pip install 'ratewatch[server]'"


def _option(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    envvar = "RATEWATCH_" + name.lstrip("-").replace("-", "_").upper()
    return click.option(name, envvar=envvar, show_envvar=True, **kwargs)


def data_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return _option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("ratewatch-data"),
        show_default=True,
        help="Where embedded state (Valkey data, key secret) lives.",
    )(f)


def redis_url_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return _option(
        "--redis-url", default=None, help="Use this Redis / Valkey instead of the embedded one."
    )(f)


def service_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``up`` and the distributed processes."""
    for decorate in reversed(
        [
            _option("--host", default="127.0.0.1", show_default=True),
            _option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True),
            data_dir_option,
            redis_url_option,
            _option("--kafka", default=None, help="Kafka bootstrap servers (decision stream)."),
            _option("--clickhouse-url", default=None, help="http(s)://… or chdb:///path."),
            _option(
                "--fail-mode",
                type=click.Choice(["open", "closed"]),
                default="open",
                show_default=True,
                help="What to answer while Redis is unreachable.",
            ),
            _option(
                "--key-prefix",
                default="rw",
                show_default=True,
                help="Prefix of every Redis key RateWatch writes.",
            ),
        ]
    ):
        f = decorate(f)
    return f


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into a one-line message and exit status 1."""
    try:
        from limiter.errors import LimiterError
    except ImportError:  # pragma: no cover - the light install
        raise click.ClickException(SERVER_EXTRA_HINT) from None
    try:
        yield
    except LimiterError as exc:
        raise click.ClickException(str(exc)) from None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    with user_errors():
        return asyncio.run(coroutine)


def key_secret(data_dir: Path) -> bytes:
    from limiter.settings import load_or_create_key_secret, parse_key_secret

    configured = os.environ.get("RATEWATCH_KEY_SECRET")
    return parse_key_secret(configured) if configured else load_or_create_key_secret(data_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ratewatch")
def main() -> None:
    """RateWatch: rate limiting with analytics and abuse detection."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _serve(
    host: str,
    port: int,
    data_dir: Path,
    redis_url: str,
    fail_mode: str,
    key_prefix: str,
    kafka: str | None,
    clickhouse_url: str | None,
) -> None:
    with user_errors():
        import uvicorn

        from limiter.http import create_app
        from limiter.settings import LimiterSettings
        from limiter.tenants import parse_fail_mode

        for flag, value in (("--kafka", kafka), ("--clickhouse-url", clickhouse_url)):
            if value:
                logging.getLogger("ratewatch").warning(
                    "%s is accepted but not used yet: this version has no decision stream", flag
                )
        settings = LimiterSettings(
            redis_url=redis_url,
            data_dir=data_dir,
            host=host,
            port=port,
            key_prefix=key_prefix,
            fail_mode=parse_fail_mode(fail_mode),
        )
        app = create_app(
            settings,
            key_secret(data_dir),
            bootstrap_key=os.environ.get("RATEWATCH_BOOTSTRAP_KEY") or None,
            on_new_key=_show_new_key,
        )
        click.echo(f"RateWatch listening on http://{host}:{port} (Redis: {redis_url})")
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=10,
        )
        server = uvicorn.Server(config)
        # uvicorn re-raises SIGINT/SIGTERM once it has shut down; with these handlers in place
        # that returns here, so the caller's cleanup (stopping the embedded Valkey) runs.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: None)
        server.run()
        if not server.started:
            raise click.ClickException(f"the limiter did not start on {host}:{port}")


def _show_new_key(api_key: str) -> None:
    click.echo("Created tenant 'default' with an admin API key (shown only this once):")
    click.echo(f"  {api_key}")


@main.command()
@service_options
def up(
    host: str,
    port: int,
    data_dir: Path,
    redis_url: str | None,
    kafka: str | None,
    clickhouse_url: str | None,
    fail_mode: str,
    key_prefix: str,
) -> None:
    """Run RateWatch on this machine: an embedded Valkey (unless --redis-url) and the API."""
    if redis_url is not None:
        _serve(host, port, data_dir, redis_url, fail_mode, key_prefix, kafka, clickhouse_url)
        return
    with user_errors():
        from limiter.embedded import EmbeddedValkey

        valkey = EmbeddedValkey(data_dir)
        url = valkey.start()
    try:
        _serve(host, port, data_dir, url, fail_mode, key_prefix, kafka, clickhouse_url)
    finally:
        valkey.stop()


@main.command()
@service_options
def serve(
    host: str,
    port: int,
    data_dir: Path,
    redis_url: str | None,
    kafka: str | None,
    clickhouse_url: str | None,
    fail_mode: str,
    key_prefix: str,
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
    _serve(host, port, data_dir, redis_url, fail_mode, key_prefix, kafka, clickhouse_url)


from ratewatch.cli_keys import keys  # noqa: E402  (registers on `main`)

main.add_command(keys)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
