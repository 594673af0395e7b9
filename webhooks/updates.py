"""Changing a webhook in place: its fields (``PATCH``) and its secret (rotation).

Each change is one run of ``lua/webhook_update.lua``, which reads the stored record,
applies the change and writes it back inside Redis: two administrators changing different
fields at once both get their change (a read in Python and a write back would lose one),
and a rotation always keeps the secret that was current when it ran.

Rotation follows Svix: the new secret is shown once, and the one it replaces still signs
every delivery beside it (Standard Webhooks allows several ``v1,<signature>`` entries in
``webhook-signature``) for ``secret_grace`` seconds, 24 hours by default, so a receiver can
switch to the new secret without refusing a delivery.  Only the latest replaced secret is
kept: a second rotation within the grace period ends the first one's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import NotFound, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.scripts import register_script
from webhooks.registry import (
    Webhook,
    WebhookStore,
    check_description,
    check_events,
    from_record,
    new_secret,
)
from webhooks.sealing import SecretSealer
from webhooks.targets import parse_target

SECRET_GRACE_SECONDS = 24 * 3600.0
# the fields a PATCH may change, in the order the audit log names them
FIELDS = ("url", "events", "description", "enabled")


@dataclass(frozen=True, slots=True)
class WebhookChanges:
    """What to change; None leaves a field as it is."""

    url: str | None = None
    events: Sequence[str] | None = None
    description: str | None = None
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class Updated:
    before: Webhook
    after: Webhook

    @property
    def changed(self) -> list[str]:
        """The names of the fields whose value the change altered."""
        return [name for name in FIELDS if getattr(self.before, name) != getattr(self.after, name)]


class WebhookUpdater:
    """``clock`` gives epoch seconds; the replaced secret signs until ``clock() +
    secret_grace`` at its rotation."""

    def __init__(
        self,
        redis: Redis,
        keyspace: Keyspace,
        sealer: SecretSealer,
        *,
        clock: Callable[[], float] = time.time,
        secret_grace: float = SECRET_GRACE_SECONDS,
    ):
        if not 0 <= secret_grace <= 30 * 24 * 3600:
            raise ValueError(f"webhook secret grace period {secret_grace!r}s is not 0-30 days")
        self._redis = redis
        self._keyspace = keyspace
        self._store = WebhookStore(redis, keyspace, sealer)
        self._sealer = sealer
        self._clock = clock
        self.secret_grace = secret_grace
        self._update = register_script(redis, "webhooks", "webhook_update.lua")

    async def update(
        self,
        tenant: str,
        webhook_id: str,
        changes: WebhookChanges,
        *,
        allow_private: bool = False,
    ) -> Updated:
        """Apply ``changes``, checked as at creation: InvalidInput naming a bad value,
        TargetRefused for a non-public URL, NotFound if the tenant has no such webhook."""
        fields: dict[str, object] = {}
        if changes.url is not None:
            fields["url"] = parse_target(changes.url, allow_private=allow_private).url
        if changes.events is not None:
            fields["events"] = list(check_events(changes.events))
        if changes.description is not None:
            fields["description"] = check_description(changes.description)
        if changes.enabled is not None:
            fields["enabled"] = changes.enabled
        if not fields:
            hook = await self._store.get(tenant, webhook_id)
            return Updated(hook, hook)
        return await self._apply(tenant, webhook_id, fields)

    async def rotate_secret(self, tenant: str, webhook_id: str) -> Updated:
        """Give the webhook a new secret (``after.secret``); the one it replaces signs too
        until ``after.previous_secret_expires_at``.  NotFound if the tenant has no such
        webhook."""
        expires = round(self._clock() + self.secret_grace, 3)
        sealed = self._sealer.seal(new_secret(), tenant, webhook_id)
        return await self._apply(tenant, webhook_id, {}, (sealed, expires))

    async def _apply(
        self,
        tenant: str,
        webhook_id: str,
        fields: dict[str, object],
        rotation: tuple[str, float] | None = None,
    ) -> Updated:
        secret, expires = rotation if rotation is not None else ("", 0.0)
        try:
            reply = await self._update(
                keys=[self._keyspace.webhooks(tenant)],
                args=[webhook_id, json.dumps(fields), secret, expires],
            )
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if not reply:
            raise NotFound(f"webhook {webhook_id[:100]!r} not found")
        before, after = reply
        return Updated(
            from_record(tenant, before, self._sealer), from_record(tenant, after, self._sealer)
        )
