"""``/v1/keys``: the tenant's API keys (admin keys only).  A new key (and a signed key's
signing secret) is in the answer of its creation and never again; a revoked key is refused
on this instance at once, and on every other within the auth cache's TTL."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.audit import AuditTrail
from control.auth import ControlAuth
from control.durable.records import DurableRecords
from control.http import client_ip, json_response, read_json
from control.schemas.requests import KeyCreate
from limiter.state.apikeys import KeyStore
from stream.audit import KEY_CREATED, KEY_REVOKED

_key_create = msgspec.json.Decoder(KeyCreate)


class KeyRoutes:
    def __init__(
        self, auth: ControlAuth, keys: KeyStore, audit: AuditTrail, durable: DurableRecords
    ):
        self._auth = auth
        self._keys = keys
        self._audit = audit
        self._durable = durable

    def routes(self) -> list[Route]:
        return [
            Route("/v1/keys", self.list_keys, methods=["GET"]),
            Route("/v1/keys", self.create_key, methods=["POST"]),
            Route("/v1/keys/{key_id}", self.revoke_key, methods=["DELETE"]),
        ]

    async def list_keys(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        keys = await self._keys.list_keys(principal.tenant)
        return json_response({"keys": [record.public() for record in keys]})

    async def create_key(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        body: KeyCreate = await read_json(request, _key_create)
        await self._durable.settled()
        api_key, record = await self._keys.create(
            principal.tenant,
            admin=body.admin,
            name=body.name,
            segment=body.segment,
            signed=body.signed,
        )
        await self._durable.key_saved(record)
        await self._audit.record(
            principal,
            KEY_CREATED,
            record.id,
            {
                "admin": record.admin,
                "name": record.name,
                "segment": record.segment or None,
                "signed": record.signed,
            },
            client_ip(request),
        )
        created = {**record.public(), "key": api_key}
        if record.signed:
            created["signing_secret"] = self._keys.signing_secret(record)
        return json_response(created, 201)

    async def revoke_key(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        await self._durable.settled()
        key_id = request.path_params["key_id"]
        # journaled first: once revoked in the durable copy, no restore brings it back
        await self._durable.key_revoked(await self._keys.get(key_id, principal.tenant))
        record = await self._keys.revoke(key_id, principal.tenant)
        self._auth.forget()
        await self._audit.record(
            principal, KEY_REVOKED, record.id, {"name": record.name}, client_ip(request)
        )
        return json_response({**record.public(), "revoked": True})
