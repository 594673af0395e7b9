"""The allowlist: subjects the abuse detection never blocks.

Storage: one hash per tenant and scope, ``<tenant tag>:allow:<scope>``
(``Keyspace.allowlist``), entry value -> JSON ``{"note", "added_at"}`` (a hash rather than a
set, so that an entry says why it is there).  ``ip`` entries are addresses in the canonical
form of ``limiter.state.blocks.normalize_ip`` or CIDR networks (``10.0.0.0/8``, ``2001:db8::/32``);
``key`` and ``user_id`` entries are exact values.  Manual blocks are not checked against it:
an operator who blocks an allowlisted subject means it.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import InvalidInput, NotFound, StoreUnavailable
from limiter.keyspace import BLOCK_SCOPES, Keyspace
from limiter.state.blocks import MAX_VALUE_LENGTH, normalize_ip

MAX_NOTE_LENGTH = 500
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AllowEntry:
    scope: str
    value: str
    note: str
    added_at: float


def normalize_entry(scope: str, value: str) -> str:
    """The stored form of an allowlist entry; InvalidInput naming a bad scope or value."""
    if scope not in BLOCK_SCOPES:
        raise InvalidInput(f"allowlist scope {scope!r} is not one of {', '.join(BLOCK_SCOPES)}")
    if not value or len(value) > MAX_VALUE_LENGTH:
        raise InvalidInput(f"allowlist value must be 1-{MAX_VALUE_LENGTH} characters")
    if scope != "ip":
        return value
    if "/" not in value:
        return normalize_ip(value)
    try:
        network = ipaddress.ip_network(value.strip())
    except ValueError as exc:
        raise InvalidInput(f"{value[:100]!r} is not an IP address or network: {exc}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        # addresses are matched in their IPv4 form (normalize_ip), so the network must be too
        mapped = network.network_address.ipv4_mapped
        network = ipaddress.IPv4Network((str(mapped), network.prefixlen - 96))
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


class Allowlist:
    def __init__(self, redis: Redis, keyspace: Keyspace):
        self._redis = redis
        self._keyspace = keyspace

    async def add(self, tenant: str, scope: str, value: str, note: str = "") -> AllowEntry:
        """Allowlist ``value`` (again: a second add replaces the note)."""
        stored = normalize_entry(scope, value)
        if len(note) > MAX_NOTE_LENGTH:
            raise InvalidInput(f"allowlist note is longer than {MAX_NOTE_LENGTH} characters")
        entry = AllowEntry(scope, stored, note, round(time.time(), 3))
        record = json.dumps({"note": note, "added_at": entry.added_at})
        try:
            await self._redis.hset(self._keyspace.allowlist(tenant, scope), stored, record)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return entry

    async def restore(self, tenant: str, entry: AllowEntry) -> None:
        """Write ``entry`` back as ``add`` stored it."""
        record = json.dumps({"note": entry.note, "added_at": entry.added_at})
        key = self._keyspace.allowlist(tenant, entry.scope)
        try:
            await self._redis.hset(key, entry.value, record)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def remove(self, tenant: str, scope: str, value: str) -> None:
        """Take ``value`` off the list; NotFound if it is not on it (as it was added)."""
        stored = normalize_entry(scope, value)
        try:
            removed = await self._redis.hdel(self._keyspace.allowlist(tenant, scope), stored)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if not removed:
            raise NotFound(f"{stored!r} is not on the {scope} allowlist")

    async def entries(self, tenant: str) -> list[AllowEntry]:
        """Every entry of the tenant, by scope and value."""
        found: list[AllowEntry] = []
        try:
            for scope in BLOCK_SCOPES:
                raw = await self._redis.hgetall(self._keyspace.allowlist(tenant, scope))
                for value, payload in raw.items():
                    record = json.loads(payload)
                    found.append(
                        AllowEntry(scope, _text(value), record["note"], record["added_at"])
                    )
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return sorted(found, key=lambda entry: (entry.scope, entry.value))

    async def contains(self, tenant: str, scope: str, value: str) -> bool:
        """Whether ``value`` (an address, for ``ip``) is allowlisted, itself or by a network."""
        if scope == "ip":
            address = ipaddress.ip_address(normalize_ip(value))
            return _matches(address, *await self._ip_entries(tenant))
        value = normalize_entry(scope, value)
        try:
            return bool(await self._redis.hexists(self._keyspace.allowlist(tenant, scope), value))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def holds_all(self, tenant: str, addresses: Iterable[str]) -> bool:
        """Whether every one of ``addresses`` is allowlisted (itself or by a network), with
        one read of the tenant's ``ip`` entries however many there are.  False for none, and
        for a value that is not an address: nothing is vouched for that is not on the list.
        """
        parsed = []
        for value in addresses:
            try:
                parsed.append(ipaddress.ip_address(normalize_ip(value)))
            except InvalidInput:
                return False
        if not parsed:
            return False
        exact, networks = await self._ip_entries(tenant)
        return all(_matches(address, exact, networks) for address in parsed)

    async def _ip_entries(self, tenant: str) -> tuple[set[str], list[_Network]]:
        """The tenant's ``ip`` entries: single addresses, and networks parsed."""
        key = self._keyspace.allowlist(tenant, "ip")
        try:
            # allowlists are short and only warranted verdicts ask, so one read of them all
            members = {_text(member) for member in await self._redis.hkeys(key)}
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        networks = [ipaddress.ip_network(m) for m in members if "/" in m]
        return {m for m in members if "/" not in m}, networks


def _matches(address: _Address, exact: set[str], networks: list[_Network]) -> bool:
    # an IPv4 address is never "in" an IPv6 network (nor the reverse): no error, just False
    return str(address) in exact or any(address in network for network in networks)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
