"""Who a WSGI request is counted against: key functions of an ``environ``.

A key function takes the WSGI ``environ`` (or Django's ``request.META``, the same mapping)
and returns the RateWatch key the request is counted against, or ``None`` to let the
request through unchecked.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Environ", "KeyFunc", "client_ip", "header_key", "ip_key"]

Environ = Mapping[str, Any]
KeyFunc = Callable[[Environ], str | None]


def _ip(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(environ: Environ, trust_proxies: bool = False) -> str | None:
    """The client's IP address: ``REMOTE_ADDR``, or ``None`` if it is not an IP.

    With ``trust_proxies`` the first ``X-Forwarded-For`` entry wins when it is an IP.  Only
    turn it on behind a proxy that sets that header itself: otherwise any client picks its
    own address, and with it its own counter.
    """
    if trust_proxies:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if isinstance(forwarded, str):
            first = _ip(forwarded.split(",", 1)[0])
            if first is not None:
                return first
    return _ip(environ.get("REMOTE_ADDR"))


def ip_key(trust_proxies: bool = False) -> KeyFunc:
    """Count per client IP: ``"ip:<address>"``; ``None`` (unchecked) without an address."""

    def key(environ: Environ) -> str | None:
        ip = client_ip(environ, trust_proxies)
        return None if ip is None else f"ip:{ip}"

    return key


def header_key(header: str, prefix: str = "apikey:") -> KeyFunc:
    """Count per value of a request header (an API key): ``prefix`` + the value's SHA-256.

    The value is hashed so the app's own secrets never reach RateWatch's counters, events
    and analytics.  Requests without the header are let through unchecked (``None``):
    combine with an IP key in a function of your own to limit those too.
    """
    name = "HTTP_" + header.upper().replace("-", "_")
    if not header or name in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        raise ValueError(f"header_key needs a request header name, not {header!r}")

    def key(environ: Environ) -> str | None:
        value = environ.get(name)
        if not isinstance(value, str) or not value:
            return None
        return prefix + hashlib.sha256(value.encode("latin-1", "replace")).hexdigest()[:32]

    return key
