"""Decision stores: Redis (the real one) and in memory (library use and fail-open)."""

from limiter.store.base import Check, DecisionStore
from limiter.store.memory import MemoryStore
from limiter.store.redis import RedisStore

__all__ = ["Check", "DecisionStore", "MemoryStore", "RedisStore"]
