"""``Limiter``: rate limiting as a library, on any decision store.

    from limiter import Limiter, MemoryStore
    limits = Limiter(MemoryStore())
    decision = await limits.check("user:123", limit=100, window=3600)

With ``RedisStore`` the decisions are the service's own (the same Lua script); with
``MemoryStore`` they are identical but local to the process.
"""

from __future__ import annotations

from limiter.algorithms import MAX_LIMIT_WINDOW, MAX_WINDOW_SECONDS, Algorithm
from limiter.errors import InvalidInput
from limiter.results import CheckResult, to_result
from limiter.store.base import Check, DecisionStore

# A decision in the API's units: the check API's answer, so that the library and the
# service say the same for the same outcome.
Decision = CheckResult


class Limiter:
    def __init__(
        self,
        store: DecisionStore,
        tenant: str = "default",
        algorithm: Algorithm = Algorithm.SLIDING_WINDOW,
    ):
        self._store = store
        self._tenant = tenant
        self._algorithm = algorithm

    async def check(
        self,
        key: str,
        *,
        limit: int,
        window: int,
        cost: int = 1,
        algorithm: Algorithm | None = None,
        ip: str | None = None,
        user_id: str | None = None,
    ) -> Decision:
        """Count ``cost`` against ``limit`` per ``window`` seconds for ``key``."""
        if not key:
            raise InvalidInput("key must not be empty")
        if not 1 <= window <= MAX_WINDOW_SECONDS:
            raise InvalidInput(f"window {window!r} is not within 1-{MAX_WINDOW_SECONDS} seconds")
        if limit < 1 or limit * window > MAX_LIMIT_WINDOW:
            raise InvalidInput(
                f"limit {limit!r} is not within 1 and limit × window <= {MAX_LIMIT_WINDOW}"
            )
        if cost < 0:
            raise InvalidInput(f"cost {cost!r} must not be negative")
        check = Check(
            self._tenant, key, algorithm or self._algorithm, limit, window * 1000, cost, ip, user_id
        )
        outcome = (await self._store.decide([check]))[0]
        return to_result(outcome, limit)
