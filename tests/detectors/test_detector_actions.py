"""The actions of abuse detection, against the session's real Redis: blocks the check script
enforces, shadow mode, the allowlist, escalation, the cap, audit entries and alerts."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
from dataclasses import dataclass
from typing import cast

import pytest
from redis.asyncio import Redis

from detectors.actions import BlockActions
from detectors.offenders import OffenderHistory, escalated_ttl
from detectors.verdict import CampaignRef, Scope, Signal, Verdict
from limiter.algorithms import Algorithm, Reason
from limiter.errors import ConfigError, InvalidInput, NotFound
from limiter.keyspace import Keyspace
from limiter.state.allowlist import Allowlist
from limiter.state.blocks import BlockStore
from limiter.state.tenants import (
    CampaignTuning,
    DetectionMode,
    DetectionSettings,
    FailMode,
    TenantSettingsStore,
)
from limiter.store.base import Check
from limiter.store.redis import RedisStore
from stream import alerts as alert_contract
from stream import audit as audit_contract
from stream.alerts import AlertEvent, AlertOutbox, AlertUnavailable, MalformedAlertEvent
from stream.audit import AuditEvent
from stream.audit_outbox import AuditOutbox, AuditUnavailable
from tests.support.polling import eventually_awaited
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(30)

KS = Keyspace()
IP = "192.0.2.10"


@dataclass
class Rig:
    redis: Redis
    tenant: str
    blocks: BlockStore
    allowlist: Allowlist
    settings: TenantSettingsStore
    offenders: OffenderHistory
    audit: AuditOutbox
    alerts: AlertOutbox

    def actions(self, base_ttl: int = 900, max_ttl: int = 86400) -> BlockActions:
        return BlockActions(
            self.blocks,
            self.allowlist,
            self.settings,
            self.offenders,
            self.audit,
            self.alerts,
            base_ttl=base_ttl,
            max_ttl=max_ttl,
        )

    async def audit_events(self) -> list[AuditEvent]:
        return [audit_contract.decode(e) for e in await entries(self.redis, self.audit.stream)]

    async def alert_events(self) -> list[AlertEvent]:
        return [alert_contract.decode(e) for e in await entries(self.redis, self.alerts.stream)]

    async def check(self, ip: str = IP, user_id: str | None = None) -> Reason:
        """The check script's decision for a request from ``ip``."""
        store = RedisStore(self.redis, KS)
        check = Check(
            self.tenant, "api", Algorithm.FIXED_WINDOW, 1000, 60_000, 1, ip=ip, user_id=user_id
        )
        [outcome] = await store.decide([check])
        return outcome.reason


async def entries(redis: Redis, stream: str) -> list[bytes]:
    """The field ``e`` of each entry of an outbox stream."""
    found = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(stream))
    return [fields[b"e"] for _, fields in found]


@pytest.fixture
def rig(redis: Redis, tenant: str) -> Rig:
    # outboxes of their own per test, so a test reads only its own entries
    return Rig(
        redis,
        tenant,
        BlockStore(redis, KS),
        Allowlist(redis, KS),
        TenantSettingsStore(redis, KS),
        OffenderHistory(redis, KS),
        AuditOutbox(redis, f"test:audit:{tenant}"),
        AlertOutbox(redis, f"test:alerts:{tenant}"),
    )


def verdict(
    tenant: str,
    subject: str = IP,
    scope: Scope = "ip",
    score: float = 0.93,
    *,
    ips: tuple[str, ...] = (),
    ips_truncated: bool = False,
    ipless: bool = False,
) -> Verdict:
    return Verdict(
        tenant=tenant,
        scope=scope,
        subject=subject,
        score=score,
        threshold=0.8,
        detector="baseline",
        detector_version="baseline-1.2.0",
        window_seconds=60,
        observed_at_ms=1_700_000_000_000,
        reasons=("900 checks/min (baseline 3)", "40 distinct keys (baseline 2)"),
        signals=(
            Signal("checks_per_min", 900.0, 3.0, 0.7),
            Signal("distinct_keys", 40.0, 2.0, 0.3),
        ),
        ips=ips,
        ips_truncated=ips_truncated,
        ipless=ipless,
    )


async def test_a_warranted_verdict_blocks_and_the_check_script_denies(rig: Rig) -> None:
    assert await rig.check() is Reason.OK
    result = await rig.actions().apply(verdict(rig.tenant))
    assert (result.outcome, result.ttl_seconds, result.offence) == ("blocked", 900, 1)
    assert await rig.check() is Reason.BLOCKED
    assert await rig.check(ip="192.0.2.11") is Reason.OK

    [block] = await rig.blocks.active(rig.tenant)
    assert (block.id, block.scope, block.value, block.mode) == (
        result.block_id,
        "ip",
        IP,
        "enforce",
    )
    assert (block.source, block.detector, block.score) == ("detector", "baseline", 0.93)
    assert block.reason == "900 checks/min (baseline 3)"
    assert 899 <= block.expires_at - block.created_at <= 900
    assert block.explanation is not None
    assert block.explanation["detector_version"] == "baseline-1.2.0"
    assert (block.explanation["offence"], block.explanation["ttl_seconds"]) == (1, 900)
    assert block.explanation["signals"][0] == {
        "feature": "checks_per_min",
        "value": 900.0,
        "baseline": 3.0,
        "weight": 0.7,
    }

    [entry] = await rig.audit_events()
    assert (entry.tenant, entry.actor, entry.action, entry.target) == (
        rig.tenant,
        "detector:baseline",
        audit_contract.BLOCK_CREATED,
        block.id,
    )
    assert entry.details["scope"] == "ip"
    assert entry.details["value"] == IP
    assert (entry.details["ttl"], entry.details["mode"], entry.details["offence"]) == (
        900,
        "enforce",
        1,
    )
    assert entry.details["detector_version"] == "baseline-1.2.0"
    assert entry.details["score"] == 0.93

    [alert] = await rig.alert_events()
    assert (alert.kind, alert.tenant, alert.scope, alert.subject) == (
        alert_contract.BLOCK_CREATED,
        rig.tenant,
        "ip",
        IP,
    )
    assert (alert.block_id, alert.mode, alert.ttl_seconds, alert.offence) == (
        block.id,
        "enforce",
        900,
        1,
    )
    assert alert.explanation == verdict(rig.tenant).explanation()


async def test_an_ip_spelled_otherwise_is_blocked_in_canonical_form(rig: Rig) -> None:
    result = await rig.actions().apply(verdict(rig.tenant, subject="::ffff:192.0.2.10"))
    assert result.outcome == "blocked"
    assert [block.value for block in await rig.blocks.active(rig.tenant)] == [IP]
    assert await rig.check() is Reason.BLOCKED


async def test_an_allowlisted_subject_is_never_blocked(rig: Rig) -> None:
    await rig.allowlist.add(rig.tenant, "ip", IP, note="office NAT")
    await rig.allowlist.add(rig.tenant, "ip", "198.51.100.0/24", note="partner")
    await rig.allowlist.add(rig.tenant, "ip", "::ffff:203.0.113.0/120")
    await rig.allowlist.add(rig.tenant, "user_id", "u-monitoring")
    actions = rig.actions()
    subjects: list[tuple[Scope, str]] = [
        ("ip", IP),
        ("ip", "198.51.100.77"),
        ("ip", "203.0.113.9"),
        ("user_id", "u-monitoring"),
    ]
    for scope, subject in subjects:
        for _ in range(2):
            result = await actions.apply(verdict(rig.tenant, subject, scope))
            assert result.outcome == "allowlisted", subject
    assert await rig.blocks.active(rig.tenant) == []
    assert await rig.check() is Reason.OK
    assert await rig.check(ip="198.51.100.77", user_id="u-monitoring") is Reason.OK
    assert await rig.audit_events() == []
    assert await rig.alert_events() == []
    assert await rig.offenders.offences(rig.tenant, "ip", IP) == 0
    # just outside the network: blocked
    assert (await actions.apply(verdict(rig.tenant, "198.51.101.1"))).outcome == "blocked"


OFFICE = ("10.20.0.7", "10.20.255.1", "::ffff:10.20.3.4", "2001:db8::5", IP)


async def test_a_key_used_only_from_allowlisted_networks_is_never_blocked(rig: Rig) -> None:
    await rig.allowlist.add(rig.tenant, "ip", "10.20.0.0/16", note="office")
    await rig.allowlist.add(rig.tenant, "ip", "2001:db8::/32")
    await rig.allowlist.add(rig.tenant, "ip", IP)
    actions = rig.actions()
    subjects: list[tuple[Scope, str]] = [("key", "svc-key"), ("user_id", "u-ops")]
    for scope, subject in subjects:
        result = await actions.apply(verdict(rig.tenant, subject, scope, ips=OFFICE))
        assert result.outcome == "allowlisted", subject
    assert await rig.blocks.active(rig.tenant) == []
    assert await rig.audit_events() == []
    assert await rig.alert_events() == []
    assert await rig.offenders.offences(rig.tenant, "key", "svc-key") == 0
    # an address's own verdict is judged by its own entry, whatever it says about origins
    outsider = verdict(rig.tenant, "198.51.100.1", ips=OFFICE)
    assert (await actions.apply(outsider)).outcome == "blocked"


async def test_a_key_not_all_of_whose_traffic_is_allowlisted_is_blocked(rig: Rig) -> None:
    await rig.allowlist.add(rig.tenant, "ip", "10.20.0.0/16", note="office")
    actions = rig.actions()
    office = ("10.20.0.7", "10.20.9.9")
    cases = {
        # the office's key, also used from outside: that traffic may be the abuse
        "mixed": verdict(rig.tenant, "mixed", "key", ips=(*office, "198.51.100.1")),
        # more addresses than the verdict lists: the rest are unknown
        "many": verdict(rig.tenant, "many", "key", ips=office, ips_truncated=True),
        # some decisions came without an address
        "anonymous": verdict(rig.tenant, "anonymous", "key", ips=office, ipless=True),
        "unknown": verdict(rig.tenant, "unknown", "key"),
        "garbled": verdict(rig.tenant, "garbled", "user_id", ips=(*office, "not-an-ip")),
    }
    for name, case in cases.items():
        assert (await actions.apply(case)).outcome == "blocked", name
    blocks = await rig.blocks.active(rig.tenant)
    assert sorted(block.value for block in blocks) == sorted(cases)
    alerts = await rig.alert_events()
    assert [alert.kind for alert in alerts] == ["block.created"] * len(cases)
    # the addresses are evidence for the allowlist check, not part of what a block says
    explained = [str(block.explanation) for block in blocks]
    explained += [str(alert.explanation) for alert in alerts]
    assert not [text for text in explained if "10.20.0.7" in text or "198.51.100.1" in text]


async def test_shadow_mode_alerts_and_audits_but_enforces_nothing(rig: Rig) -> None:
    await rig.settings.set_detection_mode(rig.tenant, "shadow")
    actions = rig.actions()
    result = await actions.apply(verdict(rig.tenant))
    assert (result.outcome, result.ttl_seconds, result.offence) == ("shadowed", 900, 1)

    [block] = await rig.blocks.active(rig.tenant)
    assert (block.id, block.mode, block.source) == (result.block_id, "shadow", "detector")
    assert await rig.redis.exists(KS.block(rig.tenant, "ip", IP)) == 0
    assert await rig.check() is Reason.OK

    [entry] = await rig.audit_events()
    assert (entry.action, entry.target, entry.details["mode"]) == (
        audit_contract.BLOCK_CREATED,
        block.id,
        "shadow",
    )
    [alert] = await rig.alert_events()
    assert (alert.kind, alert.mode, alert.block_id) == (
        alert_contract.BLOCK_SHADOWED,
        "shadow",
        block.id,
    )
    assert alert.explanation["score"] == 0.93

    # the shadow record stands for the subject: no second record, no second alert
    assert (await actions.apply(verdict(rig.tenant))).outcome == "already_blocked"
    assert len(await rig.alert_events()) == 1
    # switching to enforce enforces, although a shadow record exists
    await rig.settings.set_detection_mode(rig.tenant, DetectionMode.ENFORCE)
    enforced = await actions.apply(verdict(rig.tenant))
    assert (enforced.outcome, enforced.offence, enforced.ttl_seconds) == ("blocked", 2, 1800)
    assert await rig.check() is Reason.BLOCKED


async def test_detection_off_and_unwarranted_verdicts_do_nothing(rig: Rig) -> None:
    actions = rig.actions()
    assert (await actions.apply(verdict(rig.tenant, score=0.5))).outcome == "not_warranted"
    await rig.settings.set_detection_mode(rig.tenant, "off")
    assert (await actions.apply(verdict(rig.tenant))).outcome == "detection_off"
    assert await rig.blocks.active(rig.tenant) == []
    assert await rig.check() is Reason.OK
    assert await rig.audit_events() == []
    assert await rig.alert_events() == []


async def test_a_manual_block_of_the_subject_is_not_duplicated(rig: Rig) -> None:
    manual = await rig.blocks.create(rig.tenant, "ip", IP, 600, "by hand")
    assert (await rig.actions().apply(verdict(rig.tenant))).outcome == "already_blocked"
    assert [block.id for block in await rig.blocks.active(rig.tenant)] == [manual.id]
    assert await rig.alert_events() == []


async def test_escalation_doubles_a_repeat_offenders_ttl_up_to_the_cap(rig: Rig) -> None:
    actions = rig.actions(base_ttl=900, max_ttl=3000)
    ttls = []
    kinds = []
    for _ in range(4):
        result = await actions.apply(verdict(rig.tenant))
        assert result.outcome == "blocked"
        assert result.block_id is not None
        assert await rig.check() is Reason.BLOCKED
        ttls.append(result.ttl_seconds)
        # lifted at once, as DELETE /v1/blocks/{id} does; the offence is remembered
        await rig.blocks.remove(rig.tenant, result.block_id, by_operator=True)
        assert await rig.check() is Reason.OK
        # not imposed again while the evidence from before the lift is in the windows;
        # the marker's end stands for those minutes passing
        assert (await actions.apply(verdict(rig.tenant))).outcome == "lifted_by_hand"
        await rig.redis.delete(KS.lifted(rig.tenant, "ip", IP))
    kinds = [alert.kind for alert in await rig.alert_events()]
    assert ttls == [900, 1800, 3000, 3000]
    assert kinds == ["block.created"] + ["block.escalated"] * 3
    assert await rig.offenders.offences(rig.tenant, "ip", IP) == 4


async def test_escalation_after_a_block_expired(rig: Rig) -> None:
    actions = rig.actions(base_ttl=1, max_ttl=60)
    first = await actions.apply(verdict(rig.tenant))
    assert (first.outcome, first.ttl_seconds) == ("blocked", 1)

    async def expired() -> bool:
        return await rig.blocks.active(rig.tenant) == [] and await rig.check() is Reason.OK

    await eventually_awaited(expired, 5, "the block to expire", 0.05)
    second = await actions.apply(verdict(rig.tenant))
    assert (second.outcome, second.ttl_seconds, second.offence) == ("blocked", 2, 2)
    assert await rig.check() is Reason.BLOCKED


async def test_the_cap_refuses_blocks_with_one_alert(rig: Rig) -> None:
    await rig.settings.set_max_dynamic_blocks(rig.tenant, 2)
    await rig.blocks.create(rig.tenant, "ip", "203.0.113.1", 600, "manual: not counted")
    actions = rig.actions()
    outcomes = [
        (await actions.apply(verdict(rig.tenant, f"192.0.2.{n}"))).outcome for n in range(1, 5)
    ]
    assert outcomes == ["blocked", "blocked", "cap_reached", "cap_reached"]
    assert await rig.check(ip="192.0.2.3") is Reason.OK
    alerts = await rig.alert_events()
    assert [alert.kind for alert in alerts] == ["block.created"] * 2 + ["block.skipped_cap"]
    skipped = alerts[-1]
    assert (skipped.subject, skipped.block_id, skipped.ttl_seconds) == ("192.0.2.3", None, None)
    assert skipped.explanation["max_dynamic_blocks"] == 2
    assert skipped.explanation["active_dynamic_blocks"] == 2
    assert len(await rig.audit_events()) == 2
    assert await rig.offenders.offences(rig.tenant, "ip", "192.0.2.3") == 0


async def test_concurrent_actions_on_one_subject_make_one_block(rig: Rig) -> None:
    actions = [rig.actions() for _ in range(5)]  # as if five processes
    results = await asyncio.gather(*(a.apply(verdict(rig.tenant)) for a in actions))
    assert sorted(result.outcome for result in results) == ["already_blocked"] * 4 + ["blocked"]
    assert len(await rig.blocks.active(rig.tenant)) == 1
    assert len(await rig.audit_events()) == 1
    assert len(await rig.alert_events()) == 1
    assert await rig.offenders.offences(rig.tenant, "ip", IP) == 1
    assert await rig.check() is Reason.BLOCKED


async def test_a_block_that_cannot_be_audited_is_lifted(rig: Rig, redis: Redis) -> None:
    broken = f"test:audit:not-a-stream:{rig.tenant}"
    await redis.set(broken, "x", ex=60)  # XADD on a string fails
    rig.audit = AuditOutbox(redis, broken)
    with pytest.raises(AuditUnavailable):
        await rig.actions().apply(verdict(rig.tenant))
    assert await rig.blocks.active(rig.tenant) == []
    assert await rig.check() is Reason.OK
    assert await rig.alert_events() == []
    # the subject is not held back: the next attempt acts
    rig.audit = AuditOutbox(redis, f"test:audit:{rig.tenant}")
    assert (await rig.actions().apply(verdict(rig.tenant))).outcome == "blocked"


# the parts


async def test_allowlist_entries_and_bad_values(rig: Rig) -> None:
    allow, tenant = rig.allowlist, rig.tenant
    await allow.add(tenant, "ip", "2001:DB8::1", note="v6 host")
    await allow.add(tenant, "ip", "10.1.2.3/32")
    await allow.add(tenant, "ip", "10.0.0.0/8", note="internal")
    await allow.add(tenant, "key", "health-check")
    entries = await allow.entries(tenant)
    assert [(e.scope, e.value, e.note) for e in entries] == [
        ("ip", "10.0.0.0/8", "internal"),
        ("ip", "10.1.2.3", ""),
        ("ip", "2001:db8::1", "v6 host"),
        ("key", "health-check", ""),
    ]
    assert await allow.contains(tenant, "ip", "2001:db8:0::1")
    assert await allow.contains(tenant, "ip", "10.200.0.1")
    assert not await allow.contains(tenant, "ip", "11.0.0.1")
    assert not await allow.contains(tenant, "key", "other")
    assert not await allow.contains("other-" + tenant, "ip", "10.200.0.1")

    await allow.remove(tenant, "ip", "10.0.0.0/8")
    assert not await allow.contains(tenant, "ip", "10.200.0.1")
    with pytest.raises(NotFound, match=re.escape("10.0.0.0/8")):
        await allow.remove(tenant, "ip", "10.0.0.0/8")
    with pytest.raises(InvalidInput, match=re.escape("10.0.0.1/8")):
        await allow.add(tenant, "ip", "10.0.0.1/8")  # host bits set: which did they mean?
    with pytest.raises(InvalidInput, match="'not-an-ip'"):
        await allow.add(tenant, "ip", "not-an-ip")
    with pytest.raises(InvalidInput, match="'asn'"):
        await allow.add(tenant, "asn", "AS64500")
    with pytest.raises(InvalidInput, match=re.escape("'10.0.0.0/8'")):
        await allow.contains(tenant, "ip", "10.0.0.0/8")


async def test_allowlist_holds_all_addresses_or_not(rig: Rig) -> None:
    allow, tenant = rig.allowlist, rig.tenant
    await allow.add(tenant, "ip", "10.20.0.0/16")
    await allow.add(tenant, "ip", "2001:db8::/32")
    await allow.add(tenant, "ip", IP)
    assert await allow.holds_all(tenant, OFFICE)
    assert await allow.holds_all(tenant, iter(OFFICE))  # any iterable, read once
    assert not await allow.holds_all(tenant, (*OFFICE, "10.21.0.1"))
    assert not await allow.holds_all(tenant, (*OFFICE, "not-an-ip"))
    assert not await allow.holds_all(tenant, ())  # nobody vouched for nothing
    assert not await allow.holds_all("other-" + tenant, OFFICE)


async def test_detection_settings_defaults_and_validation(rig: Rig) -> None:
    settings, tenant = rig.settings, rig.tenant
    assert await settings.detection(tenant) == DetectionSettings(DetectionMode.ENFORCE, 1000)
    await settings.set_fail_mode(tenant, FailMode.CLOSED)
    await settings.set_detection_mode(tenant, "shadow")
    await settings.set_max_dynamic_blocks(tenant, 0)
    assert await settings.detection(tenant) == DetectionSettings(DetectionMode.SHADOW, 0)
    assert await settings.fail_mode(tenant) is FailMode.CLOSED
    await settings.set_fail_mode(tenant, None)
    assert (await settings.detection(tenant)).mode is DetectionMode.SHADOW

    with pytest.raises(InvalidInput, match="'loud'"):
        await settings.set_detection_mode(tenant, "loud")
    for bad in (-1, 100_001, True, "5"):
        with pytest.raises(InvalidInput, match="max dynamic blocks"):
            await settings.set_max_dynamic_blocks(tenant, bad)  # type: ignore[arg-type]
    await rig.redis.hset(KS.tenants, tenant, '{"detection_mode": "sideways"}')
    with pytest.raises(ConfigError, match="'sideways'"):
        await settings.detection(tenant)


async def test_a_tenant_threshold_asks_for_more_evidence_and_is_recorded(rig: Rig) -> None:
    actions = rig.actions()
    await rig.settings.set_detection_threshold(rig.tenant, 0.9)
    assert (await rig.settings.detection(rig.tenant)).threshold == 0.9
    weak = verdict(rig.tenant, score=0.85)  # above the detectors' 0.8, below the tenant's
    assert (await actions.apply(weak)).outcome == "not_warranted"
    assert await rig.blocks.active(rig.tenant) == []
    strong = verdict(rig.tenant, score=0.95)
    assert (await actions.apply(strong)).outcome == "blocked"
    (block,) = await rig.blocks.active(rig.tenant)
    assert block.explanation["threshold"] == 0.9
    # a threshold below the detectors' own changes nothing; out of range is refused
    await rig.settings.set_detection_threshold(rig.tenant, 0.5)
    other = verdict(rig.tenant, "198.51.100.77", score=0.85)
    assert (await actions.apply(other)).outcome == "blocked"
    for bad in (0.49, 1.01, True, "0.9"):
        with pytest.raises(InvalidInput, match="detection threshold"):
            await rig.settings.set_detection_threshold(rig.tenant, bad)  # type: ignore[arg-type]
    await rig.settings.set_detection_threshold(rig.tenant, None)
    assert (await rig.settings.detection(rig.tenant)).threshold is None


def campaign_verdict(tenant: str, subject: str) -> Verdict:
    return dataclasses.replace(
        verdict(tenant, subject),
        detector="campaign",
        campaign=CampaignRef("inc_0123456789abcdef", "credential-stuffing", 12),
    )


async def test_campaign_settings_are_validated_naming_the_bad_value(rig: Rig) -> None:
    settings, tenant = rig.settings, rig.tenant
    assert (await settings.detection(tenant)).campaigns == CampaignTuning()
    stored = await settings.set_campaigns(
        tenant,
        {
            "campaign_detection": False,
            "campaign_min_members": 8,
            "campaign_mode": "shadow",
            "campaign_block_ttl": 120,
        },
    )
    assert stored["campaign_min_members"] == 8
    assert (await settings.detection(tenant)).campaigns == CampaignTuning(
        False, 8, DetectionMode.SHADOW, 120
    )
    for bad, named in (
        ({"campaign_detection": "no"}, "campaign_detection 'no'"),
        ({"campaign_min_members": 1}, "campaign_min_members 1 is out of range: 2..1000"),
        ({"campaign_min_members": 2.5}, "campaign_min_members 2.5 is not a whole number"),
        ({"campaign_mode": "off"}, "campaign_mode 'off'"),
        ({"campaign_block_ttl": 59}, "campaign_block_ttl 59 is out of range"),
        ({"campaign_block_ttl": 86_401}, "campaign_block_ttl 86401 is out of range"),
        ({"detection_mode": "off"}, "'detection_mode' is not a campaign setting"),
    ):
        with pytest.raises(InvalidInput, match=re.escape(named)):
            await settings.set_campaigns(tenant, bad)
    # None returns a setting to the detectors' own
    await settings.set_campaigns(tenant, dict.fromkeys(stored, None))
    assert (await settings.detection(tenant)).campaigns == CampaignTuning()
    await rig.redis.hset(KS.tenants, tenant, '{"campaign_min_members": 0}')
    with pytest.raises(ConfigError, match="campaign_min_members 0"):
        await settings.detection(tenant)


async def test_a_tenants_campaign_settings_shape_what_campaign_verdicts_do(rig: Rig) -> None:
    """Off: nothing for campaign verdicts, per-source verdicts as before; shadow: recorded,
    not enforced, while the rest enforces; the TTL: the members' first block."""
    actions, tenant = rig.actions(), rig.tenant
    await rig.settings.set_campaigns(tenant, {"campaign_detection": False})
    assert (await actions.apply(campaign_verdict(tenant, "203.0.113.1"))).outcome == (
        "detection_off"
    )
    assert (await actions.apply(verdict(tenant, "203.0.113.2"))).outcome == "blocked"

    await rig.settings.set_campaigns(
        tenant, {"campaign_detection": True, "campaign_mode": "shadow", "campaign_block_ttl": 300}
    )
    shadowed = await actions.apply(campaign_verdict(tenant, "203.0.113.3"))
    assert (shadowed.outcome, shadowed.ttl_seconds) == ("shadowed", 300)
    assert await rig.check("203.0.113.3") is Reason.OK
    assert (await actions.apply(verdict(tenant, "203.0.113.4"))).outcome == "blocked"

    # a tenant in shadow stays in shadow whatever its campaign_mode says
    await rig.settings.set_campaigns(tenant, {"campaign_mode": "enforce"})
    blocked = await actions.apply(campaign_verdict(tenant, "203.0.113.5"))
    assert (blocked.outcome, blocked.ttl_seconds) == ("blocked", 300)
    assert await rig.check("203.0.113.5") is Reason.BLOCKED
    await rig.settings.set_detection_mode(tenant, "shadow")
    assert (await actions.apply(campaign_verdict(tenant, "203.0.113.6"))).outcome == "shadowed"
    # the TTL escalates from the tenant's for a repeat offence, within the detectors' cap
    await rig.settings.set_detection_mode(tenant, "enforce")
    await rig.settings.set_campaigns(tenant, {"campaign_block_ttl": 86_400})
    capped = await rig.actions(max_ttl=3600).apply(campaign_verdict(tenant, "203.0.113.7"))
    assert capped.ttl_seconds == 3600


async def test_concurrent_changes_of_different_settings_all_take_effect(rig: Rig) -> None:
    """Each change is one atomic step in Redis: changes made at the same moment by
    different requests never undo each other, and other stored fields survive them."""
    settings, tenant = rig.settings, rig.tenant
    await rig.redis.hset(KS.tenants, tenant, '{"created_at": 1764300000.125}')
    for round_ in range(20):
        mode = ("shadow", "off")[round_ % 2]
        await asyncio.gather(
            settings.set_detection_mode(tenant, mode),
            settings.set_max_dynamic_blocks(tenant, round_),
            settings.set_fail_mode(tenant, FailMode.CLOSED if round_ % 2 else None),
        )
        assert await settings.detection(tenant) == DetectionSettings(DetectionMode(mode), round_)
        assert await settings.fail_mode(tenant) is (FailMode.CLOSED if round_ % 2 else None)
    stored = await settings.get(tenant)
    assert stored["created_at"] == 1764300000.125
    assert set(stored) == {"created_at", "detection_mode", "max_dynamic_blocks", "fail_mode"}


async def test_offences_count_and_decay(rig: Rig) -> None:
    history, tenant = rig.offenders, rig.tenant
    assert await history.offences(tenant, "user_id", "u1") == 0
    assert await history.record_offence(tenant, "user_id", "u1", blocked_for=900) == 1
    assert await history.record_offence(tenant, "user_id", "u1", blocked_for=1800) == 2
    ttl_ms = await rig.redis.pttl(KS.offences(tenant, "user_id", "u1"))
    assert (1800 + 86400 - 5) * 1000 < ttl_ms <= (1800 + 86400) * 1000
    assert await history.offences(tenant, "user_id", "u1") == 2
    await history.forget(tenant, "user_id", "u1")
    assert await history.offences(tenant, "user_id", "u1") == 0
    # a short decay: the history is gone once it has passed
    quick = OffenderHistory(rig.redis, KS, decay_seconds=1)
    assert await quick.record_offence(tenant, "key", "k") == 1

    async def decayed() -> bool:
        return await quick.offences(tenant, "key", "k") == 0

    await eventually_awaited(decayed, 5, "the offence history to decay", 0.05)
    assert await quick.record_offence(tenant, "key", "k") == 1


def test_escalated_ttl() -> None:
    assert [escalated_ttl(900, n, 86400) for n in range(1, 10)] == [
        900,
        1800,
        3600,
        7200,
        14400,
        28800,
        57600,
        86400,
        86400,
    ]
    assert escalated_ttl() == 900
    assert escalated_ttl(900, 10**6, 86400) == 86400
    assert escalated_ttl(60, 3, 60) == 60
    with pytest.raises(ValueError, match="offence 0"):
        escalated_ttl(900, 0, 86400)
    with pytest.raises(ValueError, match="base ttl 0"):
        escalated_ttl(0, 1, 86400)
    with pytest.raises(ValueError, match="ttl cap 10"):
        escalated_ttl(900, 1, 10)


def test_alert_events_round_trip_and_malformed_ones_are_reported() -> None:
    event = alert_contract.new_alert_event(
        "t1",
        alert_contract.BLOCK_ESCALATED,
        "ip",
        IP,
        explanation=verdict("t1").explanation(),
        block_id="blk_1",
        ttl_seconds=1800,
        offence=2,
    )
    assert alert_contract.decode(alert_contract.encode(event)) == event
    # consumers ignore unknown fields and kinds
    future = alert_contract.encode(event)[:-1] + b',"new_field":1}'
    assert alert_contract.decode(future.replace(b"block.escalated", b"block.x")).kind == "block.x"

    with pytest.raises(ValueError, match=re.escape("'block.exploded'")):
        alert_contract.new_alert_event("t1", "block.exploded", "ip", IP, explanation={})
    with pytest.raises(ValueError, match="'loud'"):
        alert_contract.new_alert_event(
            "t1", alert_contract.BLOCK_CREATED, "ip", IP, explanation={}, mode="loud"
        )
    with pytest.raises(ValueError, match="not JSON"):
        alert_contract.new_alert_event(
            "t1", alert_contract.BLOCK_CREATED, "ip", IP, explanation={"x": object()}
        )
    good = alert_contract.encode(event)
    for bad in (
        b"",
        b"{}",
        b"[1]",
        good.replace(event.event_id.encode(), b"not-a-uuid"),
        good.replace(b'"v":1', b'"v":2'),
        good.replace(str(event.ts).encode(), b"-1"),
    ):
        with pytest.raises(MalformedAlertEvent):
            alert_contract.decode(bad)


async def test_the_alert_outbox_appends_and_reports_an_unreachable_redis(redis: Redis) -> None:
    stream = f"test:alerts:{secrets.token_hex(4)}"
    outbox = AlertOutbox(redis, stream)
    event = alert_contract.new_alert_event(
        "t1", alert_contract.BLOCK_SHADOWED, "key", "k1", explanation={}, mode="shadow"
    )
    await outbox.record(event)
    assert [alert_contract.decode(e) for e in await entries(redis, stream)] == [event]
    await redis.delete(stream)

    nowhere = Redis(port=free_port(), socket_connect_timeout=1)
    try:
        with pytest.raises(AlertUnavailable, match=re.escape("block.shadowed")):
            await AlertOutbox(nowhere, stream).record(event)
    finally:
        await nowhere.aclose()
    with pytest.raises(ValueError, match="maxlen 0"):
        AlertOutbox(redis, stream, maxlen=0)
