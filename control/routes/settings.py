"""``/v1/settings``: the tenant's settings (admin keys only): its fail mode, how the abuse
detection may act on its subjects, and how coordinated campaigns are detected
(``campaign_*``, read by the detectors within a round or two).  Each changed setting is
audited on its own."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from msgspec import UNSET
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.audit import AuditTrail
from control.auth import ControlAuth
from control.durable.records import DurableRecords
from control.http import client_ip, json_response, read_json
from control.schemas.requests import SettingsUpdate
from limiter.state.tenants import TenantSettingsStore, detection_of
from stream.audit import SETTINGS_UPDATED

_settings_update = msgspec.json.Decoder(SettingsUpdate)
CAMPAIGN_FIELDS = (
    "campaign_detection",
    "campaign_min_members",
    "campaign_mode",
    "campaign_block_ttl",
)


class SettingsRoutes:
    def __init__(
        self,
        auth: ControlAuth,
        tenant_settings: TenantSettingsStore,
        audit: AuditTrail,
        durable: DurableRecords,
    ):
        self._auth = auth
        self._tenant_settings = tenant_settings
        self._audit = audit
        self._durable = durable

    def routes(self) -> list[Route]:
        return [
            Route("/v1/settings", self.get_settings, methods=["GET"]),
            Route("/v1/settings", self.update_settings, methods=["PATCH"]),
        ]

    async def get_settings(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        stored = await self._tenant_settings.get(principal.tenant)
        return json_response(_settings_view(principal.tenant, stored))

    async def update_settings(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        body: SettingsUpdate = await read_json(request, _settings_update)
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
        for name in CAMPAIGN_FIELDS:
            value = getattr(body, name)
            if value is not UNSET:
                wanted[name] = value
        if wanted:
            await self._durable.settled()
        stored = await store.get(tenant)
        before = _settings_view(tenant, stored)
        if wanted:
            stored = await store.update(tenant, wanted)
            await self._durable.settings_saved(tenant, stored)
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
        "campaign_detection": detection.campaigns.enabled,
        "campaign_min_members": detection.campaigns.min_members,
        "campaign_mode": detection.campaigns.mode.value if detection.campaigns.mode else None,
        "campaign_block_ttl": detection.campaigns.block_ttl,
    }
