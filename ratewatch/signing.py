"""Signing the requests of a signed key (``ratewatch keys create --signed``).

The scheme (docs/security.md, "Signed requests"): each request carries
``RateWatch-Timestamp: <Unix seconds>`` and ``RateWatch-Signature: v1=<hex HMAC-SHA256>``
of ``timestamp "\\n" METHOD "\\n" path?query "\\n" hex SHA-256 of the body``, keyed by the
signing secret as shown (its UTF-8 bytes).  The server accepts a timestamp within five
minutes of its clock.

:class:`RequestSigner` is an ``httpx.Auth``: the SDK's clients use it when given a
signing secret, and any httpx client can, for the control-plane routes::

    httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                 auth=RequestSigner(secret))
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Generator

import httpx

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "RequestSigner", "signature"]

TIMESTAMP_HEADER = "RateWatch-Timestamp"
SIGNATURE_HEADER = "RateWatch-Signature"


def signature(secret: str, timestamp: str, method: str, target: str, body: bytes) -> str:
    """The ``RateWatch-Signature`` value of one request; ``target`` is its path and query
    as sent (percent-encoded, ``?query`` only when there is one)."""
    message = "\n".join((timestamp, method.upper(), target, hashlib.sha256(body).hexdigest()))
    return "v1=" + hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


class RequestSigner(httpx.Auth):
    """Adds ``RateWatch-Timestamp`` and ``RateWatch-Signature`` to every request."""

    requires_request_body = True  # the signature covers the body

    def __init__(self, secret: str, clock: Callable[[], float] = time.time):
        if not secret:
            raise ValueError("the signing secret is empty")
        self._secret = secret
        self._clock = clock

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        timestamp = str(int(self._clock()))
        target = request.url.raw_path.decode("ascii")
        request.headers[TIMESTAMP_HEADER] = timestamp
        request.headers[SIGNATURE_HEADER] = signature(
            self._secret, timestamp, request.method, target, request.content
        )
        yield request
