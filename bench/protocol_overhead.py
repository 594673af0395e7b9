"""What the bounded HTTP protocol costs a request, against uvicorn's own.

Usage::

    python bench/protocol_overhead.py [--requests 20000] [--rounds 7]

``ratewatch serve`` runs uvicorn with ``BoundedHttpToolsProtocol``
(``ratewatch/processes/http_protocol.py``): header and body timeouts, a header size bound
and a connection bound on top of uvicorn's ``HttpToolsProtocol``.  This feeds the same
kept-alive ``POST /v1/check`` requests through each protocol on a uvloop loop, with an
in-memory transport and an ASGI app that reads the body and answers at once, so what is
timed is the protocol's own work per request (parsing, the request cycle, the response),
not the network or the limiter.  The two alternate within each round, and which goes first
alternates between rounds; the table shows the medians and minimums over the rounds of
microseconds per request, and their ratios.  Times are this thread's CPU time, which other
work on a shared box moves far less than wall time.  A measurement, not a
test: it exits 0 unless a request was not answered.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Sequence
from statistics import median
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ratewatch.processes.http_protocol import BoundedHttpToolsProtocol, ConnectionLimits

BODY = b'{"key": "user:1", "limit": 100, "window": 60}'
REQUEST = (
    b"POST /v1/check HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer rwk_bench\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
)
LIMITS = ConnectionLimits(
    header_timeout=10.0, body_timeout=30.0, max_header_bytes=64 * 1024, max_connections=1000
)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


class MemoryTransport(asyncio.Transport):
    """Counts the responses written; never blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.responses = 0
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data[:9]) == b"HTTP/1.1 ":
            self.responses += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def run(protocol_class: type[HttpToolsProtocol], requests: int) -> float:
    """Seconds per request through one kept-alive connection."""
    config = Config(app, lifespan="off", access_log=False, log_level="warning")
    config.load()
    protocol = protocol_class(config, ServerState(), {}, asyncio.get_running_loop())
    transport = MemoryTransport()
    protocol.connection_made(transport)
    gc.collect()  # each run starts with no garbage of the one before
    started = time.thread_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs: reads the body, answers
    elapsed = time.thread_time() - started
    protocol.connection_lost(None)
    if transport.responses != requests:
        raise RuntimeError(f"{transport.responses} of {requests} requests answered")
    return elapsed / requests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per run")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; medians are shown")
    args = parser.parse_args(argv)
    bounded = BoundedHttpToolsProtocol.bounded(LIMITS)
    timings: dict[str, list[float]] = {"uvicorn": [], "bounded": []}

    async def rounds() -> None:
        await run(bounded, 2000)  # warm-up of both
        await run(HttpToolsProtocol, 2000)
        order: list[tuple[str, type[HttpToolsProtocol]]] = [
            ("uvicorn", HttpToolsProtocol),
            ("bounded", bounded),
        ]
        for _ in range(args.rounds):
            for name, protocol_class in order:
                timings[name].append(await run(protocol_class, args.requests))
            order.reverse()  # whichever runs first in a round does not always win

    uvloop.run(rounds())
    print(f"{args.rounds} rounds of {args.requests:,} kept-alive requests each, us/request")
    for name, values in timings.items():
        print(
            f"  {name:8} median {median(values) * 1e6:6.2f}  min {min(values) * 1e6:6.2f}  "
            f"max {max(values) * 1e6:6.2f}"
        )
    for what, pick in (("median", median), ("min", min)):
        plain, ours = pick(timings["uvicorn"]), pick(timings["bounded"])
        print(
            f"  bounded / uvicorn ({what}): {ours / plain:.3f} "
            f"({(ours - plain) * 1e6:+.2f} us/request)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
