"""The floor under the ceiling: a constant check answer from a bare httptools protocol.

``bench/ceiling_app.py`` measures what uvicorn (uvloop, httptools) allows an ASGI app that
does nothing; this measures what uvloop and httptools allow with no ASGI server at all: an
``asyncio.Protocol`` that parses requests with httptools and answers each, once its body has
arrived, with the same constant body and headers in one write, from the parser's callback
(no task, no ASGI messages, no timeouts or bounds).  ``--task`` runs the answer as one task
per request instead, as an ASGI server must.  What separates the two ceilings is what
uvicorn's ASGI layer costs a request: what a leaner server stack could save at best.

    python bench/bare_ceiling.py --port 8004 [--task]

``bench/check_throughput.py --bare-ceiling`` starts it (with ``--task``) beside the others.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling_app import BODY, CHECK_HEADERS, HEALTH, HEALTH_HEADERS


def _response(body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return b"HTTP/1.1 200 OK\r\n" + head + b"\r\n" + body


CHECK = _response(BODY, CHECK_HEADERS)
HEALTHY = _response(HEALTH, HEALTH_HEADERS)


class BareProtocol(asyncio.Protocol):
    def __init__(self, per_task: bool) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._per_task = per_task
        self._loop = asyncio.get_event_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's, not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_message_complete(self) -> None:
        answer = CHECK if self._parser.get_method() == b"POST" else HEALTHY
        if self._per_task:
            self._loop.create_task(self._answer(answer))
        else:
            assert self._transport is not None
            self._transport.write(answer)

    async def _answer(self, answer: bytes) -> None:
        assert self._transport is not None
        self._transport.write(answer)


async def serve(host: str, port: int, per_task: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = await asyncio.get_running_loop().create_server(
        lambda: BareProtocol(per_task), sock=sock, backlog=2048
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a constant check answer, bare httptools")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--task", action="store_true", help="answer from a task per request")
    options = parser.parse_args()
    uvloop.run(serve(options.host, options.port, options.task))
