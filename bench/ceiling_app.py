"""The ceiling of the server stack: a raw ASGI app that answers every check the same way.

It does what any check service must do on this stack and nothing else: it reads the
request body and answers 200 with a constant body of a check's size and a check's headers
(``RateLimit``, ``RateLimit-Policy``).  Served by uvicorn with uvloop and httptools, one
worker, as ``ratewatch serve`` is, its requests per second are what the stack allows on
this box in this hour; ``bench/check_throughput.py`` starts it and prints the limiter's
rate as a ratio of it.  By hand::

    python -m uvicorn ceiling_app:app --app-dir bench --loop uvloop --http httptools \\
        --no-access-log --no-proxy-headers --no-server-header --port 8002

``ratewatch serve`` does not run stock uvicorn but its own protocol on it
(``ratewatch/processes/http_protocol.py``: connection bounds, one write per response);
``python bench/ceiling_app.py --port 8003`` serves this app through that protocol, with
``serve``'s default bounds, so that both ceilings can be measured: the stack's, and the
stack as ``serve`` runs it.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Message = MutableMapping[str, Any]

BODY = (
    b'{"allowed":true,"remaining":999999999,"reset_in":60,"retry_after":null,'
    b'"limit":1000000000,"reason":"ok"}'
)
CHECK_HEADERS = [
    (b"content-type", b"application/json"),
    (b"ratelimit-policy", b'"default";q=1000000000;w=60'),
    (b"ratelimit", b'"default";r=999999999;t=60'),
    (b"content-length", b"%d" % len(BODY)),
]
HEALTH = b'{"status":"ok"}'
HEALTH_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(HEALTH)),
]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] == "POST":
        more = True
        while more:  # the body is read, as a check service must
            message = await receive()
            more = message.get("more_body", False)
        body, headers = BODY, CHECK_HEADERS
    else:
        body, headers = HEALTH, HEALTH_HEADERS
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_bounded(host: str, port: int) -> None:
    """Serve ``app`` as ``ratewatch serve`` serves the limiter: its protocol and bounds."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from limiter.settings import LimiterSettings
    from ratewatch.processes.http_protocol import ConnectionLimits
    from ratewatch.processes.serving import listen, run_server

    defaults = LimiterSettings(redis_url="redis://unused")  # only its HTTP bounds are read
    limits = ConnectionLimits(
        defaults.header_timeout,
        defaults.body_timeout,
        defaults.max_header_bytes,
        defaults.max_connections,
    )
    sock: socket.socket = listen(host, port)
    run_server(app, sock, limits, defaults.keep_alive_timeout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the ceiling app on ratewatch serve's protocol")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    serve_bounded(options.host, options.port)
