"""RateWatch: the Python SDK, middleware and the ``ratewatch`` command."""

from ratewatch.client import FAIL_OPEN_REASON, AsyncRateWatch, Check, CheckResult, RateWatch
from ratewatch.errors import (
    AuthenticationError,
    InvalidRequest,
    RateWatchError,
    ServiceUnavailable,
)
from ratewatch.middleware import RateLimitMiddleware

__all__ = [
    "FAIL_OPEN_REASON",
    "AsyncRateWatch",
    "AuthenticationError",
    "Check",
    "CheckResult",
    "InvalidRequest",
    "RateLimitMiddleware",
    "RateWatch",
    "RateWatchError",
    "ServiceUnavailable",
]
