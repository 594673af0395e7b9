"""``--metrics-port`` and ``--metrics-host`` of the processes without an HTTP API of their
own (``stream``, ``detect``, ``pipeline``): Prometheus text on ``http://HOST:PORT/metrics``.

The endpoint is bound before the process connects to anything, so a port that is taken
fails the start at once, and it is served from a thread of prometheus_client's: a scrape
never waits on the event loop, which may be busy with a batch.  prometheus_client is
imported inside: the light install imports this module without it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from ratewatch.cli.options import SERVER_EXTRA_HINT, option

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("ratewatch.metrics")

# what `ratewatch up` keeps from its children: each would try to bind the same port
METRICS_VARIABLES = ("RATEWATCH_METRICS_PORT", "RATEWATCH_METRICS_HOST")


def metrics_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for decorate in reversed(
        [
            option(
                "--metrics-port",
                type=click.IntRange(1, 65535),
                default=None,
                help="Serve Prometheus metrics on this port, at /metrics [default: off].",
            ),
            option(
                "--metrics-host",
                default="127.0.0.1",
                show_default=True,
                help="The address the metrics port listens on.",
            ),
        ]
    ):
        f = decorate(f)
    return f


def check_bindable(host: str, ports: Iterable[int]) -> None:
    """A one-line error now if a port a child will serve its metrics on cannot be bound:
    the child would otherwise fail at every restart."""
    for port in ports:
        try:
            with socket.create_server((host, port)):
                pass
        except OSError as exc:
            # create_server's own message repeats the address
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise click.ClickException(f"cannot serve metrics on {host}:{port}: {reason}") from None


@contextmanager
def metrics_endpoint(port: int | None, host: str) -> Iterator[CollectorRegistry | None]:
    """The registry served on ``host:port`` while the block runs (None without a port);
    a one-line error if the address cannot be bound."""
    if port is None:
        yield None
        return
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
    except ImportError:  # pragma: no cover - the light install
        raise click.ClickException(SERVER_EXTRA_HINT) from None
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # memory and CPU, as every exporter has them
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.ClickException(f"cannot serve metrics on {host}:{port}: {reason}") from None
    log.info("metrics on http://%s:%d/metrics", host, port)
    try:
        yield registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
