"""Failure isolation against real Redis servers: a slow call is that call's failure, the
failure policy keeps blocks enforced, and one tenant's flood cannot switch another tenant
to the failure policy."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from limiter.algorithms import Algorithm, Reason
from limiter.coalescer import Coalescer
from limiter.failover import FailoverDecider, StoreHealth
from limiter.keyspace import Keyspace
from limiter.metrics import LimiterMetrics
from limiter.redis_client import redis_from_url
from limiter.state.block_mirror import BlockMirror
from limiter.state.blocks import BlockStore
from limiter.state.tenants import FailMode
from limiter.store.base import Check
from limiter.store.memory import MemoryStore
from limiter.store.redis import RedisStore
from tests.support.credentials import create_key
from tests.support.polling import eventually, until, wait_until
from tests.support.servers import RatewatchProcess, RedisServer, start_limiter

pytestmark = pytest.mark.timeout(120)

BLOCKED_IP = "198.51.100.7"


def ip_check(tenant: str, ip: str, key: str = "k") -> Check:
    return Check(tenant, key, Algorithm.SLIDING_WINDOW, 1000, 60_000, 1, ip=ip)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


class Limiter:
    """The check path as the server wires it, on a Redis of the test's own."""

    def __init__(self, url: str, prefix: str, probe_timeout: float = 1.0):
        self.client = redis_from_url(url, timeout=0.25)
        self.prober = redis_from_url(url, timeout=probe_timeout, max_connections=2)
        self.keyspace = Keyspace(prefix)
        self.metrics = LimiterMetrics()
        self.health = StoreHealth(
            self.prober.ping, self.metrics, probe_interval=0.02, probe_timeout=probe_timeout
        )
        self.fallback = MemoryStore()
        self.mirror = BlockMirror(self.client, self.keyspace, self.fallback, interval=0.05)
        store = RedisStore(self.client, self.keyspace)
        self.decider = FailoverDecider(
            Coalescer(self.health.guard(store.decide)), self.fallback, self.health
        )
        self.blocks = BlockStore(self.client, self.keyspace)
        self.downs = 0  # how often the store was seen down
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *tenants: str) -> None:
        for tenant in tenants:  # as creating a key of theirs registers them
            await self.client.hsetnx(self.keyspace.tenants, tenant, "{}")
        self._tasks = [
            asyncio.create_task(self.health.watch()),
            asyncio.create_task(self.mirror.run()),
            asyncio.create_task(self._observe()),
        ]

    async def _observe(self) -> None:
        was_up = True
        while True:
            if was_up and not self.health.up:
                self.downs += 1
            was_up = self.health.up
            await asyncio.sleep(0.001)  # sampled every millisecond: no outage slips between

    async def decide(self, check: Check, mode: FailMode = FailMode.OPEN) -> tuple[bool, Reason]:
        [outcome] = await self.decider.decide([check], mode)
        return outcome.allowed, outcome.reason

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose(close_connection_pool=True)
        await self.prober.aclose(close_connection_pool=True)


@pytest.fixture
async def limiter_on(own_redis: RedisServer) -> AsyncIterator[Limiter]:
    limiter = Limiter(own_redis.url, "iso")
    await limiter.start("victim", "flood")
    yield limiter
    await limiter.close()


# the local copy of blocks


async def test_the_block_copy_follows_the_block_records(redis: Redis, tenant: str) -> None:
    keyspace = Keyspace("mirror" + secrets.token_hex(4))
    await redis.hsetnx(keyspace.tenants, tenant, "{}")
    blocks = BlockStore(redis, keyspace)
    fallback = MemoryStore()
    mirror = BlockMirror(redis, keyspace, fallback, full_every=3)

    def reason(ip: str, key: str = "k") -> Reason:
        return fallback.decide_one(ip_check(tenant, ip, key)).reason

    enforced = await blocks.create(tenant, "ip", BLOCKED_IP, 60, "abuse")
    await blocks.create(tenant, "ip", "198.51.100.8", 60, "watch", mode="shadow")
    await blocks.create(tenant, "key", "bad", 60, "abuse")
    await mirror.refresh()  # pass 0: full
    assert reason(BLOCKED_IP) is Reason.BLOCKED
    assert reason("198.51.100.8") is Reason.OK  # shadow blocks are not enforced
    assert reason("198.51.100.9", key="bad") is Reason.BLOCKED
    blocked = fallback.decide_one(ip_check(tenant, BLOCKED_IP))
    assert 59_000 < blocked.retry_ms <= 60_000
    assert mirror.status()["subjects"] == 2
    # another tenant's blocks are its own
    assert fallback.decide_one(ip_check("other", BLOCKED_IP)).reason is Reason.OK

    await blocks.remove(tenant, enforced.id)
    await mirror.refresh()  # pass 1: the version moved
    assert reason(BLOCKED_IP) is Reason.OK
    assert reason("198.51.100.9", key="bad") is Reason.BLOCKED

    # a record written without moving the version is read by the next full pass only
    record = {"id": "blk_raw", "scope": "ip", "value": "203.0.113.5", "reason": "raw",
              "created_at": 0, "expires_at": 4e9, "mode": "enforce"}  # fmt: skip
    await redis.hset(keyspace.block_records(tenant), "blk_raw", json.dumps(record))
    await mirror.refresh()  # pass 2: versions unchanged, nothing reread
    assert reason("203.0.113.5") is Reason.OK
    await mirror.refresh()  # pass 3: full
    assert reason("203.0.113.5") is Reason.BLOCKED

    # a tenant that left the registry leaves the copy
    await redis.hdel(keyspace.tenants, tenant)
    await mirror.refresh()
    assert reason("198.51.100.9", key="bad") is Reason.OK
    assert mirror.status()["subjects"] == 0


async def test_the_block_copy_follows_a_flood_of_blocks_between_full_passes(
    redis: Redis, tenant: str
) -> None:
    # between full passes only the records not read before are fetched: each pass must
    # still see every block added and none lifted
    keyspace = Keyspace("mirror" + secrets.token_hex(4))
    await redis.hsetnx(keyspace.tenants, tenant, "{}")
    blocks = BlockStore(redis, keyspace)
    fallback = MemoryStore()
    mirror = BlockMirror(redis, keyspace, fallback, full_every=1000)
    made = []
    for round_ in range(5):
        for n in range(40):
            made.append(await blocks.create(tenant, "ip", f"10.0.{round_}.{n}", 60, "flood"))
        await blocks.create(tenant, "ip", f"10.1.{round_}.1", 60, "watch", mode="shadow")
        lifted = made.pop(len(made) // 2)
        await blocks.remove(tenant, lifted.id)
        await mirror.refresh()
        assert mirror.status()["subjects"] == len(made)
        for block in made:
            assert fallback.decide_one(ip_check(tenant, block.value)).reason is Reason.BLOCKED
        assert fallback.decide_one(ip_check(tenant, lifted.value)).reason is Reason.OK
        assert fallback.decide_one(ip_check(tenant, f"10.1.{round_}.1")).reason is Reason.OK


async def test_the_block_copy_outlasts_a_redis_that_lost_its_data(
    redis: Redis, tenant: str
) -> None:
    keyspace = Keyspace("mirror" + secrets.token_hex(4))
    await redis.set(keyspace.epoch, "1")
    await redis.hsetnx(keyspace.tenants, tenant, "{}")
    blocks = BlockStore(redis, keyspace)
    fallback = MemoryStore()
    mirror = BlockMirror(redis, keyspace, fallback, full_every=1)
    await blocks.create(tenant, "ip", BLOCKED_IP, 60, "abuse")
    await mirror.refresh()
    assert fallback.decide_one(ip_check(tenant, BLOCKED_IP)).reason is Reason.BLOCKED

    # Redis comes back empty: the failure policy answers while the records are restored,
    # and the copy it reads keeps the block
    await redis.delete(*await redis.keys(f"{keyspace.prefix}:*"))
    await mirror.refresh()
    assert fallback.decide_one(ip_check(tenant, BLOCKED_IP)).reason is Reason.BLOCKED
    assert mirror.status()["subjects"] == 1

    # restored (the epoch written last), and the block lifted since: the copy follows again
    await redis.hsetnx(keyspace.tenants, tenant, "{}")
    await redis.set(keyspace.epoch, "2")
    await mirror.refresh()
    assert fallback.decide_one(ip_check(tenant, BLOCKED_IP)).reason is Reason.OK
    assert mirror.status()["subjects"] == 0


async def test_blocks_stay_enforced_while_redis_is_frozen_and_decisions_return_after(
    own_redis: RedisServer, limiter_on: Limiter
) -> None:
    limiter = limiter_on
    await limiter.blocks.create("victim", "ip", BLOCKED_IP, 300, "abuse")
    await eventually(lambda: limiter.mirror.size == 1, 5, "the copy to hold the block")
    assert await limiter.decide(ip_check("victim", BLOCKED_IP)) == (False, Reason.BLOCKED)

    assert own_redis.process is not None
    pid = own_redis.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        # the first call times out and gets the policy; the probe then marks Redis down
        assert await limiter.decide(ip_check("victim", "192.0.2.1")) == (True, Reason.FAIL_OPEN)
        await until(lambda: not limiter.health.up, "the probe to mark the frozen Redis down")
        for _ in range(20):
            assert await limiter.decide(ip_check("victim", BLOCKED_IP)) == (False, Reason.BLOCKED)
            assert await limiter.decide(ip_check("victim", "192.0.2.1")) == (
                True,
                Reason.FAIL_OPEN,
            )
        assert limiter.mirror.size == 1  # failed refreshes keep the copy
    finally:
        os.kill(pid, signal.SIGCONT)
    await until(lambda: limiter.health.up, "the probe to see Redis answer again")
    assert await limiter.decide(ip_check("victim", "192.0.2.1")) == (True, Reason.OK)
    assert await limiter.decide(ip_check("victim", BLOCKED_IP)) == (False, Reason.BLOCKED)


async def test_blocks_stay_enforced_while_redis_is_gone(
    own_redis: RedisServer, limiter_on: Limiter
) -> None:
    limiter = limiter_on
    await limiter.blocks.create("victim", "user_id", "mallory", 300, "abuse")
    await eventually(lambda: limiter.mirror.size == 1, 5, "the copy to hold the block")
    own_redis.kill()
    mallory = Check("victim", "k", Algorithm.SLIDING_WINDOW, 1000, 60_000, 1, user_id="mallory")
    assert await limiter.decide(mallory) == (False, Reason.BLOCKED)
    await until(lambda: not limiter.health.up, "the probe to mark Redis down")
    assert await limiter.decide(mallory) == (False, Reason.BLOCKED)
    assert await limiter.decide(mallory, FailMode.CLOSED) == (False, Reason.FAIL_CLOSED)
    assert await limiter.decide(mallory._replace(user_id="bob")) == (True, Reason.FAIL_OPEN)
    own_redis.start()  # the same port, an empty server
    await until(lambda: limiter.health.up, "the probe to see Redis again")
    assert await limiter.decide(mallory) == (True, Reason.OK)


async def test_one_slow_call_does_not_mark_the_store_down_for_the_others(
    limiter_on: Limiter,
) -> None:
    limiter = limiter_on
    assert await limiter.decide(ip_check("victim", "192.0.2.1")) == (True, Reason.OK)
    # Redis holds every command for 0.6 s: longer than a call's timeout (0.25 s), shorter
    # than the probe's (1 s)
    await limiter.prober.client_pause(600, all=True)
    slow = await limiter.decide(ip_check("flood", "192.0.2.2"))
    assert slow == (True, Reason.FAIL_OPEN)  # that call's own failure
    assert limiter.health.failures == 1
    await limiter.prober.ping()  # answered once the pause ends, as the health probe is
    await until(lambda: limiter.health.probes >= 1, "the probe after the failed call")
    assert await limiter.decide(ip_check("victim", "192.0.2.1")) == (True, Reason.OK)
    assert limiter.health.failures == 0
    assert limiter.downs == 0
    assert limiter.health.up
    assert limiter.metrics.registry.get_sample_value("ratewatch_redis_errors_total") == 1


# the finding's flood, against a whole limiter process


@pytest.fixture
def streaming_limiter(own_redis: RedisServer, tmp_path: Path) -> Iterator[RatewatchProcess]:
    """A limiter whose check script streams every decision, as in ``ratewatch up``: its
    calls carry each check's route and user agent, the heaviest a call can be."""
    process = start_limiter(own_redis.url, tmp_path / "limiter", "--redis-events")
    yield process
    process.stop()


def flood_batch(wave: int, request: int) -> dict[str, object]:
    return {
        "checks": [
            {
                "key": f"flood:{wave}:{request}:{i}",
                "limit": 1_000_000,
                "window": 60,
                "ip": f"192.0.2.{i % 250}",
                "route": "/" + "r" * 2047,
                "user_agent": "u" * 2048,
            }
            for i in range(390)
        ]
    }


@pytest.fixture
def blocked_victim(own_redis: RedisServer, streaming_limiter: RatewatchProcess) -> dict[str, str]:
    """Keys of a flooding tenant and of a victim whose ``BLOCKED_IP`` is blocked, once the
    limiter's copy of blocks holds that block."""
    keys = {
        "flood": create_key(own_redis.url, "flood"),
        "victim": create_key(own_redis.url, "victim", admin=True),
    }
    base = streaming_limiter.base_url

    def copied() -> bool:
        detailed = httpx.get(base + "/health/detailed", timeout=5).json()
        return bool(detailed["dependencies"]["redis"]["blocks_copy"]["subjects"] >= 1)

    headers = {"Authorization": f"Bearer {keys['victim']}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        created = client.post(
            "/v1/blocks", json={"scope": "ip", "value": BLOCKED_IP, "ttl": 600, "reason": "abuse"}
        )
        assert created.status_code in (200, 201), created.text
    wait_until(copied, 10, "the limiter's copy of blocks to hold the block")
    return keys


async def test_a_flood_of_one_tenant_never_lets_another_tenants_blocked_ip_through(
    streaming_limiter: RatewatchProcess, blocked_victim: dict[str, str]
) -> None:
    base = streaming_limiter.base_url
    victim_headers = {"Authorization": f"Bearer {blocked_victim['victim']}"}
    flood_headers = {"Authorization": f"Bearer {blocked_victim['flood']}"}
    bodies = [[flood_batch(wave, r) for r in range(12)] for wave in range(2)]
    blocked: list[dict[str, object]] = []
    unblocked: list[dict[str, object]] = []
    flood_reasons: dict[str, int] = {}
    limits = httpx.Limits(max_connections=32)
    async with (
        httpx.AsyncClient(base_url=base, headers=flood_headers, timeout=60, limits=limits) as flood,
        httpx.AsyncClient(base_url=base, headers=victim_headers, timeout=60) as victim,
    ):

        async def send(body: dict[str, object]) -> None:
            response = await flood.post("/v1/batch", json=body)
            assert response.status_code == 200, response.text
            for result in response.json()["results"]:
                reason = str(result.get("reason"))
                flood_reasons[reason] = flood_reasons.get(reason, 0) + 1

        async def waves() -> None:
            for wave in bodies:
                await asyncio.gather(*(send(body) for body in wave))

        async def probe(done: asyncio.Task[None]) -> None:
            while not done.done() or len(blocked) < 29:
                for ip, answers in ((BLOCKED_IP, blocked), ("192.0.2.250", unblocked)):
                    body = {"key": "probe", "limit": 1_000_000, "window": 60, "ip": ip}
                    response = await victim.post("/v1/check", json=body)
                    assert response.status_code == 200, response.text
                    answers.append(response.json())

        flooding = asyncio.create_task(waves())
        await asyncio.gather(flooding, probe(flooding))

    assert sum(flood_reasons.values()) == 2 * 12 * 390
    assert {(r["allowed"], r["reason"]) for r in blocked} == {(False, "blocked")}, blocked
    # the other tenant's checks were answered by Redis, not by the failure policy
    assert {r["reason"] for r in unblocked} == {"ok"}, (unblocked, flood_reasons)
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        metrics = (await client.get("/metrics")).text
    assert "ratewatch_redis_up 1.0" in metrics
