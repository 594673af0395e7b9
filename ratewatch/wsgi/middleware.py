"""``RateLimitWSGIMiddleware``: rate limiting for any WSGI app (PEP 3333), no framework import::

    app = RateLimitWSGIMiddleware(app, client=RateWatch(), limit=100, window=60)

Denied requests get a 429 ``application/problem+json`` answer with ``Retry-After``,
``RateLimit`` and ``RateLimit-Policy``; allowed ones go to the app, whose response gets the
two ``RateLimit`` headers (unless it set them itself).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ratewatch.client import RateWatch
from ratewatch.wsgi.gate import RateLimitGate

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["RateLimitWSGIMiddleware"]


class RateLimitWSGIMiddleware:
    """Wrap the WSGI ``app``; the options are :class:`~ratewatch.wsgi.gate.RateLimitGate`'s
    (``client``, ``limit``, ``window``, ``key``, ``limits``, ``exclude``, ``fail_open``, ...),
    or pass a ready ``gate``."""

    def __init__(
        self,
        app: WSGIApplication,
        *,
        gate: RateLimitGate | None = None,
        client: RateWatch | None = None,
        **options: Any,
    ):
        if gate is None:
            if client is None:
                raise ValueError("RateLimitWSGIMiddleware needs a RateWatch client or a gate")
            gate = RateLimitGate(client, **options)
        elif client is not None or options:
            raise ValueError("pass either a gate or its options, not both")
        self.app = app
        self.gate = gate

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Handle one request."""
        decision = self.gate.decide(environ)
        if decision.answer is not None:
            answer = decision.answer
            start_response(answer.status, answer.headers)
            return [answer.body]
        if not decision.headers:
            return self.app(environ, start_response)
        extra = decision.headers

        def start_with_headers(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            present = {name.lower() for name, _ in headers}
            added = [item for item in extra if item[0].lower() not in present]
            return start_response(status, [*headers, *added], *exc_info)

        return self.app(environ, start_with_headers)
