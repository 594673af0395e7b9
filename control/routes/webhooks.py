"""``/v1/webhooks``: the tenant's endpoints that hear about its alerts (admin keys only).

A webhook's signing secret is in the answer of its creation, or of its rotation, and never
again.  Targets must be public http(s) addresses unless the server allows private ones
(``webhooks/targets.py``).  ``PATCH`` changes a webhook in one atomic step
(``webhooks/updates.py``).  Deliveries are made by the pipeline worker
(``webhooks/worker.py``); these routes show how they went.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.audit import AuditTrail
from control.auth import ControlAuth
from control.durable.records import DurableRecords
from control.http import client_ip, json_response, read_json
from control.schemas.requests import WebhookCreate, WebhookUpdate
from limiter.api_limits import Limited
from limiter.errors import StoreUnavailable
from limiter.http.problems import Problem
from stream.audit import (
    WEBHOOK_CREATED,
    WEBHOOK_DELETED,
    WEBHOOK_SECRET_ROTATED,
    WEBHOOK_UPDATED,
)
from webhooks.payloads import ping_delivery
from webhooks.queue import DeliveryQueue, QueueUnavailable
from webhooks.registry import (
    MAX_ATTEMPTS_KEPT,
    TooManyWebhooks,
    Webhook,
    WebhookStore,
)
from webhooks.targets import TargetRefused
from webhooks.updates import WebhookChanges, WebhookUpdater

T = TypeVar("T")
_create = msgspec.json.Decoder(WebhookCreate)
_update = msgspec.json.Decoder(WebhookUpdate)


class WebhookRoutes:
    def __init__(
        self,
        auth: ControlAuth,
        store: WebhookStore,
        updater: WebhookUpdater,
        queue: DeliveryQueue,
        audit: AuditTrail,
        durable: DurableRecords,
        *,
        allow_private: bool = False,
    ):
        self._durable = durable
        self._auth = auth
        self._store = store
        self._updater = updater
        self._queue = queue
        self._audit = audit
        self._allow_private = allow_private

    def routes(self) -> list[Route]:
        return [
            Route("/v1/webhooks", self.list_webhooks, methods=["GET"]),
            Route("/v1/webhooks", self.create, methods=["POST"]),
            Route("/v1/webhooks/{webhook_id}", self.update, methods=["PATCH"]),
            Route("/v1/webhooks/{webhook_id}", self.delete, methods=["DELETE"]),
            Route("/v1/webhooks/{webhook_id}/rotate-secret", self.rotate_secret, methods=["POST"]),
            Route("/v1/webhooks/{webhook_id}/deliveries", self.deliveries, methods=["GET"]),
            Route("/v1/webhooks/{webhook_id}/test", self.test, methods=["POST"]),
        ]

    async def list_webhooks(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        hooks = await self._store.webhooks(principal.tenant)
        health = await self._store.health(principal.tenant, [hook.id for hook in hooks])
        return json_response(
            {"webhooks": [{**hook.public(), "health": health[hook.id]} for hook in hooks]}
        )

    async def create(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        body: WebhookCreate = await read_json(request, _create)
        await self._durable.settled()
        try:
            hook = await self._store.create(
                principal.tenant,
                body.url,
                body.events,
                body.description,
                enabled=body.enabled,
                allow_private=self._allow_private,
            )
        except TargetRefused as exc:
            raise Problem(422, "webhook-target-refused", str(exc)) from None
        except TooManyWebhooks as exc:
            raise Problem(409, "too-many-webhooks", str(exc)) from None
        await self._durable.webhook_saved(hook)
        await self._audit.record(
            principal,
            WEBHOOK_CREATED,
            hook.id,
            _audit_details(hook),
            client_ip(request),
        )
        return json_response({**hook.public(), "secret": hook.secret}, 201)

    async def update(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        body: WebhookUpdate = await read_json(request, _update)
        changes = WebhookChanges(
            url=_given(body.url),
            events=_given(body.events),
            description=_given(body.description),
            enabled=_given(body.enabled),
        )
        await self._durable.settled()
        try:
            updated = await self._updater.update(
                principal.tenant,
                request.path_params["webhook_id"],
                changes,
                allow_private=self._allow_private,
            )
        except TargetRefused as exc:
            raise Problem(422, "webhook-target-refused", str(exc)) from None
        await self._durable.webhook_saved(updated.after)
        changed = updated.changed
        if changed:
            await self._audit.record(
                principal,
                WEBHOOK_UPDATED,
                updated.after.id,
                {"changed": ",".join(changed), **_changed_details(updated.after, changed)},
                client_ip(request),
            )
        return json_response(updated.after.public())

    async def rotate_secret(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        await self._durable.settled()
        rotated = await self._updater.rotate_secret(
            principal.tenant, request.path_params["webhook_id"]
        )
        hook = rotated.after
        await self._durable.webhook_saved(hook)
        await self._audit.record(
            principal,
            WEBHOOK_SECRET_ROTATED,
            hook.id,
            {
                "host": _host(hook.url),
                "previous_secret_expires_at": hook.previous_secret_expires_at,
            },
            client_ip(request),
        )
        return json_response(
            {
                **hook.public(),
                "secret": hook.secret,
                "previous_secret_expires_at": hook.previous_secret_expires_at,
            }
        )

    async def delete(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        await self._durable.settled()
        webhook_id = request.path_params["webhook_id"]
        # journaled first: a deleted webhook is never restored
        await self._durable.webhook_deleted(await self._store.get(principal.tenant, webhook_id))
        hook = await self._store.delete(principal.tenant, webhook_id)
        try:
            dropped = await self._queue.purge(hook.id)
        except QueueUnavailable:
            dropped = None  # the worker drops them as they fall due: their webhook is gone
        await self._audit.record(
            principal,
            WEBHOOK_DELETED,
            hook.id,
            {**_audit_details(hook), "dropped_deliveries": dropped},
            client_ip(request),
        )
        return json_response({**hook.public(), "deleted": True})

    async def deliveries(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        hook = await self._store.get(principal.tenant, request.path_params["webhook_id"])
        text = request.query_params.get("limit", str(MAX_ATTEMPTS_KEPT))
        valid = text.isascii() and text.isdigit() and len(text) <= 4
        if not valid or not 1 <= int(text) <= MAX_ATTEMPTS_KEPT:
            raise Problem(
                422, "validation-error", f"limit {text[:20]!r} is not 1-{MAX_ATTEMPTS_KEPT}"
            )
        attempts = await self._store.attempts(principal.tenant, hook.id, int(text))
        return json_response(
            {"webhook_id": hook.id, "deliveries": [asdict(attempt) for attempt in attempts]}
        )

    async def test(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True, limit=Limited.TEST_PING)
        hook = await self._store.get(principal.tenant, request.path_params["webhook_id"])
        if not hook.enabled:
            raise Problem(
                409,
                "webhook-disabled",
                f"webhook {hook.id} is disabled: enable it (PATCH enabled: true) to test it",
            )
        delivery = ping_delivery(principal.tenant, hook.id)
        try:
            await self._queue.enqueue([delivery])
        except QueueUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc
        return json_response(
            {"webhook_id": hook.id, "delivery_id": delivery.id, "type": delivery.type}, 202
        )


def _audit_details(hook: Webhook) -> dict[str, object]:
    return {
        "host": _host(hook.url),
        "events": ",".join(hook.events),
        "description": hook.description,
        "enabled": hook.enabled,
    }


def _changed_details(hook: Webhook, changed: list[str]) -> dict[str, object]:
    """The new values of the ``changed`` fields, as the audit log may hold them."""
    details = _audit_details(hook)
    return {key: details[key] for key in ("host" if name == "url" else name for name in changed)}


def _host(url: str) -> str:
    # the host, not the URL: a Slack URL's path is a secret
    return urlsplit(url).netloc


def _given(value: T | UnsetType) -> T | None:
    return None if isinstance(value, UnsetType) else value
