"""``/v1/allowlist``: subjects the abuse detectors never block (ip addresses or networks,
keys, user ids).  Manual blocks still apply to them: the list only restrains detectors."""

from __future__ import annotations

from dataclasses import asdict

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.audit import AuditTrail
from control.auth import ControlAuth
from control.durable.records import DurableRecords
from control.http import client_ip, json_response, read_json
from control.schemas.requests import AllowlistAdd
from limiter.http.problems import Problem
from limiter.state.allowlist import AllowEntry, Allowlist, normalize_entry
from stream.audit import ALLOWLIST_ADDED, ALLOWLIST_REMOVED

_add = msgspec.json.Decoder(AllowlistAdd)


class AllowlistRoutes:
    def __init__(
        self,
        auth: ControlAuth,
        allowlist: Allowlist,
        audit: AuditTrail,
        durable: DurableRecords,
    ):
        self._auth = auth
        self._allowlist = allowlist
        self._audit = audit
        self._durable = durable

    def routes(self) -> list[Route]:
        return [
            Route("/v1/allowlist", self.list_entries, methods=["GET"]),
            Route("/v1/allowlist", self.add, methods=["POST"]),
            # a network contains '/', so the entry is named by query parameters
            Route("/v1/allowlist", self.remove, methods=["DELETE"]),
        ]

    async def list_entries(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=False)
        entries = await self._allowlist.entries(principal.tenant)
        return json_response({"entries": [asdict(entry) for entry in entries]})

    async def add(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        body: AllowlistAdd = await read_json(request, _add)
        await self._durable.settled()
        entry = await self._allowlist.add(principal.tenant, body.scope, body.value, body.note)
        await self._durable.allow_saved(principal.tenant, entry)
        await self._audit.record(
            principal,
            ALLOWLIST_ADDED,
            f"{entry.scope}:{entry.value}",
            {"scope": entry.scope, "value": entry.value, "note": entry.note},
            client_ip(request),
        )
        return json_response(asdict(entry), 201)

    async def remove(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        scope = request.query_params.get("scope")
        value = request.query_params.get("value")
        if scope is None or value is None:
            raise Problem(422, "validation-error", "name the entry: ?scope=ip|key|user_id&value=…")
        await self._durable.settled()
        stored = normalize_entry(scope, value)
        # journaled first (an entry that is not listed leaves a harmless deletion mark)
        await self._durable.allow_removed(principal.tenant, AllowEntry(scope, stored, "", 0.0))
        await self._allowlist.remove(principal.tenant, scope, value)
        await self._audit.record(
            principal,
            ALLOWLIST_REMOVED,
            f"{scope}:{value}",
            {"scope": scope, "value": value},
            client_ip(request),
        )
        return json_response({"scope": scope, "value": value, "removed": True})
