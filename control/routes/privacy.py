"""``POST /v1/privacy/delete`` and ``POST /v1/privacy/summary``: a user's data, reported or
erased in every store (``control/privacy.py``).  Both requests are audited with their
counts, never with the data itself."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.audit import AuditTrail
from control.auth import ControlAuth
from control.http import client_ip, json_response, read_json
from control.privacy import PrivacyRequests
from control.schemas.requests import PrivacyDelete, PrivacySummary
from limiter.api_limits import Limited
from stream.audit import PRIVACY_DELETED, PRIVACY_SUMMARY

_delete = msgspec.json.Decoder(PrivacyDelete)
_summary = msgspec.json.Decoder(PrivacySummary)


class PrivacyRoutes:
    def __init__(self, auth: ControlAuth, requests: PrivacyRequests, audit: AuditTrail):
        self._auth = auth
        self._requests = requests
        self._audit = audit

    def routes(self) -> list[Route]:
        return [
            Route("/v1/privacy/delete", self.delete, methods=["POST"]),
            Route("/v1/privacy/summary", self.summary, methods=["POST"]),
        ]

    async def delete(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True, limit=Limited.PRIVACY)
        body: PrivacyDelete = await read_json(request, _delete)
        erased = await self._requests.erase(principal.tenant, body.user_id)
        await self._audit.record(
            principal,
            PRIVACY_DELETED,
            body.user_id,
            {
                "reason": body.reason,
                "counters": erased.counters,
                "blocks": erased.blocks,
                "detection_records": erased.detection_records,
                "incidents_redacted": erased.incidents,
                **{f"{table}_rows": count for table, count in (erased.analytics or {}).items()},
            },
            client_ip(request),
        )
        message = f"Successfully deleted data for user {body.user_id}"
        if erased.analytics is None:
            message += " (Redis only: this limiter has no analytics store)"
        return json_response(
            {
                "success": True,
                "message": message,
                "deleted_keys": erased.redis_keys,
                "deleted": {
                    "redis": {
                        "counters": erased.counters,
                        "blocks": erased.blocks,
                        "detection_records": erased.detection_records,
                        "incidents": erased.incidents,
                    },
                    "clickhouse": erased.analytics,
                },
            }
        )

    async def summary(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=False, limit=Limited.PRIVACY)
        body: PrivacySummary = await read_json(request, _summary)
        summary = await self._requests.summary(principal.tenant, body.user_id)
        await self._audit.record(principal, PRIVACY_SUMMARY, body.user_id, {}, client_ip(request))
        return json_response(summary)
