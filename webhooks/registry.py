"""Webhooks: a tenant's HTTP endpoints that hear about its alerts, and how their
deliveries went.

Storage (``limiter/keyspace.py``), all under the tenant's hash tag:

- ``<tenant tag>:webhooks``: hash webhook id -> JSON record, with the signing secret (the
  deliveries are signed with it, so it is kept, sealed by ``webhooks/sealing.py``; the API
  shows it once, at creation or rotation) and, for a while after a rotation, the secret it
  replaced (``webhooks/updates.py``).  A record stored before secrets were sealed is
  sealed when it is first read;
- ``<tenant tag>:wh:<id>:health``: hash of the latest outcomes (``last_success_at``,
  ``last_failure_at``, ``last_status``, ``last_error``, ``consecutive_failures``);
- ``<tenant tag>:wh:<id>:attempts``: the latest ``MAX_ATTEMPTS_KEPT`` attempts, newest
  first (JSON each).

The deliveries themselves are queued and made by ``webhooks/delivery.py``.  Secrets
follow Standard Webhooks: ``whsec_`` and the base64 of 32 random bytes, the HMAC key.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from limiter.errors import InvalidInput, NotFound, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.scripts import register_script
from stream.alerts import INCIDENT_KINDS, KINDS
from webhooks.sealing import SecretSealer, is_sealed
from webhooks.targets import parse_target

MAX_WEBHOOKS_PER_TENANT = 20
MAX_DESCRIPTION_LENGTH = 500
MAX_ATTEMPTS_KEPT = 100
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
ID_PREFIX = "wh_"
ALERT_KINDS = tuple(sorted(KINDS))
# per-block alert kinds: a campaign member's are left to its incident's alerts (``wants``)
BLOCK_KINDS = frozenset(kind for kind in KINDS if kind.startswith("block."))
WILDCARD = ".*"  # "block.*": every kind of that object


# an attempt's outcomes (``Attempt.outcome``)
DELIVERED = "delivered"
RETRYING = "retrying"
FAILED = "failed"
SKIPPED = "skipped"
OUTCOMES = (DELIVERED, RETRYING, FAILED, SKIPPED)


class TooManyWebhooks(InvalidInput):
    """The tenant already has ``MAX_WEBHOOKS_PER_TENANT`` webhooks."""


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook.  A disabled one (``enabled`` false) is sent nothing; ``previous_secret``
    is the secret the last rotation replaced, which still signs deliveries until
    ``previous_secret_expires_at``."""

    id: str
    tenant: str
    url: str
    events: tuple[str, ...]
    description: str
    created_at: float
    secret: str
    enabled: bool = True
    previous_secret: str = ""
    previous_secret_expires_at: float | None = None

    def public(self) -> dict[str, object]:
        """What the API shows of it: everything but the secrets."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "description": self.description,
            "enabled": self.enabled,
            "created_at": self.created_at,
        }

    def wants(self, kind: str, incident_id: str | None = None) -> bool:
        """Whether an alert of ``kind`` is sent here.  A per-block alert of a campaign's
        member (``incident_id`` set) is not sent to a webhook that receives incidents:
        the incident's alerts tell of it, once per change rather than once per address.
        Webhooks subscribed to block alerts and to no incident kind get every block."""
        if not self.enabled or kind not in self.events:
            return False
        if incident_id and kind in BLOCK_KINDS:
            return not any(event in INCIDENT_KINDS for event in self.events)
        return True

    def signing_secrets(self, now: float) -> tuple[str, ...]:
        """The secrets a delivery made at ``now`` is signed with: the current one, then the
        one it replaced while that one's grace period lasts."""
        expires = self.previous_secret_expires_at
        if self.previous_secret and expires is not None and now < expires:
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt.  ``outcome`` is ``delivered``, ``retrying``
    (``next_retry_at`` says when), ``failed`` (the last attempt failed) or ``skipped`` (it
    fell due while its webhook was disabled: not sent, and dropped); ``status`` the HTTP
    status, or None when no response came (``error`` says why); ``response`` the start of
    the response body, never more."""

    delivery_id: str
    event_id: str
    type: str
    attempt: int
    at: float
    outcome: str
    status: int | None = None
    error: str | None = None
    response: str = ""
    next_retry_at: float | None = None


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_events(events: Iterable[str] | None) -> tuple[str, ...]:
    """The alert kinds subscribed to (every kind for None; ``block.*`` or ``incident.*``
    stand for every kind of that object); InvalidInput naming the unknown ones, or for an
    empty list."""
    if events is None:
        return ALERT_KINDS
    chosen: dict[str, None] = {}
    unknown = []
    for event in events:
        if event.endswith(WILDCARD) and event != WILDCARD:
            prefix = event[: -len(WILDCARD) + 1]
            matched = [kind for kind in ALERT_KINDS if kind.startswith(prefix)]
        else:
            matched = [event] if event in KINDS else []
        if not matched:
            unknown.append(event)
        chosen.update(dict.fromkeys(matched))
    if unknown:
        raise InvalidInput(
            f"unknown event kinds {', '.join(repr(k[:100]) for k in unknown[:10])}: "
            f"the kinds are {', '.join(ALERT_KINDS)} (or block.*, incident.*)"
        )
    if not chosen:
        raise InvalidInput("events must name at least one kind (or be left out for all)")
    return tuple(chosen)


def check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInput(f"description is longer than {MAX_DESCRIPTION_LENGTH} characters")
    return description


class WebhookStore:
    """Webhooks in Redis.  Every operation names the tenant it acts for."""

    def __init__(self, redis: Redis, keyspace: Keyspace, sealer: SecretSealer):
        self._redis = redis
        self._keyspace = keyspace
        self._sealer = sealer
        self._seal = register_script(redis, "webhooks", "webhook_seal.lua")

    async def create(
        self,
        tenant: str,
        url: str,
        events: Sequence[str] | None = None,
        description: str = "",
        *,
        enabled: bool = True,
        allow_private: bool = False,
    ) -> Webhook:
        """A new webhook with a fresh secret.  InvalidInput naming a bad value, TargetRefused
        for a non-public target (``webhooks/targets.py``), TooManyWebhooks."""
        target = parse_target(url, allow_private=allow_private)
        hook = Webhook(
            id=ID_PREFIX + secrets.token_hex(8),
            tenant=tenant,
            url=target.url,
            events=check_events(events),
            description=check_description(description),
            created_at=round(time.time(), 3),
            secret=new_secret(),
            enabled=enabled,
        )
        key = self._keyspace.webhooks(tenant)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, hook.id, json.dumps(sealed_record(hook, self._sealer)))
                pipe.hlen(key)
                _, count = await pipe.execute()
            # added first, counted after: concurrent creations can only be refused too many
            if count > MAX_WEBHOOKS_PER_TENANT:
                await self._redis.hdel(key, hook.id)
                raise TooManyWebhooks(
                    f"a tenant may have at most {MAX_WEBHOOKS_PER_TENANT} webhooks: "
                    "delete one first"
                )
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return hook

    async def find(self, tenant: str, webhook_id: str) -> Webhook | None:
        try:
            raw = await self._redis.hget(self._keyspace.webhooks(tenant), webhook_id)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return await self._read(tenant, webhook_id, raw) if raw is not None else None

    async def get(self, tenant: str, webhook_id: str) -> Webhook:
        hook = await self.find(tenant, webhook_id)
        if hook is None:
            raise NotFound(f"webhook {webhook_id[:100]!r} not found")
        return hook

    async def webhooks(self, tenant: str) -> list[Webhook]:
        """The tenant's webhooks, oldest first."""
        try:
            raw = await self._redis.hgetall(self._keyspace.webhooks(tenant))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        hooks = [await self._read(tenant, _text(key), record) for key, record in raw.items()]
        return sorted(hooks, key=lambda hook: (hook.created_at, hook.id))

    async def _read(self, tenant: str, webhook_id: str, raw: bytes | str) -> Webhook:
        """The webhook of ``raw``; a record stored with its secret in plain text is sealed."""
        hook = from_record(tenant, raw, self._sealer)
        record = json.loads(raw)
        if not is_sealed(record["secret"]) or not is_sealed(
            record.get("previous_secret") or "sealed:v1:"
        ):
            sealed = {**record, **sealed_record(hook, self._sealer)}
            try:
                await self._seal(
                    keys=[self._keyspace.webhooks(tenant)],
                    args=[webhook_id, raw, json.dumps(sealed)],
                )
            except RedisError as exc:
                raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return hook

    async def delete(self, tenant: str, webhook_id: str) -> Webhook:
        """Delete the webhook with its health and attempts; NotFound if the tenant has none
        of that id.  Its queued deliveries are dropped by the queue."""
        hook = await self.get(tenant, webhook_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._keyspace.webhooks(tenant), webhook_id)
                pipe.delete(
                    self._keyspace.webhook_health(tenant, webhook_id),
                    self._keyspace.webhook_attempts(tenant, webhook_id),
                )
                removed, _ = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if not removed:
            raise NotFound(f"webhook {webhook_id[:100]!r} not found")
        return hook

    async def restore(self, tenant: str, webhook_id: str, record: str) -> Webhook:
        """Write a stored ``record`` of the webhook back as it was (its secrets sealed as
        they were); its delivery health and attempts start again.  ConfigError if its
        secrets do not open with this store's key."""
        hook = from_record(tenant, record, self._sealer)  # refuses what would not sign
        if hook.id != webhook_id:
            raise ValueError(f"the record of webhook {webhook_id!r} is {hook.id!r}'s")
        try:
            await self._redis.hset(self._keyspace.webhooks(tenant), webhook_id, record)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return hook

    async def health(self, tenant: str, webhook_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each webhook's delivery health (nulls and 0 before its first attempt)."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for webhook_id in webhook_ids:
                    pipe.hgetall(self._keyspace.webhook_health(tenant, webhook_id))
                replies = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return {wid: _health(reply) for wid, reply in zip(webhook_ids, replies, strict=True)}

    async def attempts(
        self, tenant: str, webhook_id: str, limit: int = MAX_ATTEMPTS_KEPT
    ) -> list[Attempt]:
        """The webhook's latest attempts, newest first."""
        key = self._keyspace.webhook_attempts(tenant, webhook_id)
        try:
            raw = await self._redis.lrange(key, 0, max(0, limit - 1))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return [Attempt(**json.loads(item)) for item in raw]

    async def record_attempt(self, tenant: str, webhook_id: str, attempt: Attempt) -> None:
        """Log ``attempt`` and update the webhook's health (unless it was ``skipped``: nothing
        was sent, so nothing is known of the endpoint).  Nothing stays of it if the webhook
        was deleted meanwhile."""
        health = self._keyspace.webhook_health(tenant, webhook_id)
        attempts = self._keyspace.webhook_attempts(tenant, webhook_id)
        fields: dict[FieldT, EncodableT] = {
            "last_attempt_at": attempt.at,
            "last_status": attempt.status if attempt.status is not None else "",
            "last_error": attempt.error or "",
        }
        if attempt.outcome == DELIVERED:
            fields.update(last_success_at=attempt.at, consecutive_failures=0)
        else:
            fields["last_failure_at"] = attempt.at
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(attempts, json.dumps(asdict(attempt)))
                pipe.ltrim(attempts, 0, MAX_ATTEMPTS_KEPT - 1)
                if attempt.outcome != SKIPPED:
                    pipe.hset(health, mapping=fields)
                if attempt.outcome not in (DELIVERED, SKIPPED):
                    pipe.hincrby(health, "consecutive_failures", 1)
                pipe.hexists(self._keyspace.webhooks(tenant), webhook_id)
                *_, exists = await pipe.execute()
            # checked after writing: a deletion either came first (seen here) or comes after
            # (and deletes what was written)
            if not exists:
                await self._redis.delete(health, attempts)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def sealed_record(hook: Webhook, sealer: SecretSealer) -> dict[str, object]:
    """What is stored of ``hook``: everything, its secrets sealed."""
    record: dict[str, object] = {
        **hook.public(),
        "secret": sealer.seal(hook.secret, hook.tenant, hook.id),
    }
    if hook.previous_secret:
        record["previous_secret"] = sealer.seal(hook.previous_secret, hook.tenant, hook.id)
        record["previous_secret_expires_at"] = hook.previous_secret_expires_at
    return record


def from_record(tenant: str, raw: bytes | str, sealer: SecretSealer) -> Webhook:
    """The webhook of a stored record, its secrets opened.  Records written before a field
    existed lack it: they are enabled and have no previous secret; records written before
    secrets were sealed hold them in plain text."""
    record = json.loads(raw)
    hook_id = record["id"]
    previous = record.get("previous_secret") or ""
    return Webhook(
        id=hook_id,
        tenant=tenant,
        url=record["url"],
        events=tuple(record["events"]),
        description=record["description"],
        created_at=record["created_at"],
        secret=sealer.open(record["secret"], tenant, hook_id),
        enabled=bool(record.get("enabled", True)),
        previous_secret=sealer.open(previous, tenant, hook_id) if previous else "",
        previous_secret_expires_at=record.get("previous_secret_expires_at"),
    )


def _health(reply: dict[bytes, bytes]) -> dict[str, Any]:
    fields = {name.decode(): value.decode() for name, value in reply.items()}

    def number(name: str) -> float | None:
        value = fields.get(name, "")
        return float(value) if value else None

    status = fields.get("last_status", "")
    return {
        "last_attempt_at": number("last_attempt_at"),
        "last_success_at": number("last_success_at"),
        "last_failure_at": number("last_failure_at"),
        "last_status": int(status) if status else None,
        "last_error": fields.get("last_error") or None,
        "consecutive_failures": int(fields.get("consecutive_failures", "0")),
    }
