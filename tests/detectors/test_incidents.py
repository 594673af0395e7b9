"""Incidents against the session's real Redis: a campaign's verdicts become blocks that
carry the incident, one incident record, one alert and one history event per change of the
incident; a restarted detector carries on the incidents left open."""

from __future__ import annotations

import json
import secrets
import time
from typing import cast

import pytest
from redis.asyncio import Redis

from detectors.actions import BlockActions
from detectors.campaign_tuning import CampaignTuningReader
from detectors.campaigns import Campaign, CampaignChange, CampaignDetector, CampaignSettings
from detectors.incident_store import (
    ERASED_REASON,
    MAX_INCIDENTS,
    Incident,
    IncidentStore,
    Member,
)
from detectors.incidents import IncidentActions
from detectors.offenders import OffenderHistory
from detectors.runner import DetectionLoop
from detectors.service import build_detection
from limiter.errors import NotFound
from limiter.keyspace import Keyspace
from limiter.state.allowlist import Allowlist
from limiter.state.blocks import BlockStore
from limiter.state.tenants import DetectionMode, TenantSettingsStore
from stream import alerts as alert_contract
from stream.alerts import AlertEvent, AlertOutbox
from stream.audit_outbox import AuditOutbox
from stream.incidents import IncidentEvent, IncidentOutbox
from stream.incidents import decode as decode_incident
from tests.support.coordinated_traffic import brute_force, people, run_campaigns, stuffers
from tests.support.decision_frames import T0, rounds, row
from tests.support.events import decision

pytestmark = pytest.mark.timeout(60)
KS = Keyspace()


class Changes:
    """The campaign detector's changes, handed over as ``CoordinatedDetector`` does."""

    def __init__(self, detector: CampaignDetector | None = None) -> None:
        self.pending: list[CampaignChange] = []
        self.detector = detector if detector is not None else CampaignDetector()

    def take_changes(self) -> list[CampaignChange]:
        changes, self.pending = self.pending, []
        return changes

    def resume(self, campaign: Campaign) -> bool:
        return self.detector.resume(campaign)


async def alerts_of(redis: Redis, stream: str) -> list[AlertEvent]:
    found = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
    return [alert_contract.decode(fields[b"e"]) for _, fields in found]


async def history_of(redis: Redis, tenant: str, stream: str = "") -> list[IncidentEvent]:
    """The tenant's incident history (the test outbox's, or ``stream``: a service's)."""
    found = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream or history(tenant))
    )
    return [decode_incident(fields[b"e"]) for _, fields in found]


def history(tenant: str) -> str:
    return f"test:incident-log:{tenant}"


def rig(
    redis: Redis, tenant: str, detector: CampaignDetector | None = None, ks: Keyspace = KS
) -> tuple[IncidentActions, Changes, IncidentStore, str]:
    """The actions of a detector (a fresh one each call: a restart) on the shared Redis;
    tests that restart one give it a keyspace of their own, as a restarted detector carries
    on the open incidents of every tenant in its keyspace."""
    alerts = AlertOutbox(redis, f"test:alerts:{tenant}")
    settings = TenantSettingsStore(redis, ks)
    blocks = BlockActions(
        BlockStore(redis, ks),
        Allowlist(redis, ks),
        settings,
        OffenderHistory(redis, ks),
        AuditOutbox(redis, f"test:audit:{tenant}"),
        alerts,
    )
    changes, store = Changes(detector), IncidentStore(redis, ks)
    actions = IncidentActions(
        blocks,
        changes,
        store,
        alerts,
        IncidentOutbox(redis, history(tenant)),
        CampaignTuningReader(settings, changes.detector),
    )
    return actions, changes, store, alerts.stream


async def play(
    actions: IncidentActions, changes: Changes, rows: list[dict[str, object]], start: int, end: int
) -> int:
    """Feed ``rows`` of (start, end] in 5 s rounds, as the detection loop does; the number of
    rounds that changed a campaign."""
    detector, changing_rounds = changes.detector, 0
    for now, chunk in rounds(rows, end, 5_000, start_ms=start):
        detector.book.observe(chunk)
        verdicts, changed = detector.evaluate(now)
        changes.pending += changed
        for verdict in verdicts:
            await actions.apply(verdict)
        await actions.round_ended()
        changing_rounds += bool(changed)
    return changing_rounds


def campaign_rows(tenant: str, count: int = 12) -> list[dict[str, object]]:
    return [{**row, "tenant": tenant} for row in stuffers(count)]


async def test_a_campaign_is_one_incident_with_one_alert_per_change(
    redis: Redis, tenant: str
) -> None:
    detector = CampaignDetector(CampaignSettings(close_after_ms=30_000))
    actions, changes, store, stream = rig(redis, tenant, detector)
    rounds = await play(actions, changes, campaign_rows(tenant), 0, 60_000)

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

    # the history: one event per change, each the incident as it was after it
    events = await history_of(redis, tenant)
    assert [e.kind for e in events] == [a.kind for a in told] + ["incident.closed"]
    assert {e.incident_id for e in events} == {incident.id}
    assert [e.counts["members"] for e in events] == sorted(e.counts["members"] for e in events)
    last = events[-1]
    assert (last.state, last.family, last.counts["blocked"]) == ("closed", incident.family, 12)
    assert {m.ip for m in last.members} == {m.ip for m in incident.members}
    assert sum(len(e.joined) for e in events) == 12
    assert last.closed_at == round(closed.closed_at * 1000)
    assert last.evidence["route_template"] == "/auth/sign-in"


async def test_no_incident_while_detection_is_off(redis: Redis, tenant: str) -> None:
    await TenantSettingsStore(redis, KS).set_detection_mode(tenant, DetectionMode.OFF)
    actions, changes, store, stream = rig(redis, tenant)
    detector = CampaignDetector()
    verdicts, changed = run_campaigns(detector, campaign_rows(tenant), 60_000)
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


async def test_a_restarted_detector_carries_on_the_open_incident(redis: Redis, tenant: str) -> None:
    """Half the campaign before the restart, the other half after it, from new addresses
    and the old ones: the same incident, updated once more, never opened again."""
    early = campaign_rows(tenant, 12)
    late = [
        {**row, "tenant": tenant}
        for row in stuffers(10, onset_ms=70_000, until_ms=130_000, prefix="198.51.100")
    ]
    ks = Keyspace(prefix="rwi" + secrets.token_hex(5))
    before, changes, store, _ = rig(redis, tenant, ks=ks)
    await play(before, changes, early, 0, 60_000)
    [opened] = await store.incidents(tenant)
    told = len(await history_of(redis, tenant))

    after, changes, store, stream = rig(redis, tenant, ks=ks)  # a new detector, same Redis
    assert await after.resume() == 1
    [carried] = changes.detector.campaigns
    assert (carried.id, set(carried.members)) == (opened.id, {m.ip for m in opened.members})
    alerts_before = len(await alerts_of(redis, stream))
    late_rows = late + [row for row in early if int(str(row["ts"])) > T0 + 60_000]
    rounds = await play(after, changes, late_rows, 60_000, 130_000)
    assert rounds >= 1

    [incident] = await store.incidents(tenant)
    assert incident.id == opened.id
    assert incident.state == "open"
    assert incident.counts["members"] == 22
    assert {m.ip for m in incident.members} >= {m.ip for m in opened.members}
    assert incident.opened_at == opened.opened_at
    told_after = [
        a.kind for a in (await alerts_of(redis, stream))[alerts_before:] if a.scope == "incident"
    ]
    assert told_after == ["incident.updated"] * rounds
    assert "incident.opened" not in told_after
    events = (await history_of(redis, tenant))[told:]
    assert [e.kind for e in events] == ["incident.updated"] * rounds
    assert {e.incident_id for e in events} == {opened.id}


async def test_a_restarted_detector_closes_the_incidents_whose_members_are_gone(
    redis: Redis, tenant: str
) -> None:
    ks = Keyspace(prefix="rwi" + secrets.token_hex(5))
    store = IncidentStore(redis, ks)
    now = time.time()
    evidence = {"route_template": "/auth/sign-in", "behaviour": "rotating"}
    quiet = Incident(
        "inc_quiet", "credential-stuffing", "open", "enforce", now - 900, now - 600,
        now - 900, now - 600, evidence={**evidence, "user_agent_kind": "tool"},
        members=[Member("203.0.113.9", "blocked", now - 900, "blk_1")],
    )  # fmt: skip
    unknown = Incident(
        "inc_unknown", "scraping", "open", "enforce", now, now, now, now, evidence={}
    )
    for incident in (quiet, unknown):
        await store.save(tenant, incident)

    actions, changes, store, stream = rig(
        redis, tenant, CampaignDetector(CampaignSettings(close_after_ms=300_000)), ks
    )
    assert await actions.resume() == 1
    # one with nothing to carry it on is closed at once; the quiet one by the first round
    assert (await store.get(tenant, "inc_unknown")).state == "closed"
    changes.pending += changes.detector.evaluate(int(now * 1000))[1]
    await actions.round_ended()
    closed = await store.get(tenant, "inc_quiet")
    assert closed.state == "closed"
    assert closed.closed_at is not None
    assert [(e.incident_id, e.kind) for e in await history_of(redis, tenant)] == [
        ("inc_unknown", "incident.closed"),
        ("inc_quiet", "incident.closed"),
    ]
    told = [(a.subject, a.kind) for a in await alerts_of(redis, stream)]
    assert told == [("inc_unknown", "incident.closed"), ("inc_quiet", "incident.closed")]
    # nothing is left to carry on
    assert await rig(redis, tenant, ks=ks)[0].resume() == 0
    assert await redis.smembers(ks.incident_tenants) == {tenant.encode()}


async def test_a_tenants_campaign_settings_reach_the_detector_within_a_round(
    redis: Redis, tenant: str
) -> None:
    """Stored as the API stores them, read at the end of a round, used in the next."""
    settings = TenantSettingsStore(redis, KS)
    actions, changes, store, _ = rig(redis, tenant)
    await settings.set_campaigns(tenant, {"campaign_min_members": 20})
    seen = {**row(T0 + 1_000, "192.0.2.200", route="/home", key="k"), "tenant": tenant}
    await play(actions, changes, [seen], 0, 5_000)  # the tenant is seen: its settings read
    assert changes.detector.tuning(tenant).min_members == 20
    rows = campaign_rows(tenant, 12)
    await play(actions, changes, rows, 0, 60_000)
    assert await store.incidents(tenant) == []  # 12 < 20: no campaign

    await settings.set_campaigns(tenant, {"campaign_min_members": None})
    await play(actions, changes, rows, 60_000, 65_000)
    assert changes.detector.tuning(tenant).min_members is None
    shifted = [{**row, "ts": int(str(row["ts"])) + 65_000} for row in rows]
    await play(actions, changes, shifted, 65_000, 125_000)
    [incident] = await store.incidents(tenant)
    assert incident.state == "open"

    # off: the open campaign ends at the next round, its incident closes
    await settings.set_campaigns(tenant, {"campaign_detection": False})
    await play(actions, changes, [], 125_000, 135_000)
    assert (await store.get(tenant, incident.id)).state == "closed"
    assert changes.detector.campaigns == []


async def test_the_detection_service_restarted_on_the_same_redis_updates_the_same_incident(
    redis: Redis, tenant: str
) -> None:
    """``build_detection`` as the pipeline worker and ``ratewatch detect`` wire it (both
    detectors, the actions, the outboxes), fed decision events; then a second one, as after
    a restart, resumed before its first round."""
    ks = Keyspace(prefix="rwi" + secrets.token_hex(5))
    early = campaign_rows(tenant, 12)
    late = [
        {**row, "tenant": tenant}
        for row in stuffers(10, onset_ms=70_000, until_ms=130_000, prefix="198.51.100")
    ]

    async def feed(
        loop: DetectionLoop, rows: list[dict[str, object]], start: int, end: int
    ) -> None:
        for now in range(start + 5_000, end + 1, 5_000):
            loop.observe(
                [
                    decision(**row)
                    for row in rows
                    if T0 + now - 5_000 < int(str(row["ts"])) <= T0 + now
                ]
            )
            await loop.evaluate_once(T0 + now)

    first = build_detection(redis, ks, None, 2.0)
    await first.resume()
    await feed(first, early, 0, 60_000)
    await first.close()
    [opened] = await IncidentStore(redis, ks).incidents(tenant)

    second = build_detection(redis, ks, None, 2.0)  # the restart
    await second.resume()
    await feed(
        second, late + [r for r in early if int(str(r["ts"])) > T0 + 60_000], 60_000, 130_000
    )
    await second.close()

    [incident] = await IncidentStore(redis, ks).incidents(tenant)
    assert (incident.id, incident.state) == (opened.id, "open")
    assert incident.counts["members"] == 22
    told = [a.kind for a in await alerts_of(redis, ks.alerts) if a.scope == "incident"]
    assert told[0] == "incident.opened"
    assert told.count("incident.opened") == 1
    assert "incident.updated" in told
    found = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(ks.incident_log))
    history = [decode_incident(fields[b"e"]) for _, fields in found]
    assert [e.kind for e in history] == told
    assert {e.incident_id for e in history} == {opened.id}


async def test_a_restarted_detector_carries_on_a_pressed_accounts_incident(
    redis: Redis, tenant: str
) -> None:
    """A brute force on one account (``detectors.targets``) going on through a restart of
    the detection service, and twice as many new addresses joining it after: the same
    incident, updated, never opened again (without its account the restarted detector
    would judge the newcomers against the attack's own addresses, and found another)."""
    ks = Keyspace(prefix="rwi" + secrets.token_hex(5))
    attack = brute_force(6, until_ms=300_000) + people(40, until_ms=300_000)
    wave = []  # from addresses of their own, 192.0.2.1-14
    for r in brute_force(14, onset_ms=230_000, until_ms=300_000):
        ip = "192.0.2." + str(r["ip"]).rsplit(".", 1)[1]
        wave.append(r | {"ip": ip, "key": f"ip:{ip}"})
    rows = [{**r, "tenant": tenant} for r in attack + wave]

    async def feed(loop: DetectionLoop, start: int, end: int) -> None:
        for now in range(start + 5_000, end + 1, 5_000):
            loop.observe(
                [decision(**r) for r in rows if T0 + now - 5_000 < int(str(r["ts"])) <= T0 + now]
            )
            await loop.evaluate_once(T0 + now)

    first = build_detection(redis, ks, None, 2.0)
    await first.resume()
    await feed(first, 0, 150_000)
    await first.close()
    [opened] = await IncidentStore(redis, ks).incidents(tenant)
    assert (opened.family, opened.state) == ("brute-force", "open")
    assert opened.evidence["target"] == {"scope": "user_id", "value": "alice"}
    assert {m.ip for m in opened.members} == {f"203.0.113.{n}" for n in range(1, 7)}
    told = len(await history_of(redis, tenant, ks.incident_log))

    second = build_detection(redis, ks, None, 2.0)  # the restart
    await second.resume()
    await feed(second, 150_000, 300_000)
    await second.close()

    [incident] = await IncidentStore(redis, ks).incidents(tenant)
    assert (incident.id, incident.state, incident.family) == (opened.id, "open", "brute-force")
    assert {m.ip for m in incident.members} == {m.ip for m in opened.members} | {
        f"192.0.2.{n}" for n in range(1, 15)
    }
    assert incident.opened_at == opened.opened_at
    assert incident.evidence["target"] == {"scope": "user_id", "value": "alice"}
    kinds = [a.kind for a in await alerts_of(redis, ks.alerts) if a.scope == "incident"]
    assert kinds.count("incident.opened") == 1
    events = (await history_of(redis, tenant, ks.incident_log))[told:]
    assert events
    assert {(e.incident_id, e.kind) for e in events} == {(opened.id, "incident.updated")}


def pressing(incident_id: str, scope: str, value: str, now: float) -> Incident:
    """A targeted-account incident as ``detectors/targets.py`` describes one."""
    return Incident(
        incident_id,
        "brute-force",
        "open",
        "enforce",
        now,
        now,
        now,
        now,
        detector="target",
        reasons=[f"coordinated brute force on one account: 3 addresses new to {scope} {value!r}"],
        evidence={"target": {"scope": scope, "value": value}, "route_template": "/v1/login"},
        counts={"members": 1, "blocked": 1},
        members=[Member("203.0.113.7", "blocked", now, "blk_1")],
    )


async def test_an_erased_users_incidents_are_kept_without_naming_them(
    redis: Redis, tenant: str
) -> None:
    store = IncidentStore(redis, KS)
    now = time.time()
    named = [
        pressing("inc_a", "user_id", "user:1", now),
        pressing("inc_b", "key", "user:1:login", now),
    ]
    spared = [
        pressing("inc_c", "key", "user:12", now),  # only looks like user:1's
        pressing("inc_d", "user_id", "user:1:login", now),  # a user id, not user:1's key
        Incident("inc_e", "scraping", "open", "enforce", now, now, now, now),  # no account
    ]
    for incident in named + spared:
        await store.save(tenant, incident)
    await store.save(tenant + "-other", named[0])
    assert [i.id for i in await store.naming(tenant, "user:1")] == ["inc_a", "inc_b"]

    assert await store.redact_user(tenant, "user:1") == 2

    for before in named:
        after = await store.get(tenant, before.id)
        assert "target" not in after.evidence
        assert after.evidence["route_template"] == "/v1/login"
        assert after.reasons == [
            before.reasons[0].replace(repr(before.evidence["target"]["value"]), "[erased]")
        ]
        assert "user:1" not in json.dumps(after.public())
        assert (after.members, after.counts, after.state) == (before.members, before.counts, "open")
    for before in spared:
        assert await store.get(tenant, before.id) == before
    assert await store.get(tenant + "-other", "inc_a") == named[0]
    assert await store.naming(tenant, "user:1") == []
    assert await store.redact_user(tenant, "user:1") == 0


async def test_a_reason_that_names_the_user_otherwise_is_replaced_whole(
    redis: Redis, tenant: str
) -> None:
    store = IncidentStore(redis, KS)
    incident = pressing("inc_a", "user_id", "u", time.time())
    incident.reasons = ["account u, pressed", "3 addresses"]
    await store.save(tenant, incident)

    assert await store.redact_user(tenant, "u") == 1

    assert (await store.get(tenant, "inc_a")).reasons == [ERASED_REASON, "3 addresses"]
