"""The journal on both stores (SQLite in a data dir, ClickHouse on chDB) and restores from
it into the session's Redis, under a key prefix of each test's own."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from analytics.clickhouse import chdb_url, connect
from analytics.migrate import migrate
from analytics.tables import CONTROL_RECORDS_TABLE
from control.durable.clickhouse_journal import ClickHouseJournal
from control.durable.journal import KEY, Entry, Journal, entry
from control.durable.records import DurableRecords
from control.durable.restore import Restorer
from control.durable.sqlite_journal import SqliteJournal
from limiter.keyspace import Keyspace
from limiter.state.allowlist import Allowlist
from limiter.state.apikeys import KeyHasher, KeyStore
from limiter.state.blocks import BlockStore
from limiter.state.sealing import SealError
from limiter.state.tenants import TenantSettingsStore
from tests.support.credentials import KEY_SECRET
from tests.support.servers import RedisServer
from webhooks.registry import WebhookStore
from webhooks.sealing import SecretSealer

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# anyio marked here, at collection: parametrized async tests lose their parameters when the
# conftest marks them only afterwards
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def _migrated(url: str) -> Client:
    client = connect(url)
    migrate(client)
    return client


@pytest.fixture
async def journal(store: str, tmp_path: Path) -> AsyncIterator[Journal]:
    made: Journal
    if store == "sqlite":
        made = SqliteJournal(tmp_path / "data")
    else:
        made = ClickHouseJournal(chdb_url(tmp_path / "clickhouse"), connector=_migrated)
    yield made
    await made.close()


both_stores = pytest.mark.parametrize("store", ["sqlite", "clickhouse"])


@both_stores
async def test_the_latest_version_of_each_record_is_kept(journal: Journal) -> None:
    first = entry(KEY, "t1", "h1", '{"n": 1}')
    newer = Entry(KEY, "t1", "h1", first.version + 10, False, '{"n": 2}')
    older = Entry(KEY, "t1", "h1", first.version - 10, False, '{"n": 0}')
    other = entry(KEY, "t2", "h2", '{"n": 9}')
    await journal.put([first, other])
    await journal.put([newer])
    await journal.put([older])  # late and older: changes nothing
    assert await journal.find(KEY, "h1") == newer
    assert await journal.count() == 2
    gone = Entry(KEY, "t2", "h2", other.version + 1, True, other.payload)
    await journal.put([gone])
    assert sorted(await journal.entries(), key=lambda e: e.id) == [newer, gone]
    assert await journal.find(KEY, "missing") is None


class Stores:
    """The limiter's stores and a restorer on the session's Redis under a fresh prefix."""

    def __init__(self, redis: Redis, journal: Journal, prefix: str):
        self.keyspace = Keyspace(prefix)
        self.redis = redis
        self.keys = KeyStore(redis, self.keyspace, KeyHasher(KEY_SECRET))
        self.settings = TenantSettingsStore(redis, self.keyspace)
        self.blocks = BlockStore(redis, self.keyspace)
        self.allowlist = Allowlist(redis, self.keyspace)
        self.sealer = SecretSealer(KEY_SECRET)
        self.webhooks = WebhookStore(redis, self.keyspace, self.sealer)
        self.durable = DurableRecords(journal, self.sealer, self.settings)
        self.restorer: Callable[[], Restorer] = lambda: Restorer(
            redis,
            self.keyspace,
            journal,
            self.sealer,
            keys=self.keys,
            tenant_settings=self.settings,
            blocks=self.blocks,
            allowlist=self.allowlist,
            webhooks=self.webhooks,
        )

    async def snapshot(self) -> dict[bytes, object]:
        """Every key under the prefix but the epoch and the block change counters, with its
        value (JSON values parsed, webhook records without their empty fields and with their
        secrets opened: what the readers see; each sealing of a secret differs by its
        nonce)."""
        found: dict[bytes, object] = {}
        async for name in self.redis.scan_iter(match=f"{self.keyspace.prefix}:*"):
            kind = await self.redis.type(name)
            # the epoch, and the blocks' change counters (the local copies of blocks read
            # them to see a change; a restore is one, counted once per restorer)
            if name == self.keyspace.epoch.encode() or name.endswith(b":blocks:v"):
                continue
            if kind == b"hash":
                raw = await self.redis.hgetall(name)
                found[name] = {field: _parsed(value) for field, value in raw.items()}
                if name.endswith(b":webhooks"):
                    found[name] = {
                        field: self._opened(_parsed(value))  # type: ignore[arg-type]
                        for field, value in raw.items()
                    }
            elif kind == b"string":
                found[name] = _parsed(await self.redis.get(name))
        return found

    def _opened(self, record: dict[str, object]) -> dict[str, object]:
        opened = dict(record)
        for field in ("secret", "previous_secret"):
            if field in opened:
                opened[field] = self.sealer.open(str(opened[field]), "acme", str(record["id"]))
        return opened

    async def wipe(self) -> None:
        names = [name async for name in self.redis.scan_iter(match=f"{self.keyspace.prefix}:*")]
        if names:
            await self.redis.delete(*names)


def _parsed(value: bytes | str | None) -> object:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if isinstance(parsed, dict):
        return {k: v for k, v in parsed.items() if v not in ("", None)}
    return parsed


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@both_stores
async def test_concurrent_restores_write_the_records_once_as_they_were(
    journal: Journal, redis: Redis
) -> None:
    stores = Stores(redis, journal, "dur" + secrets.token_hex(4))
    await stores.restorer().start()  # an empty store: the epoch is set, nothing else
    tenant = "acme"
    _, kept = await stores.keys.create(tenant, admin=True, name="kept")
    await stores.durable.key_saved(kept)
    _, revoked = await stores.keys.create(tenant, name="revoked")
    await stores.durable.key_saved(revoked)
    await stores.durable.key_revoked(revoked)
    await stores.keys.revoke(revoked.id, tenant)
    await stores.durable.settings_saved(
        tenant, await stores.settings.update(tenant, {"fail_mode": "closed"})
    )
    block = await stores.blocks.create(tenant, "ip", "198.51.100.4", 600, "abuse")
    await stores.durable.block_saved(tenant, block)
    allowed = await stores.allowlist.add(tenant, "ip", "10.0.0.0/8", "lan")
    await stores.durable.allow_saved(tenant, allowed)
    hook = await stores.webhooks.create(tenant, "https://hooks.example.com/x")
    await stores.durable.webhook_saved(hook)
    before = await stores.snapshot()
    assert (await journal.find(KEY, revoked.hash)).deleted  # type: ignore[union-attr]

    await stores.wipe()  # Redis lost everything
    first, second = stores.restorer(), stores.restorer()
    assert await first.lost()
    await asyncio.gather(first.restore(), second.restore())
    assert await stores.snapshot() == before
    assert not await first.lost()
    assert await stores.keys.lookup("not a key") is None
    assert (await stores.webhooks.get(tenant, hook.id)).secret == hook.secret
    # a restore again changes nothing
    await first.restore()
    assert await stores.snapshot() == before
    await stores.wipe()


async def test_webhook_secrets_are_not_in_clickhouse_in_plain_text(
    tmp_path: Path, redis: Redis
) -> None:
    url = chdb_url(tmp_path / "clickhouse")
    journal = ClickHouseJournal(url, connector=_migrated)
    try:
        stores = Stores(redis, journal, "dur" + secrets.token_hex(4))
        hook = await stores.webhooks.create("acme", "https://hooks.example.com/x")
        await stores.durable.webhook_saved(hook)
        rows = await journal._run(
            lambda client: client.query(f"SELECT payload FROM {CONTROL_RECORDS_TABLE}").result_rows
        )
        assert len(rows) == 1
        assert hook.secret not in rows[0][0]
        assert hook.secret[len("whsec_") :] not in rows[0][0]
    finally:
        await journal.close()


@both_stores
async def test_a_signed_keys_secret_is_restored_sealed(journal: Journal, redis: Redis) -> None:
    """The signing secret is in the key's record, sealed: it comes back with the record
    after Redis lost it, opens to the same secret, and is never in the journal in plain."""
    stores = Stores(redis, journal, "dur" + secrets.token_hex(4))
    await stores.restorer().start()
    api_key, record = await stores.keys.create("acme", name="signer", signed=True)
    await stores.durable.key_saved(record)
    secret = stores.keys.signing_secret(record)
    assert secret is not None
    assert secret.startswith("rws_")
    saved = await journal.find(KEY, record.hash)
    assert saved is not None
    assert secret not in saved.payload
    assert secret[len("rws_") :] not in saved.payload

    await stores.wipe()
    await stores.restorer().restore()
    restored = await stores.keys.lookup(api_key)
    assert restored == record
    assert stores.keys.signing_secret(restored) == secret
    # another key hashing secret cannot open it
    with pytest.raises(SealError):
        KeyStore(redis, stores.keyspace, KeyHasher(bytes(32))).signing_secret(restored)
    await stores.wipe()
