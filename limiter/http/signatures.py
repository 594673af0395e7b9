"""Signed requests: what a signed key's requests must carry, and its verification.

A key created with ``--signed`` (or ``{"signed": true}``) has a signing secret, and each of
its requests carries, beside ``Authorization: Bearer <key>``::

    RateWatch-Timestamp: <Unix time in seconds>
    RateWatch-Signature: v1=<hex HMAC-SHA256(secret, string to sign)>

    string to sign = timestamp "\\n" METHOD "\\n" path?query "\\n" hex SHA-256 of the body

The HMAC's key is the secret as shown (``rws_…``, its UTF-8 bytes); the path and query are
the request target as sent (percent-encoded, ``?query`` only when there is one).  The
signature covers the body, so the check runs once the body is read; it is made only for a
signed key's principal, so unsigned keys pay nothing.  A request is refused with 401 and one
of three problem types: ``signature-missing``, ``signature-stale`` (the timestamp is more
than ``REPLAY_WINDOW`` seconds from the server's clock; the problem carries ``server_time``)
and ``signature-invalid``.  ``RateWatch-Signature`` may list several comma-separated
``v1=`` entries: one that matches is enough.  docs/security.md states the scheme for
clients.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

from limiter.http.asgi import Scope, header
from limiter.http.problems import Problem

TIMESTAMP_HEADER = b"ratewatch-timestamp"
SIGNATURE_HEADER = b"ratewatch-signature"
SCHEME = b"v1"
# how far a request's timestamp may be from the server's clock, either way (seconds)
REPLAY_WINDOW = 300
_MAX_TIMESTAMP_DIGITS = 12
_HEX_DIGEST_LENGTH = 64


def request_target(scope: Scope) -> bytes:
    """The path and query as the client sent them (percent-encoded)."""
    path: bytes = scope.get("raw_path") or quote(scope["path"]).encode("ascii")
    query: bytes = scope.get("query_string") or b""
    return path + b"?" + query if query else path


def string_to_sign(timestamp: bytes, method: str, target: bytes, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest().encode("ascii")
    return b"\n".join((timestamp, method.upper().encode("ascii"), target, digest))


def signature(key: hmac.HMAC, timestamp: bytes, method: str, target: bytes, body: bytes) -> bytes:
    """The hex HMAC-SHA256 a request is signed with (without the ``v1=``); ``key`` is an
    HMAC-SHA256 keyed with the secret and fed nothing: a copy of it is used (half the cost
    of keying a new one per request)."""
    mac = key.copy()
    mac.update(string_to_sign(timestamp, method, target, body))
    return mac.hexdigest().encode("ascii")


def verify(scope: Scope, body: bytes, key: hmac.HMAC, now: float | None = None) -> None:
    """Return if the request is signed with ``key``'s secret within the window; else the
    401."""
    timestamp = header(scope, TIMESTAMP_HEADER)
    signed = header(scope, SIGNATURE_HEADER)
    if timestamp is None or signed is None:
        raise Problem(
            401,
            "signature-missing",
            "this API key signs its requests: send RateWatch-Timestamp and "
            "RateWatch-Signature (see docs/security.md, 'Signed requests')",
        )
    timestamp = timestamp.strip()
    if not timestamp.isdigit() or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
        raise Problem(
            401,
            "signature-invalid",
            f"RateWatch-Timestamp must be Unix time in whole seconds, got {timestamp[:40]!r}",
        )
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > REPLAY_WINDOW:
        raise Problem(
            401,
            "signature-stale",
            f"RateWatch-Timestamp {int(timestamp)} is more than {REPLAY_WINDOW}s from the "
            f"server's time {int(now)}: sign each request when it is sent (and check the "
            "client's clock)",
            server_time=int(now),
        )
    expected = signature(key, timestamp, scope["method"], request_target(scope), body)
    matched = False
    for entry in signed.split(b","):
        scheme, _, value = entry.strip().partition(b"=")
        # every entry is compared, in constant time: no early exit tells which one matched
        if scheme == SCHEME and len(value) == _HEX_DIGEST_LENGTH:
            matched |= hmac.compare_digest(value.lower(), expected)
    if not matched:
        raise Problem(
            401,
            "signature-invalid",
            "RateWatch-Signature does not match: sign timestamp, method, path?query and the "
            "body's SHA-256 with the key's signing secret (see docs/security.md)",
        )
