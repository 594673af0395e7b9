"""The coalescer: the checks of concurrent requests go to the store as one call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from limiter.algorithms import Algorithm, Outcome, Reason
from limiter.coalescer import Coalescer
from limiter.errors import StoreUnavailable
from limiter.store.base import Check, payload_bytes
from limiter.store.memory import MemoryStore
from tests.support.polling import turns, until

pytestmark = pytest.mark.timeout(30)

EPOCH_MS = 1_700_000_000_000


class HeldStore:
    """A MemoryStore whose every call is held until the test releases it."""

    def __init__(self) -> None:
        self.memory = MemoryStore(clock=lambda: EPOCH_MS)
        self.calls: list[list[Check]] = []
        self._releases: list[asyncio.Future[BaseException | None]] = []

    async def decide(self, checks: Sequence[Check]) -> list[Outcome]:
        self.calls.append(list(checks))
        release: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._releases.append(release)
        error = await release
        if error is not None:
            raise error
        return await self.memory.decide(checks)

    def release(self, call: int, error: BaseException | None = None) -> None:
        self._releases[call].set_result(error)

    async def answer_all(self, futures: Sequence[asyncio.Future[list[Outcome]]]) -> None:
        """Release every call as it comes until all ``futures`` are done."""
        deadline = time.monotonic() + 5.0
        while not all(future.done() for future in futures):
            for release in self._releases:
                if not release.done():
                    release.set_result(None)
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out answering calls; calls so far: {self.calls}")
            await asyncio.sleep(0)  # a turn for the answered callers to make their next call

    async def wait_for_calls(self, count: int) -> None:
        await until(lambda: len(self.calls) >= count, f"{count} store calls")


def request(name: str, *limits: int) -> list[Check]:
    """One request's checks; a fresh check of limit L comes back with L - 1 remaining, so a
    caller can tell its own outcomes from the others'."""
    return [
        Check("t1", f"{name}:{i}", Algorithm.SLIDING_WINDOW, limit, 60_000, 1)
        for i, limit in enumerate(limits)
    ]


def remaining(outcomes: list[Outcome]) -> list[int]:
    return [outcome.remaining for outcome in outcomes]


async def test_concurrent_requests_share_one_call_and_get_their_own_outcomes_in_order() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide)
    a, b, c = request("a", 11), request("b", 21, 22, 23), request("c", 31, 32)
    futures = [coalescer.submit(a), coalescer.submit(b), coalescer.submit(c)]
    await store.wait_for_calls(1)
    await turns()
    assert store.calls == [a + b + c]
    store.release(0)
    results = await asyncio.gather(*futures)
    assert [remaining(r) for r in results] == [[10], [20, 21, 22], [30, 31]]
    assert all(o.allowed and o.reason is Reason.OK for r in results for o in r)


async def test_checks_arriving_during_a_call_go_into_the_next_single_call() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide, max_in_flight=1)
    first = coalescer.submit(request("first", 5))
    await store.wait_for_calls(1)
    later = [coalescer.submit(request(f"later{i}", 100 + i, 200 + i)) for i in range(4)]
    await turns()
    assert len(store.calls) == 1  # nothing is sent while the only call is in flight
    assert not any(future.done() for future in later)

    store.release(0)
    assert remaining(await first) == [4]
    await store.wait_for_calls(2)
    assert store.calls[1] == [
        check for i in range(4) for check in request(f"later{i}", 100 + i, 200 + i)
    ]
    store.release(1)
    results = await asyncio.gather(*later)
    assert [remaining(r) for r in results] == [[99 + i, 199 + i] for i in range(4)]
    await turns()
    assert len(store.calls) == 2


async def test_at_most_max_in_flight_calls_run_at_once() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide, max_in_flight=2)
    one = coalescer.submit(request("one", 1))
    await store.wait_for_calls(1)
    two = coalescer.submit(request("two", 2))
    await store.wait_for_calls(2)
    waiting = [coalescer.submit(request(f"w{i}", 10 + i)) for i in range(3)]
    await turns()
    assert len(store.calls) == 2

    store.release(1)
    assert remaining(await two) == [1]
    await store.wait_for_calls(3)
    assert store.calls[2] == [c for i in range(3) for c in request(f"w{i}", 10 + i)]
    store.release(0)
    store.release(2)
    assert remaining(await one) == [0]
    assert [remaining(r) for r in await asyncio.gather(*waiting)] == [[9], [10], [11]]


async def test_a_failed_call_fails_exactly_its_callers_and_the_next_call_works() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide, max_in_flight=1)
    failing = [coalescer.submit(request("f1", 1)), coalescer.submit(request("f2", 2))]
    await store.wait_for_calls(1)
    queued = [coalescer.submit(request("q1", 3)), coalescer.submit(request("q2", 4, 5))]
    await turns()

    error = StoreUnavailable("Redis did not answer: connection refused")
    store.release(0, error)
    for future in failing:
        with pytest.raises(StoreUnavailable) as raised:
            await future
        assert raised.value is error
    await store.wait_for_calls(2)
    assert not any(future.done() for future in queued)
    store.release(1)
    assert [remaining(r) for r in await asyncio.gather(*queued)] == [[2], [3, 4]]

    later = coalescer.submit(request("later", 7))
    await store.wait_for_calls(3)
    store.release(2)
    assert remaining(await later) == [6]


async def test_a_caller_that_gave_up_does_not_disturb_the_others() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide)
    a, b, c = (
        coalescer.submit(request(name, limit)) for name, limit in [("a", 5), ("b", 6), ("c", 7)]
    )
    await store.wait_for_calls(1)
    b.cancel()
    store.release(0)
    assert remaining(await a) == [4]
    assert remaining(await c) == [6]
    assert b.cancelled()


async def test_a_batch_holds_at_most_max_batch_checks() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide, max_batch=3, max_in_flight=1)
    first = coalescer.submit(request("first", 1))
    await store.wait_for_calls(1)
    singles = [coalescer.submit(request(f"s{i}", 10 + i)) for i in range(7)]
    await turns()
    await store.answer_all([first, *singles])
    assert [len(call) for call in store.calls] == [1, 3, 3, 1]
    assert [c for call in store.calls[1:] for c in call] == [
        c for i in range(7) for c in request(f"s{i}", 10 + i)
    ]
    assert remaining(await first) == [0]
    assert [remaining(r) for r in await asyncio.gather(*singles)] == [[9 + i] for i in range(7)]


async def test_requests_of_several_checks_are_not_combined_beyond_max_batch() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide, max_batch=4, max_in_flight=1)
    first = coalescer.submit(request("first", 1))
    await store.wait_for_calls(1)
    triples = [coalescer.submit(request(f"t{i}", 10, 20, 30)) for i in range(3)]
    await turns()
    await store.answer_all([first, *triples])
    assert [len(call) for call in store.calls] == [1, 3, 3, 3]
    assert remaining(await first) == [0]
    assert [remaining(r) for r in await asyncio.gather(*triples)] == [[9, 19, 29]] * 3


async def test_a_request_larger_than_a_call_is_split_into_calls_sent_in_order() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide, max_batch=2, max_in_flight=2)
    first = coalescer.submit(request("first", 1))
    await store.wait_for_calls(1)
    big = coalescer.submit(request("big", 1, 2, 3, 4, 5))
    small = coalescer.submit(request("small", 9))
    await store.wait_for_calls(2)
    await turns()
    # two calls may be in flight, but the big request's next part waits for this one,
    # and the same tenant's later request waits behind it
    assert [len(call) for call in store.calls] == [1, 2]
    await store.answer_all([first, big, small])
    assert [len(call) for call in store.calls] == [1, 2, 2, 2]
    assert [c for call in store.calls[1:] for c in call] == request("big", 1, 2, 3, 4, 5) + (
        request("small", 9)
    )
    assert remaining(await first) == [0]
    assert remaining(await big) == [0, 1, 2, 3, 4]
    assert remaining(await small) == [8]


def tenant_request(tenant: str, name: str, count: int, text: int = 0) -> list[Check]:
    return [
        Check(tenant, f"{name}:{i}", Algorithm.SLIDING_WINDOW, 100, 60_000, 1, route="r" * text)
        for i in range(count)
    ]


async def test_a_call_holds_at_most_max_bytes_of_checks() -> None:
    store = HeldStore()
    weight = payload_bytes(tenant_request("t1", "w", 1, text=1000))
    coalescer = Coalescer(store.decide, max_bytes=3 * weight + 10, max_in_flight=1)
    first = coalescer.submit(request("first", 1))
    await store.wait_for_calls(1)
    heavy = [coalescer.submit(tenant_request("t1", f"h{i}", 2, text=1000)) for i in range(3)]
    await turns()
    await store.answer_all([first, *heavy])
    # whole requests as long as they fit: two of two checks do not
    assert [len(call) for call in store.calls] == [1, 2, 2, 2]
    # a request heavier than a call goes in parts of at most max_bytes
    big = coalescer.submit(tenant_request("t1", "big", 7, text=1000))
    await store.answer_all([big])
    assert [len(call) for call in store.calls[4:]] == [3, 3, 1]
    assert remaining(await big) == [99] * 7


async def test_tenants_are_served_round_robin_so_a_flood_queues_behind_itself() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide, max_batch=8, max_in_flight=1)
    first = coalescer.submit(request("first", 1))
    await store.wait_for_calls(1)
    flood = [coalescer.submit(tenant_request("flood", f"f{i}", 4)) for i in range(10)]
    quiet = coalescer.submit(tenant_request("quiet", "q", 1))
    other = coalescer.submit(tenant_request("other", "o", 2))
    await turns()
    store.release(0)
    await store.wait_for_calls(2)
    # the next call: a request of each waiting tenant in turn, within the call's bound
    assert [check.tenant for check in store.calls[1]] == ["flood"] * 4 + ["quiet", "other", "other"]
    await store.answer_all([first, *flood, quiet, other])
    assert [(o.allowed, o.remaining) for o in quiet.result()] == [(True, 99)]
    assert all(len(call) <= 8 for call in store.calls)
    assert [remaining(f.result()) for f in flood] == [[99] * 4] * 10


async def test_a_failed_part_fails_its_whole_request_and_the_rest_is_not_sent() -> None:
    store = HeldStore()
    coalescer = Coalescer(store.decide, max_batch=2, max_in_flight=1)
    big = coalescer.submit(tenant_request("t1", "big", 5))
    after = coalescer.submit(tenant_request("t1", "after", 1))
    await store.wait_for_calls(1)
    store.release(0)
    await store.wait_for_calls(2)
    error = StoreUnavailable("Redis did not answer: timeout")
    store.release(1, error)
    with pytest.raises(StoreUnavailable):
        await big
    await store.wait_for_calls(3)
    assert store.calls[2] == tenant_request("t1", "after", 1)  # not the big one's last part
    store.release(2)
    assert remaining(await after) == [99]
