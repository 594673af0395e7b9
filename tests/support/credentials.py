"""The secrets and names the suite's processes share, and API keys made the way the CLI makes
them: every limiter a test starts hashes keys with ``KEY_SECRET``, so a key written here
authenticates against any of them on the same Redis and key prefix."""

from __future__ import annotations

import asyncio
import secrets

from redis.asyncio import Redis

from limiter.keyspace import Keyspace
from limiter.state.apikeys import KeyHasher, KeyStore
from webhooks.sealing import SecretSealer

KEY_SECRET = bytes(range(32))
# webhook secrets are sealed under a key derived from the key secret, as the limiter does
SEALER = SecretSealer(KEY_SECRET)
BOOTSTRAP_KEY = "rwk_test-bootstrap-" + secrets.token_urlsafe(24)
# the key prefix of the session's `ratewatch up`, apart from the session limiter's "rw"
STACK_PREFIX = "rwstack"


def create_key(
    redis_url: str, tenant: str, *, admin: bool = False, prefix: str = "rw", segment: str = ""
) -> str:
    """A new API key of ``tenant``, written straight to the store as the CLI does."""

    async def go() -> str:
        client = Redis.from_url(redis_url)
        try:
            store = KeyStore(client, Keyspace(prefix), KeyHasher(KEY_SECRET))
            api_key, _ = await store.create(tenant, admin=admin, name="test", segment=segment)
            return api_key
        finally:
            await client.aclose()

    return asyncio.run(go())


def create_signed_key(
    redis_url: str, tenant: str, *, admin: bool = False, prefix: str = "rw"
) -> tuple[str, str]:
    """A new signed API key of ``tenant`` and its signing secret, as the CLI makes them."""

    async def go() -> tuple[str, str]:
        client = Redis.from_url(redis_url)
        try:
            store = KeyStore(client, Keyspace(prefix), KeyHasher(KEY_SECRET))
            api_key, record = await store.create(tenant, admin=admin, name="test", signed=True)
            secret = store.signing_secret(record)
            assert secret is not None
            return api_key, secret
        finally:
            await client.aclose()

    return asyncio.run(go())
