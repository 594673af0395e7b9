"""Incidents: the blocks of one coordinated campaign, grouped, with one notification per
change instead of one per blocked address.

``IncidentActions`` wraps the block actions.  Each verdict is acted on as before (a block,
an audit entry, a per-block alert that carries the incident id); a campaign member's
outcome is noted.  When the round's verdicts are done (``round_ended``), each campaign the
round changed (``detectors.campaigns.CampaignChange``) updates its incident in the store
and records one alert:

- ``incident.opened`` once the campaign has a member blocked (or shadowed): a campaign
  whose members were all allowlisted, or of a tenant with detection off, is no incident;
- ``incident.updated`` for a round that blocked further members;
- ``incident.closed`` when the campaign has been quiet for its closing time.

Webhooks subscribed to incidents get these instead of the member's per-block alerts
(``webhooks.registry.Webhook.wants``), so a 200-address attack is one message and a few
updates.  Incidents an instance opened are remembered in memory until they close; a
restarted detector opens new ones for campaigns still running.  Failures to store an
incident or record its alert are logged, never raised: the blocks stand either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from detectors.actions import ActionResult
from detectors.campaigns import DETECTOR, Campaign, CampaignChange
from detectors.incident_store import CLOSED, OPEN, Incident, IncidentStore, Member
from detectors.verdict import Verdict
from limiter.errors import StoreUnavailable
from stream.alerts import (
    INCIDENT_CLOSED,
    INCIDENT_OPENED,
    INCIDENT_UPDATED,
    AlertOutbox,
    AlertUnavailable,
    new_alert_event,
)

log = logging.getLogger("ratewatch.detect")

ACTED = ("blocked", "shadowed")
MAX_ALERT_MEMBERS = 100  # members an alert names (the incident lists more)


class Actions(Protocol):
    async def apply(self, verdict: Verdict) -> ActionResult: ...


class CampaignChanges(Protocol):
    def take_changes(self) -> list[CampaignChange]: ...


class IncidentActions:
    def __init__(
        self,
        actions: Actions,
        campaigns: CampaignChanges,
        store: IncidentStore,
        alerts: AlertOutbox,
    ):
        self._actions = actions
        self._campaigns = campaigns
        self._store = store
        self._alerts = alerts
        self._outcomes: dict[tuple[str, str], ActionResult] = {}  # (incident, ip) → result
        self._open: dict[str, Incident] = {}

    async def apply(self, verdict: Verdict) -> ActionResult:
        result = await self._actions.apply(verdict)
        if verdict.campaign is not None:
            self._outcomes[(verdict.campaign.incident_id, verdict.subject)] = result
        return result

    async def round_ended(self) -> None:
        """Bring the incidents of the campaigns the round changed up to date and alert."""
        for change in self._campaigns.take_changes():
            try:
                await self._follow(change)
            except StoreUnavailable:
                log.warning("incident %s not stored", change.campaign.id, exc_info=True)
        # outcomes of campaigns that made no change (already reported) are not needed
        self._outcomes.clear()

    async def _follow(self, change: CampaignChange) -> None:
        campaign = change.campaign
        incident = self._open.get(campaign.id)
        now = round(time.time(), 3)
        if change.kind == "closed":
            if incident is None:
                return
            del self._open[campaign.id]
            _describe(incident, campaign, now)
            incident.state, incident.closed_at = CLOSED, now
            await self._store.save(campaign.signature.tenant, incident)
            await self._alert(campaign.signature.tenant, INCIDENT_CLOSED, incident, ())
            return
        joined = [self._member(campaign.id, ip, now) for ip in change.joined]
        acted = [member for member in joined if member.outcome in ACTED]
        if incident is None:
            if not acted:
                return  # nothing done about it (detection off, allowlisted): no incident
            mode = "shadow" if all(m.outcome == "shadowed" for m in acted) else "enforce"
            incident = Incident(
                id=campaign.id,
                family=campaign.family,
                state=OPEN,
                mode=mode,
                opened_at=now,
                updated_at=now,
                first_seen=campaign.first_seen_ms / 1000,
                last_seen=campaign.last_seen_ms / 1000,
                detector=DETECTOR,
                detector_version=campaign.version,
            )
            self._open[campaign.id] = incident
            kind = INCIDENT_OPENED
        else:
            kind = INCIDENT_UPDATED
        incident.members += joined
        _describe(incident, campaign, now)
        await self._store.save(campaign.signature.tenant, incident)
        if acted:
            await self._alert(campaign.signature.tenant, kind, incident, joined)

    def _member(self, incident_id: str, ip: str, now: float) -> Member:
        result = self._outcomes.pop((incident_id, ip), None)
        if result is None:
            return Member(ip, "not_acted", now)
        return Member(ip, result.outcome, now, result.block_id)

    async def _alert(
        self, tenant: str, kind: str, incident: Incident, joined: Iterable[Member]
    ) -> None:
        details: dict[str, Any] = incident.summary()
        details["joined"] = [
            {"ip": m.ip, "outcome": m.outcome, "block_id": m.block_id}
            for m in list(joined)[:MAX_ALERT_MEMBERS]
        ]
        details["members"] = [m.ip for m in incident.members[:MAX_ALERT_MEMBERS]]
        details["score"] = None
        alert = new_alert_event(
            tenant, kind, "incident", incident.id, explanation=details, mode=incident.mode
        )
        try:
            await self._alerts.record(alert)
        except AlertUnavailable:
            log.warning("alert %s for incident %s lost", kind, incident.id)


def _describe(incident: Incident, campaign: Campaign, now: float) -> None:
    incident.updated_at = now
    incident.first_seen = campaign.first_seen_ms / 1000
    incident.last_seen = campaign.last_seen_ms / 1000
    incident.reasons = list(campaign.reasons)
    incident.evidence = dict(campaign.evidence)
    counts: dict[str, int] = {"members": len(incident.members)}
    for member in incident.members:
        counts[member.outcome] = counts.get(member.outcome, 0) + 1
    incident.counts = counts
