"""API-key authentication: the principal of a key, the local cache, and Redis outages."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

import limiter.auth
from limiter.auth import Authenticator, Principal
from limiter.errors import StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.redis_client import redis_from_url
from limiter.state.apikeys import MAX_KEY_LENGTH, KeyHasher, KeyRecord, KeyStore
from limiter.state.tenants import FailMode, TenantSettingsStore
from tests.support.polling import turns, until
from tests.support.servers import RedisServer

pytestmark = pytest.mark.timeout(30)

SECRET = bytes(range(32))
TTL = 5.0


class CountingKeyStore(KeyStore):
    """The real key store, counting the lookups that reach Redis."""

    def __init__(self, redis: Redis, keyspace: Keyspace, hasher: KeyHasher) -> None:
        super().__init__(redis, keyspace, hasher)
        self.lookups = 0

    async def lookup(self, api_key: str) -> KeyRecord | None:
        self.lookups += 1
        return await super().lookup(api_key)


class Clock:
    """The authenticator's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Env:
    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.keyspace = Keyspace(prefix)
        self.keys = CountingKeyStore(client, self.keyspace, KeyHasher(SECRET))
        self.settings = TenantSettingsStore(client, self.keyspace)

    def authenticator(
        self,
        default: FailMode = FailMode.OPEN,
        ttl: float = TTL,
        max_entries: int = 1000,
        max_unknown: int = 1024,
    ) -> Authenticator:
        return Authenticator(
            self.keys,
            self.settings,
            default,
            ttl=ttl,
            max_entries=max_entries,
            max_unknown=max_unknown,
        )

    async def cleanup(self) -> None:
        keys = [key async for key in self.client.scan_iter(match=f"{self.keyspace.prefix}:*")]
        if keys:
            await self.client.delete(*keys)
        await self.client.aclose(close_connection_pool=True)  # the client does not own its pool


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(limiter.auth, "time", clock)
    return clock


@pytest.fixture
async def env(redis_server: RedisServer) -> AsyncIterator[Env]:
    """The session's Redis under a key prefix of the test's own."""
    env = Env(redis_from_url(redis_server.url, 2.0), "authtest-" + secrets.token_hex(4))
    yield env
    await env.cleanup()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, to crash."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def crashable(own_redis: RedisServer) -> AsyncIterator[Env]:
    env = Env(redis_from_url(own_redis.url, 2.0), "rw")
    yield env
    await env.client.aclose(close_connection_pool=True)


async def test_a_valid_key_is_the_principal_of_its_tenant(env: Env, tenant: str) -> None:
    standard, record = await env.keys.create(tenant, name="svc", segment="pro")
    admin, admin_record = await env.keys.create(tenant, admin=True)
    auth = env.authenticator()
    assert await auth.authenticate(standard) == Principal(
        tenant, record.id, False, FailMode.OPEN, "pro"
    )
    assert await auth.authenticate(admin) == Principal(
        tenant, admin_record.id, True, FailMode.OPEN, None
    )


async def test_the_tenants_own_fail_mode_overrides_the_default(env: Env, tenant: str) -> None:
    other = tenant + "-other"
    closed_key, _ = await env.keys.create(tenant)
    default_key, _ = await env.keys.create(other)
    await env.settings.set_fail_mode(tenant, FailMode.CLOSED)

    principal = await env.authenticator(default=FailMode.OPEN).authenticate(closed_key)
    assert principal is not None
    assert principal.fail_mode is FailMode.CLOSED
    for default in FailMode:
        principal = await env.authenticator(default=default).authenticate(default_key)
        assert principal is not None
        assert principal.fail_mode is default


async def test_unknown_and_revoked_keys_are_rejected(env: Env, tenant: str) -> None:
    api_key, record = await env.keys.create(tenant)
    auth = env.authenticator()
    assert await auth.authenticate("rwk_" + secrets.token_urlsafe(32)) is None
    assert await auth.authenticate("") is None
    assert await auth.authenticate(api_key) is not None

    await env.keys.revoke(record.id, tenant)
    assert await env.authenticator().authenticate(api_key) is None


async def test_within_the_ttl_a_key_costs_no_lookup_and_a_revocation_is_seen_after_it(
    env: Env, tenant: str, clock: Clock
) -> None:
    api_key, record = await env.keys.create(tenant)
    auth = env.authenticator(ttl=TTL)
    for _ in range(5):
        assert await auth.authenticate(api_key) is not None
    assert env.keys.lookups == 1

    await env.keys.revoke(record.id, tenant)
    clock.advance(TTL - 0.01)
    assert await auth.authenticate(api_key) is not None  # cached: not yet seen
    assert env.keys.lookups == 1
    clock.advance(0.02)
    assert await auth.authenticate(api_key) is None
    assert env.keys.lookups == 2


async def test_a_key_in_use_is_looked_up_again_before_its_entry_expires(
    env: Env, tenant: str, clock: Clock
) -> None:
    api_key, record = await env.keys.create(tenant)
    auth = env.authenticator(ttl=TTL)
    assert await auth.authenticate(api_key) is not None
    clock.advance(TTL * 0.7)
    assert auth.cached(api_key) is not None
    await turns()
    assert env.keys.lookups == 1  # fresh: no lookup
    clock.advance(TTL * 0.15)  # in the last fifth of its life
    assert auth.cached(api_key) is not None  # it answers while it is looked up again
    await until(lambda: env.keys.lookups == 2, "the lookup ahead of the expiry")
    clock.advance(TTL * 0.5)  # past the first entry's expiry: the refreshed one answers
    await until(lambda: auth.cached(api_key) is not None, "the refreshed entry")
    assert env.keys.lookups == 2

    await env.keys.revoke(record.id, tenant)
    clock.advance(TTL * 0.4)  # the refreshed entry's last fifth
    assert auth.cached(api_key) is not None
    await until(lambda: auth.cached(api_key) is None, "the revocation seen ahead of the expiry")
    assert env.keys.lookups == 3
    assert await auth.authenticate(api_key) is None


async def test_an_unknown_key_is_cached_as_unknown_for_the_ttl(
    env: Env, tenant: str, clock: Clock
) -> None:
    api_key = "rwk_" + secrets.token_urlsafe(32)
    auth = env.authenticator(ttl=TTL)
    assert await auth.authenticate(api_key) is None
    assert await auth.authenticate(api_key) is None
    assert env.keys.lookups == 1

    await env.keys.create(tenant, api_key=api_key)  # registered after it was refused
    assert await auth.authenticate(api_key) is None
    clock.advance(TTL + 0.01)
    principal = await auth.authenticate(api_key)
    assert principal is not None
    assert principal.tenant == tenant


async def test_forget_drops_cached_lookups(env: Env, tenant: str, clock: Clock) -> None:
    one, record = await env.keys.create(tenant)
    two, _ = await env.keys.create(tenant)
    auth = env.authenticator()
    await auth.authenticate(one)
    await auth.authenticate(two)
    await env.keys.revoke(record.id, tenant)

    auth.forget(one)
    assert await auth.authenticate(one) is None
    assert await auth.authenticate(two) is not None
    assert env.keys.lookups == 3
    auth.forget()
    assert await auth.authenticate(two) is not None
    assert env.keys.lookups == 4


async def test_the_cache_holds_at_most_max_entries(env: Env, tenant: str, clock: Clock) -> None:
    keys = [(await env.keys.create(tenant))[0] for _ in range(3)]
    auth = env.authenticator(max_entries=2)
    for api_key in keys:
        await auth.authenticate(api_key)
    assert env.keys.lookups == 3
    await auth.authenticate(keys[2])
    await auth.authenticate(keys[1])
    assert env.keys.lookups == 3  # the two newest are cached
    await auth.authenticate(keys[0])
    assert env.keys.lookups == 4  # the oldest was dropped


async def test_a_token_longer_than_any_key_is_refused_without_a_lookup(env: Env) -> None:
    auth = env.authenticator()
    for length in (MAX_KEY_LENGTH + 1, 1 << 20):
        assert await auth.authenticate("k" * length) is None
    assert env.keys.lookups == 0
    assert auth.sizes == (0, 0)
    assert await auth.authenticate("k" * MAX_KEY_LENGTH) is None  # a key's length: looked up
    assert env.keys.lookups == 1


async def test_only_valid_keys_are_cached_and_unknown_tokens_within_the_bound(
    env: Env, tenant: str, clock: Clock
) -> None:
    valid, _ = await env.keys.create(tenant)
    auth = env.authenticator(max_unknown=3)
    assert await auth.authenticate(valid) is not None
    unknown = ["rwk_" + secrets.token_urlsafe(32) for _ in range(50)]
    for token in unknown:
        assert await auth.authenticate(token) is None
    assert auth.sizes == (1, 3)
    lookups = env.keys.lookups
    assert await auth.authenticate(unknown[-1]) is None  # among the newest: cached
    assert await auth.authenticate(valid) is not None
    assert env.keys.lookups == lookups
    assert await auth.authenticate(unknown[0]) is None  # dropped long ago: asked again
    assert env.keys.lookups == lookups + 1
    assert auth.sizes == (1, 3)


async def test_without_a_negative_cache_every_unknown_token_is_asked(env: Env) -> None:
    auth = env.authenticator(max_unknown=0)
    token = "rwk_" + secrets.token_urlsafe(32)
    for _ in range(3):
        assert await auth.authenticate(token) is None
    assert env.keys.lookups == 3
    assert auth.sizes == (0, 0)


async def test_while_redis_is_down_a_key_seen_before_is_still_accepted(
    crashable: Env, own_redis: RedisServer, clock: Clock
) -> None:
    admin, record = await crashable.keys.create("acme", admin=True, segment="gold")
    await crashable.settings.set_fail_mode("acme", FailMode.CLOSED)
    unknown = "rwk_" + secrets.token_urlsafe(32)
    auth = crashable.authenticator(ttl=TTL)
    principal = await auth.authenticate(admin)
    assert principal == Principal("acme", record.id, True, FailMode.CLOSED, "gold")
    assert await auth.authenticate(unknown) is None

    own_redis.kill()
    clock.advance(TTL + 1)  # the cached lookups are stale: Redis is asked, and fails
    lookups = crashable.keys.lookups
    assert await auth.authenticate(admin) == principal
    assert await auth.authenticate(unknown) is None
    assert crashable.keys.lookups == lookups + 2


async def test_while_redis_is_down_a_key_never_seen_is_a_store_error(
    crashable: Env, own_redis: RedisServer
) -> None:
    api_key, _ = await crashable.keys.create("acme")
    auth = crashable.authenticator()
    own_redis.kill()
    for token in (api_key, "rwk_" + secrets.token_urlsafe(32)):
        with pytest.raises(StoreUnavailable):
            await auth.authenticate(token)


async def test_while_redis_is_down_a_stale_key_asks_redis_once_per_ttl(
    crashable: Env, own_redis: RedisServer, clock: Clock
) -> None:
    api_key, _ = await crashable.keys.create("acme")
    auth = crashable.authenticator(ttl=TTL)
    principal = await auth.authenticate(api_key)
    assert principal is not None

    own_redis.kill()
    clock.advance(TTL + 1)
    lookups = crashable.keys.lookups
    for _ in range(10):  # a frozen Redis would make each lookup wait for the timeout
        assert await auth.authenticate(api_key) == principal
    assert crashable.keys.lookups == lookups + 1
    clock.advance(TTL + 1)
    assert await auth.authenticate(api_key) == principal
    assert crashable.keys.lookups == lookups + 2


async def test_once_redis_answers_again_the_stored_record_counts(
    crashable: Env, own_redis: RedisServer, clock: Clock
) -> None:
    api_key, _ = await crashable.keys.create("acme")
    auth = crashable.authenticator(ttl=TTL)
    assert await auth.authenticate(api_key) is not None
    own_redis.kill()
    clock.advance(TTL + 1)
    assert await auth.authenticate(api_key) is not None
    own_redis.start()  # an empty server: the key's record is gone with the crash
    clock.advance(TTL + 1)
    assert await auth.authenticate(api_key) is None
