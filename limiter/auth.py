"""Authentication of API keys with a local cache.

A valid key's record is cached for ``ttl`` seconds, so a check costs no extra Redis round
trip and a revoked key stops working within ``ttl``.  While Redis is unreachable, cached
principals stay valid (stale) so that the failure policy, not a 503, decides.

A ``KeyFallback`` (the durable copy of the control-plane records, ``control/durable/``)
answers for keys Redis cannot answer for: when Redis lost its data and the records are not
back yet (a miss is checked against it only then), or when Redis is unreachable and the key
is not cached.  While Redis is healthy and has its data, no check asks it anything.

What a client presents is never kept beyond a small bound: a token longer than any key
(``MAX_KEY_LENGTH``) is refused without a lookup, and unknown tokens are remembered in a
negative cache of at most ``max_unknown`` entries (so a flood of wrong keys costs Redis
one lookup per token and TTL, and this process a bounded amount of memory).  The valid
keys' cache is bounded by the keys that exist.

A signed key's principal carries its opened request signing secret, so the signature check
(``limiter/http/signatures.py``) runs for those keys only and costs no lookup either.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from limiter.errors import StoreUnavailable
from limiter.state.apikeys import MAX_KEY_LENGTH, KeyRecord, KeyStore
from limiter.state.sealing import SealError
from limiter.state.tenants import FailMode, TenantSettingsStore

log = logging.getLogger("ratewatch.limiter")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key of one tenant."""

    tenant: str
    key_id: str
    admin: bool
    fail_mode: FailMode
    segment: str | None = None  # the key's default customer segment
    # a signed key's HMAC-SHA256 keyed with its signing secret (copied for each request,
    # never updated itself): its requests must be signed with that secret
    signing_key: hmac.HMAC | None = None


class KeyFallback(Protocol):
    """The durable copy of the keys and their tenants' settings."""

    async def lost(self) -> bool:
        """Whether Redis lost its data and the records are not all back yet."""
        ...

    async def find(self, key_hash: str) -> tuple[KeyRecord, FailMode | None] | None:
        """The live record of the key stored under ``key_hash`` and its tenant's own fail
        mode; None for an unknown or revoked key.  StoreUnavailable if it cannot tell."""
        ...


class Authenticator:
    def __init__(
        self,
        keys: KeyStore,
        tenant_settings: TenantSettingsStore,
        default_fail_mode: FailMode,
        ttl: float = 1.0,
        max_entries: int = 100_000,
        fallback: KeyFallback | None = None,
        max_unknown: int = 1024,
    ):
        self._keys = keys
        self._fallback = fallback
        self._tenant_settings = tenant_settings
        self._default_fail_mode = default_fail_mode
        self._ttl = ttl
        self._refresh_ahead = ttl / 5
        self._max_entries = max_entries
        self._max_unknown = max_unknown
        # key -> (principal, expiry on the monotonic clock): valid keys only
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        # unknown token -> expiry: the negative cache, at most max_unknown entries
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}

    @property
    def sizes(self) -> tuple[int, int]:
        """How many valid keys and unknown tokens the cache holds."""
        return len(self._cache), len(self._unknown)

    def cached(self, token: str) -> Principal | None:
        """The principal of ``token`` if the cache holds a fresh one, else None: then
        ``authenticate`` decides (a cached unknown key, an expired or a missing entry).

        An entry in the last fifth of its time to live is looked up again in the background
        while it still answers: a key in use is refreshed before it expires, so its
        requests do not all wait on its lookup once a ``ttl`` (a revoked key still stops
        working within ``ttl`` of its revocation, plus one lookup's time)."""
        entry = self._cache.get(token)
        if entry is None:
            return None
        principal, expiry = entry
        left = expiry - time.monotonic()
        if left <= 0:
            return None
        if left < self._refresh_ahead and token not in self._lookups:
            self._start_lookup(token, entry, was_unknown=False)
        return principal

    async def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, None if it is not a valid key.

        Raises StoreUnavailable only when Redis is down and the key was never seen."""
        if len(token) > MAX_KEY_LENGTH:
            return None  # no key is that long: not worth a lookup, nor a cache entry
        now = time.monotonic()
        entry = self._cache.get(token)
        if entry is not None and entry[1] > now:
            return entry[0]
        unknown = self._unknown.get(token)
        if unknown is not None and unknown > now:
            return None
        # one lookup of a key at a time: when its entry expires under load, every request
        # that finds it expired waits on the first one's lookup instead of making its own
        lookup = self._lookups.get(token)
        if lookup is None:
            lookup = self._start_lookup(token, entry, unknown is not None)
        # shielded: a waiter that is cancelled does not cancel the others' lookup
        return await asyncio.shield(lookup)

    def _start_lookup(
        self, token: str, entry: tuple[Principal, float] | None, was_unknown: bool
    ) -> asyncio.Future[Principal | None]:
        lookup = asyncio.ensure_future(self._lookup(token, entry, was_unknown))
        self._lookups[token] = lookup
        lookup.add_done_callback(partial(self._looked_up, token))
        return lookup

    def _looked_up(self, token: str, lookup: asyncio.Future[Principal | None]) -> None:
        if self._lookups.get(token) is lookup:  # not one that started after a forget()
            del self._lookups[token]
        if not lookup.cancelled() and lookup.exception() is not None:
            # a refresh nobody awaits fails quietly: the entry expires, and the next
            # request's own lookup meets the failure
            log.debug("key lookup failed: %s", lookup.exception())

    async def _lookup(
        self, token: str, entry: tuple[Principal, float] | None, was_unknown: bool
    ) -> Principal | None:
        now = time.monotonic()
        try:
            principal = await self._resolve(token)
        except StoreUnavailable:
            # kept for another ttl: Redis is asked once per ttl, not by every request
            if entry is not None:
                self._cache[token] = (entry[0], now + self._ttl)
                return entry[0]
            if was_unknown:
                self._remember_unknown(token, now)
                return None
            principal = await self._durable(token)
            if principal is None:
                raise
            self._cache[token] = (principal, now + self._ttl)
            return principal
        if principal is None:
            self._cache.pop(token, None)
            self._remember_unknown(token, now)
            return None
        self._unknown.pop(token, None)
        self._cache[token] = (principal, now + self._ttl)
        self._cache.move_to_end(token)
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return principal

    def _remember_unknown(self, token: str, now: float) -> None:
        if self._max_unknown == 0:
            return
        self._unknown[token] = now + self._ttl
        self._unknown.move_to_end(token)
        if len(self._unknown) > self._max_unknown:
            self._unknown.popitem(last=False)

    def forget(self, token: str | None = None) -> None:
        """Drop cached lookups (all, or one key's) after a local change."""
        if token is None:
            self._cache.clear()
            self._unknown.clear()
            self._lookups.clear()
        else:
            self._cache.pop(token, None)
            self._unknown.pop(token, None)
            self._lookups.pop(token, None)

    async def _resolve(self, token: str) -> Principal | None:
        record = await self._keys.lookup(token)
        if record is None:
            if self._fallback is not None and await self._fallback.lost():
                return await self._durable(token)
            return None
        mode = await self._tenant_settings.fail_mode(record.tenant)
        return self._principal(record, mode)

    async def _durable(self, token: str) -> Principal | None:
        """The principal the durable copy knows for ``token`` (None: none, or no copy)."""
        if self._fallback is None:
            return None
        found = await self._fallback.find(self._keys.key_hash(token))
        return None if found is None else self._principal(*found)

    def _principal(self, record: KeyRecord, mode: FailMode | None) -> Principal | None:
        try:
            secret = self._keys.signing_secret(record)
        except SealError as exc:
            # a signed key whose secret cannot be read cannot be verified: refused
            log.warning("refusing signed key %s of tenant %s: %s", record.id, record.tenant, exc)
            return None
        return Principal(
            record.tenant,
            record.id,
            record.admin,
            mode or self._default_fail_mode,
            record.segment or None,
            None if secret is None else hmac.new(secret.encode(), digestmod="sha256"),
        )
