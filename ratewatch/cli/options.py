"""Options and error handling shared by the ``ratewatch`` commands."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

# the standard library only: the light install (SDK only) imports this module too
from ratewatch.processes.limiter_load import DEFAULT_BUSY_CORES
from stream.batching import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_DECISIONS,
    DEFAULT_MIN_AGE,
    DEFAULT_MIN_DECISIONS,
    MAX_AGE_LIMIT,
    MAX_DECISIONS_LIMIT,
    BatchBounds,
)
from stream.deferral import DEFAULT_MAX_SECONDS

T = TypeVar("T")

SERVER_EXTRA_HINT = "the RateWatch service needs its extra: pip install 'ratewatch[server]'"


def option(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    envvar = "RATEWATCH_" + name.lstrip("-").replace("-", "_").upper()
    return click.option(name, envvar=envvar, show_envvar=True, **kwargs)


def data_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("ratewatch-data"),
        show_default=True,
        help="Where embedded state (Valkey data, key secret) lives.",
    )(f)


def redis_url_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return option(
        "--redis-url", default=None, help="Use this Redis / Valkey instead of the embedded one."
    )(f)


def webhooks_allow_private_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return option(
        "--webhooks-allow-private",
        is_flag=True,
        default=False,
        help="Let webhooks target loopback and private addresses (refused by default, "
        "against SSRF).",
    )(f)


def backlog_options(hidden: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The bounds of the embedded decision stream, past which /health/detailed reports it
    behind: ``up`` passes them on to its limiter."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = option(
            "--backlog-max-age",
            type=click.FloatRange(1, 86400),
            default=300.0,
            show_default=True,
            hidden=hidden,
            callback=_finite,
            help="Seconds a decision may wait in the Valkey stream to be stored before "
            "/health/detailed reports degraded (nothing is dropped).",
        )(f)
        return option(
            "--backlog-max-mb",
            type=click.IntRange(1, 1 << 20),
            default=256,
            show_default=True,
            hidden=hidden,
            help="Megabytes the Valkey stream may hold before /health/detailed reports "
            "degraded (nothing is dropped).",
        )(f)

    return decorate


def connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """What bounds the limiter's HTTP clients and who may read its metrics: ``serve`` builds
    its settings of them, ``up`` passes them on to its limiter (docs/security.md)."""
    for decorate in reversed(
        [
            option(
                "--header-timeout",
                type=click.FloatRange(0.1, 3600),
                default=10.0,
                show_default=True,
                callback=_finite,
                help="Seconds a client has to send a request's headers (from its first byte, "
                "or from connecting); 408 and closed after.",
            ),
            option(
                "--body-timeout",
                type=click.FloatRange(0.1, 3600),
                default=30.0,
                show_default=True,
                callback=_finite,
                help="Seconds a client has to send a request's body after its headers; 408 "
                "and closed after.",
            ),
            option(
                "--keep-alive-timeout",
                type=click.FloatRange(0.1, 3600),
                default=5.0,
                show_default=True,
                callback=_finite,
                help="Seconds an idle kept-alive connection stays open.",
            ),
            option(
                "--max-connections",
                type=click.IntRange(1, 1_000_000),
                default=1000,
                show_default=True,
                help="Open connections per limiter process; requests beyond get 503. Keep it "
                "below the open-files limit (ulimit -n).",
            ),
            option(
                "--max-header-bytes",
                type=click.IntRange(1024, 1 << 20),
                default=64 * 1024,
                show_default=True,
                help="Bytes a request's headers may take; 431 and closed beyond.",
            ),
            option(
                "--metrics-token",
                default=None,
                help="Bearer token that GET /metrics and /health/detailed require (open "
                "without it). Prefer the environment variable: a command line is visible "
                "to other users.",
            ),
        ]
    ):
        f = decorate(f)
    return f


def denial_cache_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """The local denial cache's size (docs/performance.md): ``serve`` builds its settings
    of it, ``up`` passes it on to its limiter."""
    return option(
        "--denial-cache-entries",
        type=click.IntRange(0, 10_000_000),
        default=0,
        show_default=True,
        help="Counters known to be over their limit that each limiter process denies "
        "itself, without a Redis call, until their retry time (about 330 bytes each plus "
        "the key); 0: off.",
    )(f)


def connection_args(
    header_timeout: float,
    body_timeout: float,
    keep_alive_timeout: float,
    max_connections: int,
    max_header_bytes: int,
) -> list[str]:
    """The connection options as a child's command line (the metrics token goes by the
    environment, where other users cannot read it)."""
    return [
        "--header-timeout",
        repr(float(header_timeout)),
        "--body-timeout",
        repr(float(body_timeout)),
        "--keep-alive-timeout",
        repr(float(keep_alive_timeout)),
        "--max-connections",
        str(max_connections),
        "--max-header-bytes",
        str(max_header_bytes),
    ]


def batch_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """When the decision consumer inserts what it read (``stream.batching``): ``up`` passes
    them on to its worker, ``stream`` and ``pipeline`` build ``BatchBounds`` of them
    (``batch_bounds``)."""
    for decorate in reversed(
        [
            option(
                "--batch-max-decisions",
                type=click.IntRange(1, MAX_DECISIONS_LIMIT),
                default=DEFAULT_MAX_DECISIONS,
                show_default=True,
                help="Decisions the consumer inserts into ClickHouse at most at once; more "
                "make several inserts.",
            ),
            option(
                "--batch-max-age",
                type=click.FloatRange(0, MAX_AGE_LIMIT),
                default=DEFAULT_MAX_AGE,
                show_default=True,
                callback=_finite,
                help="Seconds from the first decision read to its insert, at most: at low "
                "rates, about one insert per this time (0: one per read).",
            ),
            option(
                "--batch-min-decisions",
                type=click.IntRange(1, MAX_DECISIONS_LIMIT),
                default=DEFAULT_MIN_DECISIONS,
                show_default=True,
                help="A batch of at least this many decisions is inserted --batch-min-age "
                "after its first decision was read, sooner than --batch-max-age.",
            ),
            option(
                "--batch-min-age",
                type=click.FloatRange(0, MAX_AGE_LIMIT),
                default=DEFAULT_MIN_AGE,
                show_default=True,
                callback=_finite,
                help="Seconds from the first decision read to the insert of a batch of "
                "--batch-min-decisions or more: at busy times, about one insert per this time.",
            ),
        ]
    ):
        f = decorate(f)
    return f


def batch_bounds(
    batch_max_decisions: int, batch_max_age: float, batch_min_decisions: int, batch_min_age: float
) -> BatchBounds:
    """The batch options as bounds; a usage error naming a value they refuse."""
    try:
        return BatchBounds(batch_max_decisions, batch_max_age, batch_min_decisions, batch_min_age)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _finite(context: click.Context, parameter: click.Parameter, value: float) -> float:
    if math.isnan(value):  # a range does not refuse it: every comparison with it is false
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


def hold_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """When ``up``'s pipeline worker holds its analytics inserts for the checks
    (``stream.deferral``): ``up`` passes them on to its worker (``hold_args``)."""
    for decorate in reversed(
        [
            option(
                "--pipeline-hold-above",
                type=click.FloatRange(0, 64),
                default=DEFAULT_BUSY_CORES,
                show_default=True,
                callback=_finite,
                help="The limiter's CPU, in cores, from which the pipeline worker holds its "
                "inserts into the analytics store, so that a burst of checks has the cores "
                "(the decisions wait in the stream); 0: never hold.",
            ),
            option(
                "--pipeline-hold-max",
                type=click.FloatRange(0.1, 600),
                default=DEFAULT_MAX_SECONDS,
                show_default=True,
                callback=_finite,
                help="Seconds the pipeline worker holds its inserts at most, from its first "
                "hold since it last caught up; then it catches up before it holds them again.",
            ),
        ]
    ):
        f = decorate(f)
    return f


def hold_args(pid_file: Path, above: float, most: float) -> list[str]:
    """The hold options as the pipeline worker's command line (none: it never holds)."""
    if above == 0:
        return []
    return ["--hold-for", str(pid_file), "--hold-above", repr(above), "--hold-max", repr(most)]


def batch_args(bounds: BatchBounds) -> list[str]:
    """The batch options as a child's command line."""
    return [
        "--batch-max-decisions",
        str(bounds.max_decisions),
        "--batch-max-age",
        repr(float(bounds.max_age)),
        "--batch-min-decisions",
        str(bounds.min_decisions),
        "--batch-min-age",
        repr(float(bounds.min_age)),
    ]


def service_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``up`` and the distributed processes."""
    for decorate in reversed(
        [
            option("--host", default="127.0.0.1", show_default=True),
            option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True),
            data_dir_option,
            redis_url_option,
            option("--kafka", default=None, help="Kafka bootstrap servers (decision stream)."),
            option("--clickhouse-url", default=None, help="http(s)://… or chdb:///path."),
            option(
                "--fail-mode",
                type=click.Choice(["open", "closed"]),
                default="open",
                show_default=True,
                help="What to answer while Redis is unreachable.",
            ),
            option(
                "--workers",
                type=click.IntRange(1, 64),
                default=1,
                show_default=True,
                help="Limiter processes sharing the port (about one per core).",
            ),
            option(
                "--key-prefix",
                default="rw",
                show_default=True,
                help="Prefix of every Redis key RateWatch writes.",
            ),
            webhooks_allow_private_option,
        ]
    ):
        f = decorate(f)
    return f


# RateWatch's limits on its own API (limiter/api_limits.py): option -> default
API_LIMIT_OPTIONS = {
    "--control-rate-limit": (
        "1200/1m",
        "Control-plane requests per tenant (every /v1 route but the checks, test pings and "
        "privacy requests, which have their own).",
    ),
    "--test-ping-rate-limit": ("100/1h", "Webhook test pings per tenant."),
    "--privacy-rate-limit": ("60/1m", "Privacy summaries and erasures per tenant."),
    "--auth-failure-limit": (
        "30/1m",
        "Requests without a valid API key per client address, on every /v1 route.",
    ),
}


def api_limit_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The limits of the API itself, answered 429 with Retry-After past them (LIMIT/WINDOW,
    the window in seconds or with s, m or h; off: no limit), and whose proxy headers name
    the client.  Parsed where the limiter starts, so the light install needs no more."""
    for name, (default, text) in reversed(API_LIMIT_OPTIONS.items()):
        f = option(
            name,
            default=default,
            show_default=True,
            metavar="LIMIT/WINDOW",
            help=text + " 'off': none.",
        )(f)
    return option(
        "--trusted-proxies",
        default=None,
        metavar="ADDRESSES",
        help="Reverse proxies (addresses or networks, comma separated, or *) whose "
        "X-Forwarded-For names the client; by default the peer is the client.",
    )(f)


def api_limit_values(
    control_rate_limit: str,
    test_ping_rate_limit: str,
    privacy_rate_limit: str,
    auth_failure_limit: str,
) -> dict[str, str]:
    """The API limit options' values by option name, as ``parse_api_limits`` and
    ``api_limit_args`` take them."""
    return {
        "--control-rate-limit": control_rate_limit,
        "--test-ping-rate-limit": test_ping_rate_limit,
        "--privacy-rate-limit": privacy_rate_limit,
        "--auth-failure-limit": auth_failure_limit,
    }


def api_limit_args(limits: dict[str, str], trusted_proxies: str | None) -> list[str]:
    """The API limit options as a child's command line (``up`` to its limiter)."""
    args = [arg for name, value in limits.items() for arg in (name, value)]
    return args + (["--trusted-proxies", trusted_proxies] if trusted_proxies else [])


def tls_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """HTTPS: a PEM certificate (chain) and its private key, both or neither."""
    f = option(
        "--tls-key",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The certificate's private key (PEM).",
    )(f)
    return option(
        "--tls-cert",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Serve HTTPS (TLS 1.2 at least, 1.3 preferred) with this certificate chain "
        "(PEM); needs --tls-key.",
    )(f)


def grpc_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Envoy's rate limit service over gRPC (``limiter/grpc/``), beside the HTTP API."""
    return option(
        "--grpc-port",
        type=click.IntRange(1, 65535),
        default=None,
        help="Also serve Envoy's rate limit service (envoy.service.ratelimit.v3, gRPC) on "
        "this port, on --host; over TLS with --tls-cert (docs/gateways.md).",
    )(f)


def limiter_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The limiter's own options, declared once for the two commands that take them:
    ``serve`` builds its settings of them, ``up`` passes them on to its limiter."""
    for decorate in reversed(
        [
            api_limit_options,
            tls_options,
            connection_options,
            tracing_option,
            denial_cache_option,
            grpc_option,
        ]
    ):
        f = decorate(f)
    return f


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into a one-line message and exit status 1."""
    try:
        from limiter.errors import LimiterError
        from stream.audit_outbox import AuditUnavailable
    except ImportError:  # pragma: no cover - the light install
        raise click.ClickException(SERVER_EXTRA_HINT) from None
    try:
        yield
    except (LimiterError, AuditUnavailable) as exc:
        raise click.ClickException(str(exc)) from None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    with user_errors():
        return asyncio.run(coroutine)


def key_secret(data_dir: Path) -> bytes:
    from limiter.settings import load_or_create_key_secret, parse_key_secret

    configured = os.environ.get("RATEWATCH_KEY_SECRET")
    return parse_key_secret(configured) if configured else load_or_create_key_secret(data_dir)


tracing_option = option(
    "--tracing",
    is_flag=True,
    default=False,
    help="Trace the check path with OpenTelemetry (needs ratewatch[otel]; the exporter is "
    "configured by the OTEL_* variables).",
)
