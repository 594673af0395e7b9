"""The RateWatch limiter: atomic rate-limit decisions on Redis, with tenants, keys and blocks."""

from limiter.algorithms import Algorithm, Outcome, Reason
from limiter.errors import ConfigError, LimiterError, StoreUnavailable

__all__ = [
    "Algorithm",
    "ConfigError",
    "LimiterError",
    "Outcome",
    "Reason",
    "StoreUnavailable",
]
