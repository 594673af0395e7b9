"""The tenants' campaign settings, read for the campaign detector once per detection round.

A tenant tunes campaign detection through ``PATCH /v1/settings`` (``campaign_*``; stored in
the tenant registry, ``limiter.state.tenants``).  The campaign detector runs on a worker
thread without Redis, so the settings are handed to it: at the end of each round (and once
at start) the records of the tenants it knows sources or campaigns of are read in one
round trip and become its ``tenant_settings`` for the next round.  A change is therefore in
force within two rounds (a few seconds).  A tenant first seen in a round is judged with the
detectors' own settings in that round only; the actions read the tenant's settings for
every verdict anyway (``detectors.actions``), so a campaign of a tenant that turned it off
blocks nobody even then, and the next round ends it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from limiter.errors import InvalidInput
from limiter.state.tenants import (
    DEFAULT_CAMPAIGN_TUNING,
    CampaignTuning,
    TenantSettingsStore,
    check_campaign_settings,
)

log = logging.getLogger("ratewatch.detect")


class TunedDetector(Protocol):
    tenant_settings: dict[str, CampaignTuning]

    def tenants(self) -> set[str]: ...


class CampaignTuningReader:
    def __init__(self, settings: TenantSettingsStore, detector: TunedDetector) -> None:
        self._settings = settings
        self._detector = detector

    async def refresh(self) -> None:
        """Read the settings of the tenants the detector knows; StoreUnavailable if Redis
        did not answer (the detector keeps the ones it has)."""
        records = await self._settings.many(self._detector.tenants())
        tuned: dict[str, CampaignTuning] = {}
        for tenant, record in records.items():
            try:
                tuning = check_campaign_settings(record)
            except InvalidInput as exc:
                log.warning(
                    "tenant %r: campaign settings not valid, defaults used: %s", tenant, exc
                )
                continue
            if tuning != DEFAULT_CAMPAIGN_TUNING:
                tuned[tenant] = tuning
        self._detector.tenant_settings = tuned
