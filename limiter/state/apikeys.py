"""API keys: generation, keyed BLAKE3 hashing, and the Redis records behind them.

A key is ``rwk_`` followed by 43 URL-safe characters (32 random bytes).  Only its keyed
BLAKE3 hash is stored; the key itself is shown once, at creation.  A key given from
outside (the bootstrap key) is at most ``MAX_KEY_LENGTH`` characters, so a longer token
is refused without a lookup; a revoked key's hash is kept as a tombstone, so that key is
never registered again.  The hashing secret comes
from the settings (or the data dir); its fingerprint is recorded in the store so that a
process with another secret fails at start instead of rejecting every key.

A signed key (``signed=True``) also has a request signing secret, ``rws_`` and 43 URL-safe
characters: its requests must carry an HMAC-SHA256 signature made with it
(``limiter/http/signatures.py``).  The server computes that HMAC, so the secret cannot be
stored as a hash: the record holds it sealed (``limiter/state/sealing.py``) with keys
derived from the key hashing secret, and it is shown in plain once, at creation.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass

from blake3 import blake3
from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import ConfigError, InvalidInput, NotFound, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.state.sealing import SecretSealer

KEY_PREFIX = "rwk_"
# no key is longer: a longer bearer token is refused before any lookup or cache entry
MAX_KEY_LENGTH = 256
SIGNING_SECRET_PREFIX = "rws_"
# the purpose the signing secrets are sealed for: never changes (records hold them sealed)
_SIGNING_PURPOSE = b"ratewatch request signing secrets v1"
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_NAME_LENGTH = 200
MAX_SEGMENT_LENGTH = 64


def text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes; its types allow str)."""
    return value.decode() if isinstance(value, bytes) else value


def validate_tenant(name: str) -> str:
    if not TENANT_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"tenant {name!r} is not valid: use 1-63 of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is stored about a key; never the key itself."""

    id: str
    tenant: str
    admin: bool
    name: str
    hint: str
    created_at: float
    hash: str
    # the customer segment (tier) of this key's checks that name none themselves
    segment: str = ""
    # a signed key's request signing secret, sealed ("" for a key whose requests are not
    # signed); opened by KeyStore.signing_secret
    signing_secret: str = ""

    @property
    def signed(self) -> bool:
        return bool(self.signing_secret)

    def public(self) -> dict[str, object]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "admin": self.admin,
            "name": self.name,
            "hint": self.hint,
            "created_at": self.created_at,
            "segment": self.segment or None,
            "signed": self.signed,
        }


class KeyHasher:
    def __init__(self, secret: bytes):
        if len(secret) != 32:
            raise ConfigError(f"the key hashing secret must be 32 bytes, got {len(secret)}")
        self._secret = secret

    def hash(self, api_key: str) -> str:
        return blake3(api_key.encode("utf-8", "surrogatepass"), key=self._secret).hexdigest()

    @property
    def fingerprint(self) -> str:
        return blake3(b"ratewatch-secret-fingerprint", key=self._secret).hexdigest()[:16]

    def sealer(self, purpose: bytes) -> SecretSealer:
        """Seals secrets of one ``purpose`` with a key derived from this secret."""
        return SecretSealer(self._secret, purpose)


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _hint(api_key: str) -> str:
    return api_key[:8] + "…" + api_key[-4:] if len(api_key) > 16 else api_key[:2] + "…"


class KeyStore:
    """API keys and tenants in Redis.  Every operation names the tenant it acts for."""

    def __init__(self, redis: Redis, keyspace: Keyspace, hasher: KeyHasher):
        self._redis = redis
        self._keyspace = keyspace
        self._hasher = hasher
        self._signing = hasher.sealer(_SIGNING_PURPOSE)

    async def verify_secret(self) -> None:
        """Record the secret's fingerprint, or fail if the store was set up with another."""
        fingerprint = self._hasher.fingerprint
        try:
            await self._redis.hsetnx(self._keyspace.meta, "secret_fingerprint", fingerprint)
            stored = await self._redis.hget(self._keyspace.meta, "secret_fingerprint")
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if stored is not None and text(stored) != fingerprint:
            raise ConfigError(
                "this Redis store was set up with another key hashing secret: give this "
                "process the same RATEWATCH_KEY_SECRET (or --data-dir) as the server"
            )

    async def create(
        self,
        tenant: str,
        *,
        admin: bool = False,
        name: str = "",
        api_key: str | None = None,
        segment: str = "",
        signed: bool = False,
    ) -> tuple[str, KeyRecord]:
        """Create a key (or register ``api_key`` as given); returns the key and its record.
        A ``signed`` key's secret is read back from its record with ``signing_secret``."""
        validate_tenant(tenant)
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidInput(
                f"key name is {len(name)} characters long, at most {MAX_NAME_LENGTH} are allowed"
            )
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise InvalidInput(
                f"segment is {len(segment)} characters long, at most {MAX_SEGMENT_LENGTH} "
                "are allowed"
            )
        api_key = api_key if api_key is not None else new_api_key()
        key_hash = self._hasher.hash(api_key)
        record = KeyRecord(
            id="key_" + secrets.token_hex(8),
            tenant=tenant,
            admin=admin,
            name=name,
            hint=_hint(api_key),
            created_at=round(time.time(), 3),
            hash=key_hash,
            segment=segment,
            # bound to the key's hash: moved to another key's record it does not open
            signing_secret=(
                self._signing.seal(
                    SIGNING_SECRET_PREFIX + secrets.token_urlsafe(32), key_hash.encode()
                )
                if signed
                else ""
            ),
        )
        payload = json.dumps(asdict(record))
        ks = self._keyspace
        try:
            created = await self._redis.set(ks.auth(record.hash), payload, nx=True)
            if not created:
                existing = await self._existing(record.hash)
                return api_key, existing
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(ks.key_records(tenant), record.id, payload)
                pipe.hset(ks.key_ids, record.id, tenant)
                pipe.hsetnx(ks.tenants, tenant, json.dumps({"created_at": record.created_at}))
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return api_key, record

    async def _existing(self, key_hash: str) -> KeyRecord:
        raw = await self._redis.get(self._keyspace.auth(key_hash))
        if raw is None:
            raise NotFound("the key vanished while it was being registered")
        return KeyRecord(**json.loads(raw))

    def signing_secret(self, record: KeyRecord) -> str | None:
        """The request signing secret of a signed key, None for a key that is not signed.
        SealError if it does not open (the record was sealed with another key secret)."""
        if not record.signing_secret:
            return None
        return self._signing.open(record.signing_secret, record.hash.encode())

    def key_hash(self, api_key: str) -> str:
        """The keyed hash a presented key is stored under."""
        return self._hasher.hash(api_key)

    async def get(self, key_id: str, tenant: str) -> KeyRecord:
        """The record of a key of ``tenant``; NotFound if the tenant has none of that id."""
        try:
            raw = await self._redis.hget(self._keyspace.key_records(tenant), key_id)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if raw is None:
            raise NotFound(f"no key with id {key_id!r}")
        return KeyRecord(**json.loads(raw))

    async def restore(self, record: KeyRecord) -> None:
        """Write ``record`` back as ``create`` wrote it (idempotent: restoring twice, or on
        several processes at once, leaves the same keys)."""
        payload = json.dumps(asdict(record))
        tenant = json.dumps({"created_at": record.created_at})
        ks = self._keyspace
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(ks.auth(record.hash), payload)
                pipe.hset(ks.key_records(record.tenant), record.id, payload)
                pipe.hset(ks.key_ids, record.id, record.tenant)
                pipe.hsetnx(ks.tenants, record.tenant, tenant)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def drop(self, record: KeyRecord) -> None:
        """Remove what ``restore`` writes for ``record``, if it is there (a revoked key)."""
        ks = self._keyspace
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(ks.auth(record.hash))
                pipe.hdel(ks.key_records(record.tenant), record.id)
                pipe.hdel(ks.key_ids, record.id)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def lookup(self, api_key: str) -> KeyRecord | None:
        """The record of a presented key, or None if it is unknown or revoked."""
        try:
            raw = await self._redis.get(self._keyspace.auth(self._hasher.hash(api_key)))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return None if raw is None else KeyRecord(**json.loads(raw))

    async def list_keys(self, tenant: str | None = None) -> list[KeyRecord]:
        """A tenant's keys, or every tenant's when ``tenant`` is None (CLI only)."""
        try:
            tenants = [tenant] if tenant is not None else await self.tenants()
            records: list[KeyRecord] = []
            for name in tenants:
                raw = await self._redis.hgetall(self._keyspace.key_records(name))
                records += [KeyRecord(**json.loads(value)) for value in raw.values()]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return sorted(records, key=lambda record: (record.tenant, record.created_at))

    async def revoke(self, key_id: str, tenant: str | None = None) -> KeyRecord:
        """Revoke a key; with ``tenant`` given, only a key of that tenant."""
        ks = self._keyspace
        try:
            owner = await self._redis.hget(ks.key_ids, key_id)
            if owner is None or (tenant is not None and text(owner) != tenant):
                raise NotFound(f"no key with id {key_id!r}")
            owner_name = text(owner)
            raw = await self._redis.hget(ks.key_records(owner_name), key_id)
            if raw is None:
                raise NotFound(f"no key with id {key_id!r}")
            record = KeyRecord(**json.loads(raw))
            # not a transaction: the keys live in different cluster slots; the lookup key
            # goes first, so the key stops working even if a later step fails
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(ks.auth(record.hash))
                # the tombstone: a key given from outside (the bootstrap key) is not
                # registered again at the next start
                pipe.sadd(ks.revoked_keys, record.hash)
                pipe.hdel(ks.key_records(owner_name), key_id)
                pipe.hdel(ks.key_ids, key_id)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return record

    async def was_revoked(self, api_key: str) -> bool:
        """Whether ``api_key`` was registered once and revoked since."""
        try:
            found = await self._redis.sismember(
                self._keyspace.revoked_keys, self._hasher.hash(api_key)
            )
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return bool(found)

    async def tenants(self) -> list[str]:
        try:
            names = await self._redis.hkeys(self._keyspace.tenants)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return sorted(text(name) for name in names)
