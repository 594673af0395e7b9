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
updates.

Every change stored is also recorded in the incident outbox (``stream.incidents``), whose
drain writes it to ``ratewatch.incidents`` once: the incidents' history for analysts.  A
change the outbox did not take is kept (up to ``MAX_UNRECORDED``) and recorded again at the
end of the next round, so a moment without Redis loses no history.

Incidents an instance opened are remembered in memory until they close.  A restarted
detector carries on the ones left open (``resume``, before its first round): each open
incident's campaign is handed back to the detector that found it (``campaign_of``; a
pressed account's names its account) with its id, members and
evidence, so that the campaign, still going on, updates the same incident; one whose
campaign has been quiet for its closing time is closed by the first round, and one that
cannot be carried on (no campaign signature in its evidence) is closed at once.

The end of each round also refreshes the tenants' campaign settings for the campaign
detector (``detectors.campaign_tuning``), so that a change made through the API is in force
within a round or two.  Failures to store an incident or record its alert are logged,
never raised: the blocks stand either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from detectors.actions import ActionResult
from detectors.campaign_tuning import CampaignTuningReader
from detectors.campaigns import (
    DETECTOR,
    FAMILIES,
    PRESSED,
    Campaign,
    CampaignChange,
    Shape,
    Signature,
)
from detectors.incident_store import CLOSED, MAX_MEMBERS, OPEN, Incident, IncidentStore, Member
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
from stream.incidents import (
    IncidentEvent,
    IncidentMember,
    IncidentOutbox,
    IncidentUnavailable,
    new_incident_event,
)

log = logging.getLogger("ratewatch.detect")

ACTED = ("blocked", "shadowed")
MAX_ALERT_MEMBERS = 100  # members an alert names (the incident lists more)
SCOPES = ("user_id", "key")  # what a pressed account is named by (``detectors.identities``)
MAX_UNRECORDED = 1000  # incident changes kept for the outbox while it does not take them


class Actions(Protocol):
    async def apply(self, verdict: Verdict) -> ActionResult: ...


class CampaignChanges(Protocol):
    def take_changes(self) -> list[CampaignChange]: ...

    def resume(self, campaign: Campaign) -> bool: ...


class IncidentActions:
    def __init__(
        self,
        actions: Actions,
        campaigns: CampaignChanges,
        store: IncidentStore,
        alerts: AlertOutbox,
        history: IncidentOutbox,
        tuning: CampaignTuningReader | None = None,
    ):
        self._actions = actions
        self._campaigns = campaigns
        self._store = store
        self._alerts = alerts
        self._history = history
        self._tuning = tuning
        self._outcomes: dict[tuple[str, str], ActionResult] = {}  # (incident, ip) → result
        self._open: dict[str, Incident] = {}
        self._unrecorded: list[IncidentEvent] = []

    async def resume(self) -> int:
        """Carry on the incidents a previous detector left open (see the module's
        docstring); the number carried on.  StoreUnavailable if Redis did not answer."""
        resumed = 0
        for tenant, incident in await self._store.open_incidents():
            if incident.id in self._open:
                continue
            campaign = campaign_of(tenant, incident)
            if campaign is not None and self._campaigns.resume(campaign):
                self._open[incident.id] = incident
                resumed += 1
                continue
            now = round(time.time(), 3)
            incident.state, incident.closed_at, incident.updated_at = CLOSED, now, now
            await self._store.save(tenant, incident)
            await self._record(tenant, INCIDENT_CLOSED, incident, ())
            await self._alert(tenant, INCIDENT_CLOSED, incident, ())
        await self._refresh_tuning()
        if resumed:
            log.info("carrying on %d open incidents", resumed)
        return resumed

    async def apply(self, verdict: Verdict) -> ActionResult:
        result = await self._actions.apply(verdict)
        if verdict.campaign is not None:
            self._outcomes[(verdict.campaign.incident_id, verdict.subject)] = result
        return result

    async def round_ended(self) -> None:
        """Bring the incidents of the campaigns the round changed up to date, record and
        alert; then read the tenants' campaign settings for the next round."""
        await self._record_again()
        for change in self._campaigns.take_changes():
            try:
                await self._follow(change)
            except StoreUnavailable:
                log.warning("incident %s not stored", change.campaign.id, exc_info=True)
        # outcomes of campaigns that made no change (already reported) are not needed
        self._outcomes.clear()
        await self._refresh_tuning()

    async def _refresh_tuning(self) -> None:
        if self._tuning is None:
            return
        try:
            await self._tuning.refresh()
        except StoreUnavailable:
            log.warning("campaign settings not read: the last ones stay", exc_info=True)

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
            await self._record(campaign.signature.tenant, INCIDENT_CLOSED, incident, ())
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
        await self._record(campaign.signature.tenant, kind, incident, joined)
        if acted:
            await self._alert(campaign.signature.tenant, kind, incident, joined)

    async def _record(
        self, tenant: str, kind: str, incident: Incident, joined: Iterable[Member]
    ) -> None:
        """The change in the incident outbox, or kept to be recorded at the next round."""
        event = incident_event(tenant, kind, incident, joined)
        if self._unrecorded:  # in order: the earlier changes first
            self._keep(event)
            return
        try:
            await self._history.record(event)
        except IncidentUnavailable:
            log.warning("%s of incident %s not recorded yet", kind, incident.id)
            self._keep(event)

    def _keep(self, event: IncidentEvent) -> None:
        if len(self._unrecorded) >= MAX_UNRECORDED:
            lost = self._unrecorded.pop(0)
            log.error("%s of incident %s lost: too many unrecorded", lost.kind, lost.incident_id)
        self._unrecorded.append(event)

    async def _record_again(self) -> None:
        while self._unrecorded:
            try:
                await self._history.record(self._unrecorded[0])
            except IncidentUnavailable:
                return
            self._unrecorded.pop(0)

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


def campaign_of(tenant: str, incident: Incident) -> Campaign | None:
    """The campaign ``incident`` groups, as the campaign detector knew it when the incident
    was last stored; None if its evidence does not name the campaign's signature (for a
    pressed account's, the account too)."""
    evidence = incident.evidence
    template, behaviour, agents = (
        evidence.get("route_template"),
        evidence.get("behaviour"),
        evidence.get("user_agent_kind"),
    )
    if not isinstance(template, str) or agents not in ("browser", "tool"):
        return None
    shapes: dict[object, Shape] = {shape: shape for shape in FAMILIES}
    shape = shapes.get(behaviour)
    if shape is None:
        return None
    target = ""
    if shape in PRESSED:  # a pressed account's: the account is what its members share
        named = evidence.get("target")
        if not isinstance(named, dict) or named.get("scope") not in SCOPES:
            return None
        value = named.get("value")
        if not isinstance(value, str) or not value:
            return None
        target = value
    first, last = int(incident.first_seen * 1000), int(incident.last_seen * 1000)
    return Campaign(
        incident.id,
        Signature(tenant, template, shape, str(agents), target=target),
        opened_ms=int(incident.opened_at * 1000),
        onset_ms=first,
        members={m.ip: int(m.joined_at * 1000) for m in incident.members},
        first_seen_ms=first,
        last_seen_ms=last,
        evidence=dict(evidence),
        reasons=tuple(incident.reasons),
        version=incident.detector_version,
    )


def incident_event(
    tenant: str, kind: str, incident: Incident, joined: Iterable[Member]
) -> IncidentEvent:
    """The incident after a change of ``kind``, as the incident outbox records it."""

    def ms(seconds: float) -> int:
        return round(seconds * 1000)

    return new_incident_event(
        tenant,
        kind,
        incident_id=incident.id,
        family=incident.family,
        state=incident.state,
        mode=incident.mode,
        detector=incident.detector,
        detector_version=incident.detector_version,
        opened_at=ms(incident.opened_at),
        first_seen=ms(incident.first_seen),
        last_seen=ms(incident.last_seen),
        closed_at=ms(incident.closed_at) if incident.closed_at is not None else None,
        reasons=incident.reasons,
        evidence=incident.evidence,
        counts=incident.counts,
        members=[
            IncidentMember(m.ip, m.outcome, ms(m.joined_at), m.block_id)
            for m in incident.members[:MAX_MEMBERS]
        ],
        joined=[m.ip for m in joined],
    )


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
