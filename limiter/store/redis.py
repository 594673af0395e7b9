"""The Redis store: one EVALSHA of the check script decides a batch of checks.

Checks are grouped by tenant (their keys share a hash tag, so a group is valid on Redis
Cluster) and each group is one script call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from limiter.algorithms import Outcome, Reason
from limiter.errors import StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.store.base import Check

_LUA_FILES = (
    "prelude.lua",
    "sliding_window.lua",
    "token_bucket.lua",
    "fixed_window.lua",
    "check.lua",
)
_REASONS = list(Reason)


def check_script_source() -> str:
    """The check script: the helpers, the three algorithms and the batch dispatcher."""
    lua = resources.files("limiter") / "lua"
    return "\n".join((lua / name).read_text(encoding="utf-8") for name in _LUA_FILES)


class RedisStore:
    def __init__(self, redis: Redis, keyspace: Keyspace):
        self._redis = redis
        self._keyspace = keyspace
        self._source = check_script_source()
        self._sha: str | None = None

    async def load(self) -> None:
        """Load the script once; a server restart (NOSCRIPT) reloads it on demand."""
        try:
            self._sha = await self._redis.script_load(self._source)
        except RedisError as exc:
            raise StoreUnavailable(f"could not load the check script: {exc}") from exc

    async def decide(self, checks: Sequence[Check], now_ms: int = 0) -> list[Outcome]:
        by_tenant: dict[str, list[int]] = {}
        for index, check in enumerate(checks):
            by_tenant.setdefault(check.tenant, []).append(index)
        if len(by_tenant) == 1:
            return await self._decide_group(checks, now_ms)
        results: list[Outcome | None] = [None] * len(checks)
        groups = list(by_tenant.values())
        answers = await asyncio.gather(
            *(self._decide_group([checks[i] for i in group], now_ms) for group in groups)
        )
        for group, outcomes in zip(groups, answers, strict=True):
            for index, outcome in zip(group, outcomes, strict=True):
                results[index] = outcome
        return results  # type: ignore[return-value]  # every index was filled above

    async def _decide_group(self, checks: Sequence[Check], now_ms: int) -> list[Outcome]:
        keys: list[str] = []
        args: list[Any] = [now_ms, len(checks)]
        keyspace = self._keyspace
        for check in checks:
            subjects = check.block_subjects()
            keys.append(keyspace.counter(check.tenant, check.algorithm, check.window_ms, check.key))
            keys.extend(keyspace.block(check.tenant, scope, value) for scope, value in subjects)
            args += (check.algorithm.code, check.limit, check.window_ms, check.cost, len(subjects))
        flat = await self._evalsha(keys, args)
        reasons = _REASONS
        return [
            Outcome(flat[i] == 1, flat[i + 1], flat[i + 2], flat[i + 3], reasons[flat[i + 4]])
            for i in range(0, len(flat), 5)
        ]

    async def _evalsha(self, keys: list[str], args: list[Any]) -> list[int]:
        try:
            if self._sha is None:
                await self.load()
            assert self._sha is not None
            try:
                result: list[int] = await self._redis.evalsha(self._sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.load()
                result = await self._redis.evalsha(self._sha, len(keys), *keys, *args)
            return result
        except ResponseError as exc:
            raise StoreUnavailable(f"the check script failed: {exc}") from exc
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc!r}") from exc
