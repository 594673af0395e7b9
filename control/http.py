"""What every control-plane route does with HTTP: read a bounded JSON body, answer JSON,
name the client, and turn the limiter's errors into problem details."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from limiter.errors import InvalidInput, NotFound, StoreUnavailable
from limiter.http.checks import decode
from limiter.http.problems import Problem

MAX_ADMIN_BODY = 64 * 1024
_BODY = "ratewatch.body"  # where the scope keeps the body once read
_encoder = msgspec.json.Encoder()


def json_response(content: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(content), status, media_type="application/json")


async def read_body(request: Request) -> bytes:
    """The body, 413 past MAX_ADMIN_BODY bytes; read once per request, so that a signed
    key's signature check and the route see the same bytes."""
    cached: bytes | None = request.scope.get(_BODY)
    if cached is not None:
        return cached
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_ADMIN_BODY:
            raise Problem(
                413,
                "body-too-large",
                f"request body exceeds the limit of {MAX_ADMIN_BODY} bytes",
            )
    request.scope[_BODY] = body
    return body


async def read_json(request: Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    """The body decoded and validated by ``decoder``; 413 past MAX_ADMIN_BODY bytes."""
    return decode(decoder, await read_body(request) or b"{}")


def client_ip(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def problem_for(exc: Exception) -> Problem | None:
    """The problem response for an error of the limiter's own kinds."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, NotFound):
        return Problem(404, "not-found", str(exc))
    if isinstance(exc, InvalidInput):
        return Problem(422, "validation-error", str(exc))
    if isinstance(exc, StoreUnavailable):
        return Problem(503, "store-unavailable", str(exc))
    if isinstance(exc, ClientDisconnect):  # gone, or cut for its slowness: nobody to answer
        return Problem(400, "request-incomplete", "the connection closed before the body ended")
    return None
