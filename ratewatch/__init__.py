"""RateWatch: the Python SDK, ASGI and WSGI middleware and the ``ratewatch`` command.

The SDK's names are imported on first use: the ``ratewatch`` command (a subpackage, so
this module runs first) starts the limiter without loading the SDK's HTTP client.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ratewatch.client import FAIL_OPEN_REASON, AsyncRateWatch, Check, CheckResult, RateWatch
    from ratewatch.errors import (
        AuthenticationError,
        InvalidRequest,
        RateWatchError,
        ServiceUnavailable,
    )
    from ratewatch.middleware import RateLimitMiddleware
    from ratewatch.signing import RequestSigner
    from ratewatch.wsgi import RateLimitWSGIMiddleware

_MODULES = {
    "FAIL_OPEN_REASON": "ratewatch.client",
    "AsyncRateWatch": "ratewatch.client",
    "Check": "ratewatch.client",
    "CheckResult": "ratewatch.client",
    "RateWatch": "ratewatch.client",
    "AuthenticationError": "ratewatch.errors",
    "InvalidRequest": "ratewatch.errors",
    "RateWatchError": "ratewatch.errors",
    "ServiceUnavailable": "ratewatch.errors",
    "RateLimitMiddleware": "ratewatch.middleware",
    "RequestSigner": "ratewatch.signing",
    "RateLimitWSGIMiddleware": "ratewatch.wsgi",
}

__all__ = [
    "FAIL_OPEN_REASON",
    "AsyncRateWatch",
    "AuthenticationError",
    "Check",
    "CheckResult",
    "InvalidRequest",
    "RateLimitMiddleware",
    "RateLimitWSGIMiddleware",
    "RateWatch",
    "RateWatchError",
    "RequestSigner",
    "ServiceUnavailable",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'ratewatch' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
