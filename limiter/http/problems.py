"""RFC 9457 problem details: every error response of the API is one of these."""

from __future__ import annotations

from typing import Any

import msgspec

PROBLEM_CONTENT_TYPE = b"application/problem+json"
_TYPE_BASE = "urn:ratewatch:problem:"

TITLES = {
    "invalid-json": "Request body is not valid JSON",
    "validation-error": "Request body or parameters are not valid",
    "unauthorized": "Missing or invalid API key",
    "signature-missing": "This API key's requests must be signed",
    "signature-stale": "The request's signature timestamp is outside the replay window",
    "signature-invalid": "The request's signature is not valid",
    "forbidden": "This API key may not do that",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "body-too-large": "Request body too large",
    "request-timeout": "Request not received in time",
    "request-incomplete": "Request ended before its body did",
    "headers-too-large": "Request headers too large",
    "too-many-connections": "Too many open connections",
    "unsupported-media-type": "Unsupported media type",
    "store-unavailable": "The limiter's store is unavailable",
    "webhook-target-refused": "Webhook target refused",
    "too-many-webhooks": "Too many webhooks",
    "too-many-requests": "Too many requests",
    "rate-limited": "Rate limit exceeded",
    "internal-error": "Internal error",
}

_encoder = msgspec.json.Encoder()


class Problem(Exception):
    """Raised anywhere below a handler to answer with a problem response."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        retry_after: int | None = None,
        **extensions: Any,
    ):
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after
        if retry_after is not None:
            extensions["retry_after"] = retry_after
        self.extensions = extensions

    def body(self, instance: str | None = None) -> bytes:
        document: dict[str, Any] = {
            "type": _TYPE_BASE + self.kind,
            "title": TITLES.get(self.kind, self.kind),
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            document["instance"] = instance
        document.update(self.extensions)
        return _encoder.encode(document)

    def headers(self) -> list[tuple[bytes, bytes]]:
        extra = [(b"content-type", PROBLEM_CONTENT_TYPE)]
        if self.status == 401:
            extra.append((b"www-authenticate", b'Bearer realm="ratewatch"'))
        if self.retry_after is not None:
            extra.append((b"retry-after", b"%d" % self.retry_after))
        elif self.status == 503:
            extra.append((b"retry-after", b"1"))
        return extra


def too_many_requests(retry_after: int, detail: str) -> Problem:
    """429: a limit of RateWatch's own API (``limiter/api_limits.py``) is reached."""
    return Problem(429, "too-many-requests", detail, retry_after=retry_after)
