"""Incidents in Redis: the blocks of one coordinated campaign, grouped, per tenant.

Storage (``limiter/keyspace.py``): ``<tenant tag>:incidents``, a hash incident id -> JSON
record (``Incident``).  The hash expires ``INCIDENT_TTL_SECONDS`` after its last write, and
records not updated for that long are pruned when incidents are listed, so a tenant's
incidents live as long as their story is recent, like blocks in Redis.  At most
``MAX_INCIDENTS`` are kept per tenant (the oldest updated go first) and an incident lists
at most ``MAX_MEMBERS`` members (``counts.members`` counts them all), so a botnet of
thousands cannot grow a record without bound.

The detectors write incidents (``detectors/incidents.py``); the control plane reads them
(``GET /v1/incidents``).  The tenants that have incident records are kept in a set
(``Keyspace.incident_tenants``), so that a restarted detector finds the open incidents of
every tenant (``open_incidents``) and carries them on.

An incident of the targeted-account detector (``detectors/targets.py``) names the account
its members pressed, in ``evidence["target"]`` and in its reasons: a privacy erasure of that
user (``control/privacy.py``) redacts both (``redact_user``) and keeps the incident, whose
addresses and counts name nobody's account.  Each record is rewritten only if it is still
the one read (a compare-and-set in one script), so a detector's save in between is not
overwritten; it is read again on the next pass.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import NotFound, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.state.privacy import owns_key

INCIDENT_TTL_SECONDS = 7 * 24 * 3600
MAX_INCIDENTS = 200
MAX_MEMBERS = 1000
OPEN, CLOSED = "open", "closed"
ERASED = "[erased]"
"""What stands for an erased account in the reasons of an incident that named it."""
ERASED_REASON = "[erased: this explanation named an erased account]"
_REDACT_PASSES = 5

# ARGV: (incident id, record as read, redacted record)...; a record changed since it was read
# is left for the next pass.  One key: a Redis Cluster runs it where the hash lives.
_COMPARE_AND_SET = """
local written = 0
for i = 1, #ARGV, 3 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
        redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
        written = written + 1
    end
end
return written
"""


@dataclass(slots=True)
class Member:
    """A source of the campaign: its address, what the detectors did about it
    (``blocked``, ``shadowed``, ``already_blocked``, ``allowlisted``, …) and its block."""

    ip: str
    outcome: str
    joined_at: float
    block_id: str | None = None


@dataclass(slots=True)
class Incident:
    """Times are epoch seconds.  ``first_seen``/``last_seen``: the campaign's first and
    latest decision known at its last update; ``evidence`` what its members share (route
    template, behaviour, user agents, pace, onset spread); ``reasons`` the one explanation
    its blocks carry."""

    id: str
    family: str
    state: str
    mode: str
    opened_at: float
    updated_at: float
    first_seen: float
    last_seen: float
    closed_at: float | None = None
    detector: str = "campaign"
    detector_version: str = ""
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What ``GET /v1/incidents`` lists: everything but the member list."""
        record = self.public()
        del record["members"]
        return record

    def names_user(self, user_id: str) -> bool:
        """Whether the evidence's target is ``user_id`` or one of its keys."""
        target = self.evidence.get("target")
        if not isinstance(target, dict) or not isinstance(target.get("value"), str):
            return False
        scope, value = target.get("scope"), target["value"]
        return (scope == "user_id" and value == user_id) or (
            scope == "key" and owns_key(user_id, value)
        )

    def redacted(self) -> Incident:
        """This incident without its target: the evidence's ``target`` removed and the
        account's name in the reasons replaced by ``ERASED`` (a reason that still holds it
        afterwards by ``ERASED_REASON``)."""
        target = self.evidence["target"]
        value = str(target["value"])
        reasons = [reason.replace(repr(value), ERASED) for reason in self.reasons]
        evidence = {name: item for name, item in self.evidence.items() if name != "target"}
        return replace(
            self,
            reasons=[ERASED_REASON if value in reason else reason for reason in reasons],
            evidence=evidence,
        )

    @classmethod
    def from_record(cls, raw: bytes | str) -> Incident:
        record = json.loads(raw)
        members = [Member(**member) for member in record.pop("members", [])]
        return cls(**record, members=members)


class IncidentStore:
    def __init__(self, redis: Redis, keyspace: Keyspace, *, ttl: int = INCIDENT_TTL_SECONDS):
        if ttl <= 0:
            raise ValueError(f"incident ttl {ttl!r} must be positive")
        self._redis = redis
        self._keyspace = keyspace
        self._ttl = ttl

    async def save(self, tenant: str, incident: Incident) -> None:
        """Write ``incident`` (its member list cut to ``MAX_MEMBERS``); beyond
        ``MAX_INCIDENTS`` the tenant's least recently updated ones are dropped."""
        record = incident.public()
        record["members"] = record["members"][:MAX_MEMBERS]
        key = self._keyspace.incidents(tenant)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, incident.id, json.dumps(record))
                pipe.expire(key, self._ttl)
                pipe.hlen(key)
                *_, count = await pipe.execute()
            # a key of its own, not in the transaction: on Redis Cluster it lives elsewhere
            await self._redis.sadd(self._keyspace.incident_tenants, tenant)
            if count > MAX_INCIDENTS:
                incidents = await self._all(tenant)
                oldest = sorted(incidents, key=lambda found: found.updated_at)
                victims = [found.id for found in oldest[: len(oldest) - MAX_INCIDENTS]]
                if victims:
                    await self._redis.hdel(key, *victims)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def incidents(self, tenant: str, state: str | None = None) -> list[Incident]:
        """The tenant's incidents (of ``state``, if given), latest activity first; records
        past their time are pruned."""
        try:
            found = await self._all(tenant)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if state is not None:
            found = [incident for incident in found if incident.state == state]
        return sorted(found, key=lambda incident: (-incident.last_seen, incident.id))

    async def open_incidents(self) -> list[tuple[str, Incident]]:
        """Every tenant's open incidents, as (tenant, incident); a tenant whose records have
        all expired is dropped from the set of tenants with incidents."""
        found: list[tuple[str, Incident]] = []
        try:
            names = await self._redis.smembers(self._keyspace.incident_tenants)
            for name in sorted(names):
                tenant = name.decode() if isinstance(name, bytes) else str(name)
                incidents = await self._all(tenant)
                if not incidents:
                    await self._redis.srem(self._keyspace.incident_tenants, tenant)
                found += [(tenant, i) for i in incidents if i.state == OPEN]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return found

    async def get(self, tenant: str, incident_id: str) -> Incident:
        try:
            raw = await self._redis.hget(self._keyspace.incidents(tenant), incident_id)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if raw is None:
            raise NotFound(f"no incident with id {incident_id[:100]!r}")
        return Incident.from_record(raw)

    async def naming(self, tenant: str, user_id: str) -> list[Incident]:
        """The tenant's incidents whose target is ``user_id`` or one of its keys."""
        return [i for i in await self.incidents(tenant) if i.names_user(user_id)]

    async def redact_user(self, tenant: str, user_id: str) -> int:
        """Redact every incident of ``tenant`` naming ``user_id`` (``Incident.redacted``);
        return how many were rewritten.  Idempotent: a redacted incident names nobody."""
        key = self._keyspace.incidents(tenant)
        redacted = 0
        try:
            for _ in range(_REDACT_PASSES):
                raw = await self._redis.hgetall(key)
                changes: list[bytes | str] = []
                for incident_id, record in raw.items():
                    incident = Incident.from_record(record)
                    if incident.names_user(user_id):
                        changes += [incident_id, record, json.dumps(incident.redacted().public())]
                if not changes:
                    return redacted
                redacted += int(await self._redis.eval(_COMPARE_AND_SET, 1, key, *changes))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        raise StoreUnavailable(
            f"the incidents of {tenant!r} kept changing while they were redacted; retry"
        )

    async def _all(self, tenant: str) -> list[Incident]:
        key = self._keyspace.incidents(tenant)
        raw = await self._redis.hgetall(key)
        horizon = time.time() - self._ttl
        kept: list[Incident] = []
        stale: list[bytes | str] = []
        for incident_id, record in raw.items():
            incident = Incident.from_record(record)
            if incident.updated_at > horizon:
                kept.append(incident)
            else:
                stale.append(incident_id)
        if stale:
            await self._redis.hdel(key, *stale)
        return kept
