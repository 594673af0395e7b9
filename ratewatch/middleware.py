"""``RateLimitMiddleware``: rate limiting for any ASGI app (FastAPI, Starlette, ...).

Pure ASGI, no framework import::

    app.add_middleware(RateLimitMiddleware, client=AsyncRateWatch(), limit=100, window=60)

Each HTTP request is checked with the RateWatch service.  Denied requests get a 429
``application/problem+json`` answer with ``Retry-After``, ``RateLimit`` and
``RateLimit-Policy``; allowed ones get the two ``RateLimit`` headers added.  Lifespan and
websocket traffic passes through untouched.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ratewatch.client import FAIL_OPEN_REASON, AsyncRateWatch, CheckResult
from ratewatch.errors import ServiceUnavailable

__all__ = ["RateLimitMiddleware", "client_ip", "client_ip_key"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFunc = Callable[[Scope], str | None]

_MAX_TEXT = 2048  # the service's limit on `route` and `user_agent`
_PROBLEM_TYPE = "urn:ratewatch:problem:"


def client_ip(scope: Scope) -> str | None:
    """The peer's IP address from ``scope["client"]``, or ``None`` if it is not an IP.

    Behind a reverse proxy this is the proxy's address unless the server rewrites it
    (e.g. uvicorn ``--proxy-headers --forwarded-allow-ips``).
    """
    client = scope.get("client")
    if not client:
        return None
    try:
        return str(ipaddress.ip_address(client[0]))
    except ValueError:
        return None


def client_ip_key(scope: Scope) -> str | None:
    """The default key: ``"ip:<client ip>"``; ``None`` (not limited) without a client IP."""
    ip = client_ip(scope)
    return None if ip is None else f"ip:{ip}"


def _user_agent(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"user-agent":
            return bytes(value).decode("latin-1")[:_MAX_TEXT]
    return None


class RateLimitMiddleware:
    """Limit each HTTP request to ``limit`` per ``window`` seconds per ``key(scope)``.

    ``key`` returns the limited key of a request, or ``None`` to let it through unchecked
    (default: :func:`client_ip_key`).  The ``client`` belongs to the caller, who closes it.
    If the client cannot reach the service it fails open by itself; a client made with
    ``fail_open=False`` makes the middleware answer 503 instead.  Other SDK errors
    (a bad API key, an invalid limit) propagate: they are configuration mistakes.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: AsyncRateWatch,
        limit: int | None = None,
        window: int | None = None,
        key: KeyFunc | None = None,
        cost: int = 1,
        algorithm: str | None = None,
        policy: str | None = None,
    ):
        if (policy is None) == (limit is None or window is None) or (
            policy is not None and (limit is not None or window is not None)
        ):
            raise ValueError("give limit and window, or a policy (docs/policies.md)")
        self.app = app
        self.client = client
        self.limit = limit
        self.window = window
        self.key: KeyFunc = key or client_ip_key
        self.cost = cost
        self.algorithm = algorithm
        self.policy = policy
        # a policy's windows are the service's: its header names the policy and the limit
        # of the window that decided (the draft's `w` is optional)
        self._name = b"default" if policy is None else policy.encode()
        self._policy = (
            b'"default";q=%d;w=%d' % (limit, window)
            if limit is not None and window is not None
            else b""
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = self.key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        try:
            result = await self.client.check(
                key,
                limit=self.limit,
                window=self.window,
                cost=self.cost,
                algorithm=self.algorithm,
                policy=self.policy,
                ip=client_ip(scope),
                route=str(scope.get("path", ""))[:_MAX_TEXT] or None,
                user_agent=_user_agent(scope),
            )
        except ServiceUnavailable:
            await self._problem(
                send,
                503,
                "service-unavailable",
                "Service unavailable",
                "the rate limiter is unavailable",
                [(b"retry-after", b"1")],
            )
            return
        if not result.allowed:
            await self._deny(send, result)
            return
        if result.reason == FAIL_OPEN_REASON:  # made up by the client: no headers to report
            await self.app(scope, receive, send)
            return
        extra = self._ratelimit_headers(result)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {bytes(name).lower() for name, _ in headers}
                headers += [item for item in extra if item[0] not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _ratelimit_headers(self, result: CheckResult) -> list[tuple[bytes, bytes]]:
        policy = self._policy or b'"%s";q=%d' % (self._name, result.limit)
        return [
            (b"ratelimit-policy", policy),
            (b"ratelimit", b'"%s";r=%d;t=%d' % (self._name, result.remaining, result.reset_in)),
        ]

    async def _deny(self, send: Send, result: CheckResult) -> None:
        headers = self._ratelimit_headers(result)
        detail = (
            f"rate limit of {self.limit} per {self.window}s exceeded ({result.reason})"
            if self.policy is None
            else f"rate limit of policy {self.policy} exceeded ({result.reason})"
        )
        extensions: dict[str, Any] = {"reason": result.reason}
        if result.retry_after is not None:
            headers.append((b"retry-after", b"%d" % result.retry_after))
            detail += f"; retry in {result.retry_after}s"
            extensions["retry_after"] = result.retry_after
        await self._problem(
            send, 429, "rate-limited", "Too many requests", detail, headers, extensions
        )

    @staticmethod
    async def _problem(
        send: Send,
        status: int,
        kind: str,
        title: str,
        detail: str,
        headers: list[tuple[bytes, bytes]],
        extensions: dict[str, Any] | None = None,
    ) -> None:
        body = json.dumps(
            {
                "type": _PROBLEM_TYPE + kind,
                "title": title,
                "status": status,
                "detail": detail,
                **(extensions or {}),
            }
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", b"%d" % len(body)),
            *headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
