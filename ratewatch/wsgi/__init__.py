"""Rate limiting for WSGI apps (PEP 3333) with the synchronous client.

:class:`RateLimitWSGIMiddleware` wraps any WSGI app; :mod:`ratewatch.wsgi.flask` and
:mod:`ratewatch.wsgi.django` are thin adapters over it (Flask and Django are imported there
only).  Key functions: :func:`ip_key`, :func:`header_key`, or any ``environ -> str | None``.
"""

from __future__ import annotations

from ratewatch.wsgi.gate import Answer, Decision, LimitsFunc, RateLimitGate
from ratewatch.wsgi.keys import Environ, KeyFunc, client_ip, header_key, ip_key
from ratewatch.wsgi.middleware import RateLimitWSGIMiddleware

__all__ = [
    "Answer",
    "Decision",
    "Environ",
    "KeyFunc",
    "LimitsFunc",
    "RateLimitGate",
    "RateLimitWSGIMiddleware",
    "client_ip",
    "header_key",
    "ip_key",
]
