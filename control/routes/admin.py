"""Tenant-scoped management routes: API keys, blocks and tenant settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.audit import AuditTrail
from limiter.auth import Authenticator, Principal
from limiter.errors import InvalidInput, NotFound, StoreUnavailable
from limiter.http.checks import CheckHandler, decode
from limiter.http.problems import Problem
from limiter.state.apikeys import MAX_NAME_LENGTH, MAX_SEGMENT_LENGTH, KeyStore
from limiter.state.blocks import MAX_BLOCK_SECONDS, MAX_REASON_LENGTH, BlockStore
from limiter.state.tenants import (
    MAX_DYNAMIC_BLOCKS_LIMIT,
    MIN_DETECTION_THRESHOLD,
    DetectionMode,
    FailMode,
    TenantSettingsStore,
    detection_of,
)
from stream.audit import (
    BLOCK_CREATED,
    BLOCK_REMOVED,
    KEY_CREATED,
    KEY_REVOKED,
    SETTINGS_UPDATED,
)

MAX_ADMIN_BODY = 64 * 1024
_encoder = msgspec.json.Encoder()


class KeyCreate(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(max_length=MAX_NAME_LENGTH)] = ""
    admin: bool = False
    segment: Annotated[
        str,
        Meta(
            max_length=MAX_SEGMENT_LENGTH,
            description="Customer segment (tier) of this key's checks that name none.",
        ),
    ] = ""


class BlockCreate(msgspec.Struct, kw_only=True):
    scope: Literal["ip", "key", "user_id"]
    value: Annotated[str, Meta(min_length=1, max_length=1024)]
    ttl: Annotated[int, Meta(ge=1, le=MAX_BLOCK_SECONDS, description="Seconds.")]
    reason: Annotated[str, Meta(max_length=MAX_REASON_LENGTH)] = ""
    mode: Literal["enforce", "shadow"] = "enforce"


class SettingsUpdate(msgspec.Struct, kw_only=True):
    """Only the fields given change; ``fail_mode: null`` returns to the server's default."""

    fail_mode: FailMode | UnsetType | None = UNSET
    detection_mode: (
        Annotated[
            DetectionMode,
            Meta(description="Dynamic blocks: enforce, shadow (recorded, not enforced), off."),
        ]
        | UnsetType
    ) = UNSET
    max_dynamic_blocks: (
        Annotated[
            int,
            Meta(ge=0, le=MAX_DYNAMIC_BLOCKS_LIMIT, description="Cap on active detector blocks."),
        ]
        | UnsetType
    ) = UNSET
    detection_threshold: (
        Annotated[
            float,
            Meta(
                ge=MIN_DETECTION_THRESHOLD,
                le=1,
                description="Score a verdict needs to block this tenant's subjects, when "
                "higher than the detectors' own (0.8); null returns to theirs.",
            ),
        ]
        | UnsetType
        | None
    ) = UNSET


_key_create = msgspec.json.Decoder(KeyCreate)
_block_create = msgspec.json.Decoder(BlockCreate)
_settings_update = msgspec.json.Decoder(SettingsUpdate)


def json_response(content: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(content), status, media_type="application/json")


async def principal_of(checks: CheckHandler, request: Request, admin: bool) -> Principal:
    """The caller's principal; 401 without a valid key, 403 if ``admin`` and it is not."""
    principal = await checks.principal(request.scope)
    if admin and not principal.admin:
        raise Problem(403, "forbidden", "this route needs an admin key of the tenant")
    return principal


async def read_json(request: Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    """The body decoded and validated by ``decoder``; 413 past MAX_ADMIN_BODY bytes."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_ADMIN_BODY:
            raise Problem(
                413,
                "body-too-large",
                f"request body exceeds the limit of {MAX_ADMIN_BODY} bytes",
            )
    return decode(decoder, body or b"{}")


def client_ip(request: Request) -> str:
    return request.client.host if request.client is not None else ""


class AdminRoutes:
    def __init__(
        self,
        checks: CheckHandler,
        keys: KeyStore,
        blocks: BlockStore,
        tenant_settings: TenantSettingsStore,
        auth: Authenticator,
        audit: AuditTrail,
    ):
        self._checks = checks
        self._keys = keys
        self._blocks = blocks
        self._tenant_settings = tenant_settings
        self._auth = auth
        self._audit = audit

    def routes(self) -> list[Route]:
        return [
            Route("/v1/keys", self.list_keys, methods=["GET"]),
            Route("/v1/keys", self.create_key, methods=["POST"]),
            Route("/v1/keys/{key_id}", self.revoke_key, methods=["DELETE"]),
            Route("/v1/blocks", self.list_blocks, methods=["GET"]),
            Route("/v1/blocks", self.create_block, methods=["POST"]),
            Route("/v1/blocks/{block_id}", self.remove_block, methods=["DELETE"]),
            Route("/v1/settings", self.get_settings, methods=["GET"]),
            Route("/v1/settings", self.update_settings, methods=["PATCH"]),
        ]

    async def _principal(self, request: Request, admin: bool) -> Principal:
        return await principal_of(self._checks, request, admin)

    async def _body(self, request: Request, decoder: msgspec.json.Decoder[Any]) -> Any:
        return await read_json(request, decoder)

    async def list_keys(self, request: Request) -> Response:
        principal = await self._principal(request, admin=True)
        keys = await self._keys.list_keys(principal.tenant)
        return json_response({"keys": [record.public() for record in keys]})

    async def create_key(self, request: Request) -> Response:
        principal = await self._principal(request, admin=True)
        body: KeyCreate = await self._body(request, _key_create)
        api_key, record = await self._keys.create(
            principal.tenant, admin=body.admin, name=body.name, segment=body.segment
        )
        await self._audit.record(
            principal,
            KEY_CREATED,
            record.id,
            {"admin": record.admin, "name": record.name, "segment": record.segment or None},
            client_ip(request),
        )
        return json_response({**record.public(), "key": api_key}, 201)

    async def revoke_key(self, request: Request) -> Response:
        principal = await self._principal(request, admin=True)
        record = await self._keys.revoke(request.path_params["key_id"], principal.tenant)
        self._auth.forget()
        await self._audit.record(
            principal, KEY_REVOKED, record.id, {"name": record.name}, client_ip(request)
        )
        return json_response({**record.public(), "revoked": True})

    async def list_blocks(self, request: Request) -> Response:
        principal = await self._principal(request, admin=False)
        blocks = await self._blocks.active(principal.tenant)
        return json_response({"blocks": [block.public() for block in blocks]})

    async def create_block(self, request: Request) -> Response:
        principal = await self._principal(request, admin=True)
        body: BlockCreate = await self._body(request, _block_create)
        block = await self._blocks.create(
            principal.tenant, body.scope, body.value, body.ttl, body.reason, mode=body.mode
        )
        await self._audit.record(
            principal,
            BLOCK_CREATED,
            block.id,
            {
                "scope": block.scope,
                "value": block.value,
                "ttl": body.ttl,
                "reason": block.reason,
                "mode": block.mode,
                "source": "manual",
            },
            client_ip(request),
        )
        return json_response(block.public(), 201)

    async def remove_block(self, request: Request) -> Response:
        principal = await self._principal(request, admin=True)
        block = await self._blocks.remove(
            principal.tenant, request.path_params["block_id"], by_operator=True
        )
        await self._audit.record(
            principal,
            BLOCK_REMOVED,
            block.id,
            {"scope": block.scope, "value": block.value, "source": block.source},
            client_ip(request),
        )
        return json_response({**block.public(), "removed": True})

    async def get_settings(self, request: Request) -> Response:
        principal = await self._principal(request, admin=True)
        stored = await self._tenant_settings.get(principal.tenant)
        return json_response(_settings_view(principal.tenant, stored))

    async def update_settings(self, request: Request) -> Response:
        principal = await self._principal(request, admin=True)
        body: SettingsUpdate = await self._body(request, _settings_update)
        tenant, store = principal.tenant, self._tenant_settings
        wanted: dict[str, object] = {}
        if body.fail_mode is not UNSET:
            wanted["fail_mode"] = body.fail_mode.value if body.fail_mode else None
        if body.detection_mode is not UNSET:
            wanted["detection_mode"] = body.detection_mode.value
        if body.max_dynamic_blocks is not UNSET:
            wanted["max_dynamic_blocks"] = body.max_dynamic_blocks
        if body.detection_threshold is not UNSET:
            wanted["detection_threshold"] = body.detection_threshold
        stored = await store.get(tenant)
        before = _settings_view(tenant, stored)
        if wanted:
            stored = await store.update(tenant, wanted)
        if "fail_mode" in wanted:
            self._auth.forget()
        after = _settings_view(tenant, stored)
        changes = [(name, before[name], after[name]) for name in wanted]
        for name, old, new in changes:
            await self._audit.record(
                principal, SETTINGS_UPDATED, name, {"from": old, "to": new}, client_ip(request)
            )
        return json_response(after)


def _settings_view(tenant: str, stored: Mapping[str, object]) -> dict[str, object]:
    """The tenant's settings as the API shows them, from its stored record."""
    detection = detection_of(tenant, stored)
    return {
        "tenant": tenant,
        "fail_mode": stored.get("fail_mode"),
        "detection_mode": detection.mode.value,
        "max_dynamic_blocks": detection.max_dynamic_blocks,
        "detection_threshold": detection.threshold,
    }


def problem_for(exc: Exception) -> Problem | None:
    """The problem response for an error of the limiter's own kinds."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, NotFound):
        return Problem(404, "not-found", str(exc))
    if isinstance(exc, InvalidInput):
        return Problem(422, "validation-error", str(exc))
    if isinstance(exc, StoreUnavailable):
        return Problem(503, "store-unavailable", str(exc))
    return None
