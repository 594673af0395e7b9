"""The Redis store: one EVALSHA of the check script decides a batch of checks.

On Redis Cluster checks are grouped by tenant (their keys share a hash tag, so a group is
valid on one shard) and each group is one script call; on a single server the whole batch
is one call.

With an event stream (the embedded deployment) the script also appends the batch's
decisions to a Redis stream in the same atomic call, one entry per call, in the compact
encoding of ``stream.events``: the store encodes each check's ``EntryCheck`` and the script
adds the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from limiter.algorithms import Algorithm, Outcome, Reason, with_window
from limiter.deadline import PAST_DEADLINE, CallDeadline
from limiter.errors import ConfigError, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.scripts import script_source
from limiter.store.base import Check
from limiter.store.script_pipe import ScriptPipe
from stream.events import EntryCheck, encode_entry_check

_LUA_FILES = (
    "prelude.lua",
    "sliding_window.lua",
    "token_bucket.lua",
    "fixed_window.lua",
    "check.lua",
)
_REASONS = list(Reason)
# the script's algorithm codes
_CODES = {algorithm: algorithm.code for algorithm in Algorithm}
# distinct check shapes whose arguments are kept encoded (forgotten all at once beyond)
MAX_ENCODED_SHAPES = 1024  # about 400 bytes each
_new = tuple.__new__  # an Outcome from its five fields, without NamedTuple's __new__ call
# a check's arguments to the script but its keys: algorithm, limit, window (ms), cost, the
# count of its block keys and a policy's windows (empty for a check of one window)
_Shape = tuple[Algorithm, int, int, int, int, tuple[tuple[int, int], ...]]


def _encode_shape(shape: _Shape) -> tuple[bytes, ...]:
    """``shape`` as the script reads it: code, limit, window, cost, block keys, the count of
    the further windows, then each one's limit and window."""
    algorithm, limit, window_ms, cost, blocks, windows = shape
    further = [value for window in windows[1:] for value in window]
    numbers = (limit, window_ms, cost, blocks, len(windows[1:]), *further)
    return (_CODES[algorithm].encode(), *(b"%d" % number for number in numbers))


log = logging.getLogger("ratewatch.limiter")


def check_script_source() -> str:
    """The check script: the helpers, the three algorithms and the batch dispatcher."""
    return script_source("limiter", *_LUA_FILES)


class RedisStore:
    def __init__(
        self,
        redis: Redis,
        keyspace: Keyspace,
        *,
        cluster: bool = False,
        event_stream: str | None = None,
        instance: str = "",
        deadline: CallDeadline | None = None,
        pipe: ScriptPipe | None = None,
    ):
        if cluster and event_stream is not None:
            raise ConfigError(
                "a Redis event stream needs a single Redis server, not a cluster: "
                "use --kafka for the decision stream"
            )
        self._redis = redis
        # the script's calls, on a connection of their own; None: through ``redis``
        self._call: Callable[..., Awaitable[Any]] = (
            pipe.evalsha if pipe is not None and not cluster else redis.evalsha
        )
        self._keyspace = keyspace
        self._cluster = cluster
        self._stream = event_stream
        self._instance = instance
        self._source = check_script_source()
        self._sha: str | None = None
        # a shape of check's arguments (algorithm code, limit, window, cost, block keys, a
        # policy's further windows), encoded: a batch's checks mostly share a few shapes, and
        # bytes pack several times faster than the ints they stand for
        self._shapes: dict[_Shape, tuple[bytes, ...]] = {}
        # only a streaming call needs one: without a stream nothing is counted twice
        self._deadline = deadline if event_stream is not None else None

    async def load(self) -> None:
        """Load the script once; a server restart (NOSCRIPT) reloads it on demand."""
        try:
            self._sha = await self._redis.script_load(self._source)
            if self._deadline is not None:
                await self._check_clocks(self._deadline)
        except RedisError as exc:
            raise StoreUnavailable(f"could not load the check script: {exc}") from exc

    async def _check_clocks(self, deadline: CallDeadline) -> None:
        """Deadlines need Redis's clock within the margin of ours: one ahead by more would
        refuse every call, so the deadlines are dropped (logged) rather than the checks."""
        offset, uncertainty = await deadline.clock_offset_ms(self._redis)
        if abs(offset) - uncertainty > deadline.margin_ms / 2:
            log.error(
                "Redis's clock is %.0f ms off this host's (margin %d ms): calls carry no "
                "deadline, and a call that times out and then runs may be counted twice",
                offset,
                deadline.margin_ms,
            )
            self._deadline = None

    async def decide(self, checks: Sequence[Check], now_ms: int = 0) -> list[Outcome]:
        by_tenant: dict[str, list[int]] = {}
        if not self._cluster:
            return await self._decide_group(checks, now_ms)
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
        streaming = self._stream is not None
        keys: list[str] = [self._stream] if self._stream is not None else []
        keyspace = self._keyspace
        flushed_ns = time.perf_counter_ns()
        counter = keyspace.counter
        # the keys' prefixes, each made once a call: most checks of a call share them
        counters: dict[tuple[str, Algorithm, int], str] = {}
        blocks: dict[tuple[str, str], str] = {}
        instance, encode = self._instance, encode_entry_check
        encoded = self._shapes
        if len(encoded) > MAX_ENCODED_SHAPES:
            encoded.clear()
        # the call's shapes, each sent once, and each check's shape by its index in them
        indexes: dict[_Shape, bytes] = {}
        shapes: list[bytes] = []
        per_check: list[Any] = []
        several = False
        for check in checks:
            tenant, algorithm, key = check.tenant, check.algorithm, check.key
            windows = check.windows
            named = (tenant, algorithm, check.window_ms)
            prefix = counters.get(named)
            if prefix is None:
                prefix = counters[named] = keyspace.counter_prefix(*named)
            keys.append(prefix + key)
            multi = len(windows) > 1
            if multi:
                several = True
                keys += [counter(tenant, algorithm, window_ms, key) for _, window_ms in windows[1:]]
            subjects = check.block_subjects()
            for scope, value in subjects:
                prefix = blocks.get((tenant, scope))
                if prefix is None:
                    prefix = blocks[tenant, scope] = keyspace.block_prefix(tenant, scope)
                keys.append(prefix + value)
            shape = (algorithm, check.limit, check.window_ms, check.cost, len(subjects), windows)
            index = indexes.get(shape)
            if index is None:
                index = indexes[shape] = b"%d" % (len(indexes) + 1)
                definition = encoded.get(shape)
                if definition is None:
                    definition = encoded[shape] = _encode_shape(shape)
                shapes += definition
            per_check.append(index)
            if streaming:
                latency_us = (flushed_ns - check.started_ns) // 1000 if check.started_ns else 0
                per_check.append(encode(EntryCheck(
                    tenant, check.key, check.algorithm.value, check.limit,
                    check.window_ms // 1000, check.cost, check.ip, check.route,
                    check.user_agent, check.user_id, latency_us, instance, check.segment,
                    check.policy, check.shadow, check.trace_id,
                )))  # fmt: skip
        args: list[Any] = [now_ms, len(checks), b"1" if streaming else b"0", 0, len(indexes)]
        args += shapes
        args += per_check
        if self._deadline is not None:
            args[3] = self._deadline.of_call_sent_now()
        flat = await self._evalsha(keys, args)
        reasons = _REASONS
        if not several:
            return [
                _new(
                    Outcome,
                    (flat[i] == 1, flat[i + 1], flat[i + 2], flat[i + 3], reasons[flat[i + 4]]),
                )
                for i in range(0, len(flat), 5)
            ]
        outcomes = []
        i = 0
        for check in checks:
            outcome = _new(
                Outcome, (flat[i] == 1, flat[i + 1], flat[i + 2], flat[i + 3], reasons[flat[i + 4]])
            )
            if len(check.windows) > 1:
                window = flat[i + 5]
                outcomes.append(with_window(outcome, window) if window else outcome)
                i += 6
            else:
                outcomes.append(outcome)
                i += 5
        return outcomes

    async def _evalsha(self, keys: list[str], args: list[Any]) -> list[int]:
        try:
            if self._sha is None:
                await self.load()
            assert self._sha is not None
            try:
                result: list[int] = await self._call(self._sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.load()
                result = await self._call(self._sha, len(keys), *keys, *args)
            return result
        except ResponseError as exc:
            if str(exc).startswith(PAST_DEADLINE):
                # refused, changing nothing: the client gave up on it (or is about to)
                raise StoreUnavailable(f"the call reached Redis past its deadline: {exc}") from exc
            raise StoreUnavailable(f"the check script failed: {exc}") from exc
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc!r}") from exc
