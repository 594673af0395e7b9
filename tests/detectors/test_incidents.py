"""Incidents against the session's real Redis: a campaign's verdicts become blocks that
carry the incident, one incident record, and one alert per change of the incident."""

from __future__ import annotations

import time
from typing import cast

import pytest
from redis.asyncio import Redis

from detectors.actions import BlockActions
from detectors.campaigns import CampaignChange, CampaignDetector, CampaignSettings
from detectors.incident_store import MAX_INCIDENTS, Incident, IncidentStore
from detectors.incidents import IncidentActions
from detectors.offenders import OffenderHistory
from limiter.errors import NotFound
from limiter.keyspace import Keyspace
from limiter.state.allowlist import Allowlist
from limiter.state.blocks import BlockStore
from limiter.state.tenants import DetectionMode, TenantSettingsStore
from stream import alerts as alert_contract
from stream.alerts import AlertEvent, AlertOutbox
from stream.audit_outbox import AuditOutbox
from tests.detectors.test_campaigns import T0, frame, run, stuffers

pytestmark = pytest.mark.timeout(60)
KS = Keyspace()


class Changes:
    """The campaign detector's changes, handed over as ``CoordinatedDetector`` does."""

    def __init__(self) -> None:
        self.pending: list[CampaignChange] = []

    def take_changes(self) -> list[CampaignChange]:
        changes, self.pending = self.pending, []
        return changes


async def alerts_of(redis: Redis, stream: str) -> list[AlertEvent]:
    found = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
    return [alert_contract.decode(fields[b"e"]) for _, fields in found]


def rig(redis: Redis, tenant: str) -> tuple[IncidentActions, Changes, IncidentStore, str]:
    alerts = AlertOutbox(redis, f"test:alerts:{tenant}")
    blocks = BlockActions(
        BlockStore(redis, KS),
        Allowlist(redis, KS),
        TenantSettingsStore(redis, KS),
        OffenderHistory(redis, KS),
        AuditOutbox(redis, f"test:audit:{tenant}"),
        alerts,
    )
    changes, store = Changes(), IncidentStore(redis, KS)
    return IncidentActions(blocks, changes, store, alerts), changes, store, alerts.stream


def campaign_rows(tenant: str, count: int = 12) -> list[dict[str, object]]:
    return [{**row, "tenant": tenant} for row in stuffers(count)]


async def test_a_campaign_is_one_incident_with_one_alert_per_change(
    redis: Redis, tenant: str
) -> None:
    actions, changes, store, stream = rig(redis, tenant)
    detector = CampaignDetector(CampaignSettings(close_after_ms=30_000))
    data = frame(campaign_rows(tenant))
    rounds = 0
    for now in range(5_000, 60_001, 5_000):
        detector.book.observe(
            data.filter((data["ts"] > T0 + now - 5_000) & (data["ts"] <= T0 + now))
        )
        verdicts, changed = detector.evaluate(T0 + now)
        changes.pending += changed
        for verdict in verdicts:
            await actions.apply(verdict)
        await actions.round_ended()
        rounds += bool(changed)

    [incident] = await store.incidents(tenant)
    assert incident.state == "open"
    assert incident.family == "credential-stuffing"
    assert incident.counts["members"] == incident.counts["blocked"] == 12
    assert {m.ip for m in incident.members} == {f"203.0.113.{n}" for n in range(1, 13)}
    assert incident.evidence["route_template"] == "/auth/sign-in"
    assert incident.reasons
    assert incident.first_seen <= incident.last_seen

    # every member's block names the incident and carries the campaign's explanation
    blocks = {b.value: b for b in await BlockStore(redis, KS).active(tenant)}
    for member in incident.members:
        block = blocks[member.ip]
        assert block.id == member.block_id
        assert block.incident_id == incident.id
        assert block.detector == "campaign"
        assert block.explanation is not None
        assert block.explanation["incident_id"] == incident.id
        assert block.explanation["campaign"]["route_template"] == "/auth/sign-in"

    alerts = await alerts_of(redis, stream)
    per_block = [a for a in alerts if a.kind == "block.created"]
    assert len(per_block) == 12
    assert {a.explanation["incident_id"] for a in per_block} == {incident.id}
    told = [a for a in alerts if a.scope == "incident"]
    assert [a.kind for a in told] == ["incident.opened"] + ["incident.updated"] * (rounds - 1)
    assert {a.subject for a in told} == {incident.id}
    assert told[0].explanation["family"] == "credential-stuffing"

    # quiet for the closing time: closed, once
    for now in range(65_000, 120_001, 5_000):
        changes.pending += detector.evaluate(T0 + now)[1]
        await actions.round_ended()
    closed = await store.get(tenant, incident.id)
    assert closed.state == "closed"
    assert closed.closed_at is not None
    kinds = [a.kind for a in await alerts_of(redis, stream) if a.scope == "incident"]
    assert kinds.count("incident.closed") == 1
    assert kinds[-1] == "incident.closed"


async def test_no_incident_while_detection_is_off(redis: Redis, tenant: str) -> None:
    await TenantSettingsStore(redis, KS).set_detection_mode(tenant, DetectionMode.OFF)
    actions, changes, store, stream = rig(redis, tenant)
    detector = CampaignDetector()
    verdicts, changed = run(detector, campaign_rows(tenant), 60_000)
    changes.pending += changed
    for verdict in verdicts:
        await actions.apply(verdict)
    await actions.round_ended()
    assert verdicts
    assert await store.incidents(tenant) == []
    assert await alerts_of(redis, stream) == []


async def test_the_store_is_bounded_and_tenant_scoped(redis: Redis, tenant: str) -> None:
    store = IncidentStore(redis, KS)
    now = time.time()
    for n in range(MAX_INCIDENTS + 5):
        incident = Incident(f"inc_{n:04d}", "scraping", "open", "enforce", now, now + n, now, now)
        await store.save(tenant, incident)
    kept = await store.incidents(tenant)
    assert len(kept) == MAX_INCIDENTS
    assert "inc_0000" not in {i.id for i in kept}
    assert await redis.ttl(KS.incidents(tenant)) > 0
    with pytest.raises(NotFound):
        await store.get(tenant + "-other", kept[0].id)
