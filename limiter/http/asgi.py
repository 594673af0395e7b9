"""The few raw-ASGI helpers the fast path needs (reading a bounded body, responding)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from limiter.http.problems import Problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def bearer_token(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None or value[:7].lower() != b"bearer ":
        return None
    token = value[7:].strip()
    return token.decode("latin-1") if token else None


async def read_body(scope: Scope, receive: Any, limit: int) -> bytes:
    """The request body; 413 as soon as it is known to exceed ``limit`` bytes, 400 if the
    client went away (or was cut for its slowness) before the body ended."""
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Problem(
            413,
            "body-too-large",
            f"request body of {int(length)} bytes exceeds the limit of {limit} bytes",
            max_bytes=limit,
        )
    chunks: list[bytes] | None = None  # only for a body that came in several messages
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # a partial body is never decided on, even if what came is valid JSON
            raise Problem(400, "request-incomplete", "the connection closed before the body ended")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Problem(
                413,
                "body-too-large",
                f"request body exceeds the limit of {limit} bytes",
                max_bytes=limit,
            )
        if not message.get("more_body", False):
            if chunks is None:  # the whole body in one message, as a check's always is
                return chunk  # type: ignore[no-any-return]
            chunks.append(chunk)
            return b"".join(chunks)
        if chunks is None:
            chunks = []
        chunks.append(chunk)


async def respond(send: Any, status: int, body: bytes, headers: Headers) -> None:
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
