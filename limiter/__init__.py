"""The RateWatch limiter: atomic rate-limit decisions on Redis, with tenants, keys and blocks."""

from limiter.algorithms import Algorithm, Outcome, Reason
from limiter.errors import ConfigError, InvalidInput, LimiterError, StoreUnavailable
from limiter.ratelimiter import Decision, Limiter
from limiter.store import Check, MemoryStore, RedisStore

__all__ = [
    "Algorithm",
    "Check",
    "ConfigError",
    "Decision",
    "InvalidInput",
    "Limiter",
    "LimiterError",
    "MemoryStore",
    "Outcome",
    "Reason",
    "RedisStore",
    "StoreUnavailable",
]
