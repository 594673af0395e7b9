"""Privacy requests and the audit log end to end, through the HTTP API of a real
`ratewatch up`: Redis counters and blocks, the raw table and every rollup in chDB."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from analytics.query_client import query
from detectors.campaign_tuning import CampaignTuningReader
from detectors.campaigns import CampaignDetector
from detectors.features import decisions_frame
from detectors.incident_store import Incident, IncidentStore
from limiter.keyspace import Keyspace
from limiter.state.tenants import CampaignTuning, DetectionMode, TenantSettingsStore
from stream.alerts import (
    BLOCK_CREATED,
    BLOCK_ESCALATED,
    BLOCK_SHADOWED,
    new_alert_event,
)
from tests.support.credentials import STACK_PREFIX, create_key
from tests.support.events import decision
from tests.support.openapi import assert_published_shape
from tests.support.outboxes import fill_outboxes
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer

pytestmark = pytest.mark.timeout(180)

TABLES = (
    "ratewatch.decisions",
    "ratewatch.decisions_per_minute",
    "ratewatch.decisions_per_hour",
    "ratewatch.decisions_per_day",
)
KEYSPACE = Keyspace(STACK_PREFIX)


def socket_of(stack: RatewatchProcess) -> Path:
    assert stack.data_dir is not None
    return stack.data_dir / "clickhouse" / "query.sock"


def rows(stack: RatewatchProcess, sql: str) -> list[dict[str, Any]]:
    return query(socket_of(stack), sql)


def user_rows(stack: RatewatchProcess, tenant: str, user: str) -> dict[str, int]:
    """Rows of ``user`` in every table, by the documented mapping."""
    counts = {}
    for table in TABLES:
        user_match = " OR user_id = {u}" if table == "ratewatch.decisions" else ""
        sql = (
            f"SELECT count() AS n FROM {table} WHERE tenant = '{tenant}' AND "
            f"(key = {{u}} OR startsWith(key, {{u}} || ':'){user_match})"
        ).replace("{u}", f"'{user}'")
        counts[table] = int(rows(stack, sql)[0]["n"])
    return counts


def key_requests(stack: RatewatchProcess, tenant: str, key: str) -> dict[str, int]:
    """Requests of one key in the raw table and in each rollup."""
    counts = {}
    for table in TABLES:
        column = "count()" if table == "ratewatch.decisions" else "sum(requests)"
        sql = (
            f"SELECT toUInt64({column}) AS n FROM {table} "
            f"WHERE tenant = '{tenant}' AND key = '{key}'"
        )
        counts[table] = int(rows(stack, sql)[0]["n"])
    return counts


def redis_keys(redis_url: str, pattern: str) -> list[bytes]:
    async def go() -> list[bytes]:
        client = Redis.from_url(redis_url)
        try:
            return [name async for name in client.scan_iter(match=pattern, count=1000)]
        finally:
            await client.aclose()

    return asyncio.run(go())


def set_keys(redis_url: str, names: list[str]) -> None:
    async def go() -> None:
        client = Redis.from_url(redis_url)
        try:
            for name in names:
                await client.set(name, "1", ex=600)
        finally:
            await client.aclose()

    asyncio.run(go())


def save_incidents(redis_url: str, tenant: str, targets: dict[str, tuple[str, str]]) -> None:
    """Targeted-account incidents (id -> the target's scope and value) in the tenant's store."""

    async def go() -> None:
        client = Redis.from_url(redis_url)
        try:
            store, now = IncidentStore(client, KEYSPACE), time.time()
            for incident_id, (scope, value) in targets.items():
                incident = Incident(
                    incident_id, "brute-force", "open", "enforce", now, now, now, now
                )
                incident.reasons = [f"3 addresses new to {scope} {value!r} pressed it"]
                incident.evidence = {"target": {"scope": scope, "value": value}, "checks": 40}
                await store.save(tenant, incident)
        finally:
            await client.aclose()

    asyncio.run(go())


def send(client: httpx.Client, checks: list[dict[str, Any]]) -> None:
    response = client.post("/v1/batch", json={"checks": checks})
    assert response.status_code == 200, response.text


def audit_entries(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/audit", params=params)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def wait_for_audit(client: httpx.Client, action: str, count: int = 1) -> list[dict[str, Any]]:
    wait_until(
        lambda: len(audit_entries(client, action=action)) >= count,
        60,
        f"{count} audit entries {action}",
        0.2,
    )
    return audit_entries(client, action=action)


def seed_two_users(stack: RatewatchProcess, client: httpx.Client, tenant: str) -> int:
    checks = [
        *[{"key": "user:123", "limit": 100, "window": 60}] * 3,
        *[{"key": "user:123:search", "limit": 100, "window": 3600, "route": "/s"}] * 2,
        # a key shared by many users: the request names the user
        *[{"key": "api:search", "limit": 100, "window": 60, "user_id": "user:123"}] * 4,
        *[{"key": "api:search", "limit": 100, "window": 60, "user_id": "user:456"}] * 5,
        *[{"key": "user:456", "limit": 100, "window": 60, "ip": "10.1.1.1"}] * 6,
        # not user:123's: the prefix must end at a colon
        *[{"key": "user:1234", "limit": 100, "window": 60}] * 2,
    ]
    send(client, checks)

    def stored_everywhere() -> bool:
        # the raw table and every rollup: a rollup's rows may land after the raw table's
        for table in TABLES:
            column = "count()" if table == "ratewatch.decisions" else "sum(requests)"
            sql = f"SELECT toUInt64({column}) AS n FROM {table} WHERE tenant = '{tenant}'"
            if int(rows(stack, sql)[0]["n"]) < len(checks):
                return False
        return True

    wait_until(stored_everywhere, 60, "the seeded decisions in chDB and its rollups", 0.2)
    return len(checks)


def test_privacy_delete_erases_a_user_everywhere_and_nothing_else(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str, admin: httpx.Client
) -> None:
    seed_two_users(stack, admin, tenant)
    for scope, value in (("user_id", "user:123"), ("key", "user:123:search"), ("ip", "10.9.9.9")):
        response = admin.post("/v1/blocks", json={"scope": scope, "value": value, "ttl": 600})
        assert response.status_code == 201, response.text
    # what detectors keep about subjects: the user's offences, and another user's
    records = {
        KEYSPACE.offences(tenant, "user_id", "user:123"): True,
        KEYSPACE.offences(tenant, "key", "user:123:search"): True,
        KEYSPACE.lifted(tenant, "key", "user:123"): True,
        KEYSPACE.offences(tenant, "user_id", "user:456"): False,
        KEYSPACE.offences(tenant, "key", "user:1234"): False,
    }
    set_keys(redis_server.url, list(records))
    incidents = {
        "inc_user": ("user_id", "user:123"),
        "inc_key": ("key", "user:123:search"),
        "inc_other": ("key", "user:1234"),
    }
    save_incidents(redis_server.url, tenant, incidents)
    before = admin.post("/v1/privacy/summary", json={"user_id": "user:123"}).json()
    assert before["stores"]["redis"]["detection_records"] == 3
    assert before["stores"]["redis"]["incidents"] == 2
    assert before["total_requests"] == 9  # 3 + 2 by key, 4 by user_id
    assert before["total_keys"] == 3  # user:123, user:123:search, api:search
    assert before["active_windows"] == 2
    assert before["data_retention_days"] == 30
    other_before = user_rows(stack, tenant, "user:456")
    shared_before = key_requests(stack, tenant, "api:search")
    assert set(shared_before.values()) == {9}

    response = admin.post(
        "/v1/privacy/delete", json={"user_id": "user:123", "reason": "user_request"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_published_shape(admin, body, "PrivacyDeleteResult")
    assert body["success"] is True
    assert body["message"] == "Successfully deleted data for user user:123"
    assert body["deleted"]["redis"] == {
        "counters": 2,
        "blocks": 2,
        "detection_records": 3,
        "incidents": 2,
    }
    assert body["deleted_keys"] == 7
    assert body["deleted"]["clickhouse"]["decisions"] == 9

    # at once: no row of the user in any table, no Redis key, a summary of zeros
    assert set(user_rows(stack, tenant, "user:123").values()) == {0}
    assert (
        int(
            rows(
                stack,
                "SELECT count() AS n FROM ratewatch.decisions "
                f"WHERE tenant = '{tenant}' AND user_id = 'user:123'",
            )[0]["n"]
        )
        == 0
    )
    tag = KEYSPACE.tenant_tag(tenant)
    assert redis_keys(redis_server.url, f"{tag}:c:*:user:123") == []
    assert redis_keys(redis_server.url, f"{tag}:c:*:user:123:*") == []
    assert redis_keys(redis_server.url, f"{tag}:bk:*user:123*") == []
    after = admin.post("/v1/privacy/summary", json={"user_id": "user:123"}).json()
    assert_published_shape(admin, after, "PrivacySummaryResult")
    assert (after["total_keys"], after["total_requests"], after["active_windows"]) == (0, 0, 0)
    assert set(after["stores"]["clickhouse"].values()) == {0}
    assert after["stores"]["redis"] == {
        "counters": 0,
        "blocks": 0,
        "detection_records": 0,
        "incidents": 0,
    }
    # the user's incidents are kept, naming nobody; the look-alike's is untouched
    listed = {i["id"]: i for i in admin.get("/v1/incidents").json()["incidents"]}
    assert set(listed) == set(incidents)
    for incident_id in ("inc_user", "inc_key"):
        assert listed[incident_id]["evidence"] == {"checks": 40}
        assert "user:123" not in str(listed[incident_id])
    assert listed["inc_other"]["evidence"]["target"] == {"scope": "key", "value": "user:1234"}

    # everyone else untouched; the shared key keeps the other user's requests, consistently
    assert user_rows(stack, tenant, "user:456") == other_before
    assert set(key_requests(stack, tenant, "api:search").values()) == {5}
    assert set(key_requests(stack, tenant, "user:1234").values()) == {2}
    assert [b["value"] for b in admin.get("/v1/blocks").json()["blocks"]] == ["10.9.9.9"]
    assert len(redis_keys(redis_server.url, f"{tag}:c:*:user:456")) == 1
    for name, erased in records.items():
        assert redis_keys(redis_server.url, name) == ([] if erased else [name.encode()])
    check = admin.post("/v1/check", json={"key": "user:123", "limit": 100, "window": 60})
    assert check.json()["remaining"] == 99  # a fresh counter: the old one is gone

    # audited with counts, never the data
    entry = wait_for_audit(admin, "privacy.deleted")[0]
    assert entry["target"] == "user:123"
    assert entry["details"]["reason"] == "user_request"
    assert entry["details"]["counters"] == 2
    assert entry["details"]["decisions_rows"] == 9
    assert entry["details"]["incidents_redacted"] == 2

    # a second request finds nothing more
    again = admin.post("/v1/privacy/delete", json={"user_id": "user:123"}).json()
    # the check just made
    assert again["deleted"]["redis"] == {
        "counters": 1,
        "blocks": 0,
        "detection_records": 0,
        "incidents": 0,
    }
    assert set(user_rows(stack, tenant, "user:456").values()) == set(other_before.values())


def test_a_tenant_cannot_read_or_erase_another_tenants_users(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str, admin: httpx.Client
) -> None:
    seed_two_users(stack, admin, tenant)
    before = user_rows(stack, tenant, "user:123")
    other = "t" + secrets.token_hex(6)
    with stack.client(create_key(redis_server.url, other, admin=True, prefix=STACK_PREFIX)) as b:
        summary = b.post("/v1/privacy/summary", json={"user_id": "user:123"}).json()
        assert (summary["total_requests"], summary["total_keys"], summary["active_windows"]) == (
            0,
            0,
            0,
        )
        deleted = b.post("/v1/privacy/delete", json={"user_id": "user:123"}).json()
        assert deleted["deleted_keys"] == 0
        assert set(deleted["deleted"]["clickhouse"].values()) == {0}
    assert user_rows(stack, tenant, "user:123") == before
    mine = admin.post("/v1/privacy/summary", json={"user_id": "user:123"}).json()
    assert mine["total_requests"] == 9
    # B's request is in B's audit log, not in A's; A's key cannot read B's log
    with stack.client(create_key(redis_server.url, other, admin=True, prefix=STACK_PREFIX)) as b:
        wait_for_audit(b, "privacy.deleted")
        assert all(entry["action"].startswith("privacy.") for entry in audit_entries(b))
    assert audit_entries(admin, action="privacy.deleted") == []
    assert audit_entries(admin, action="privacy.summary") != []


def test_privacy_delete_needs_an_admin_key_and_valid_input(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str, admin: httpx.Client
) -> None:
    with stack.client(create_key(redis_server.url, tenant, prefix=STACK_PREFIX)) as standard:
        response = standard.post("/v1/privacy/delete", json={"user_id": "user:1"})
        assert response.status_code == 403
        assert response.json()["type"] == "urn:ratewatch:problem:forbidden"
        assert standard.get("/v1/audit").status_code == 403
    for body, status in (
        ({"user_id": "u" * 10_000}, 422),
        ({"user_id": ""}, 422),
        ({}, 422),
        ({"user_id": 5}, 422),
        ('{"user_id": "\\ud800"}', 400),  # a lone surrogate is not valid UTF-8
        ("not json", 400),
    ):
        response = (
            admin.post("/v1/privacy/delete", content=body)
            if isinstance(body, str)
            else admin.post("/v1/privacy/delete", json=body)
        )
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    response = admin.post("/v1/privacy/delete", content=b"{" + b" " * 70_000 + b"}")
    assert response.status_code == 413
    for params in ({"limit": "0"}, {"since": "yesterday"}, {"colour": "red"}):
        response = admin.get("/v1/audit", params=params)
        assert response.status_code == 422, params


def test_security_relevant_changes_are_in_the_audit_log(
    stack: RatewatchProcess, tenant: str, admin: httpx.Client
) -> None:
    created = admin.post("/v1/keys", json={"name": "ci", "segment": "pro"}).json()
    assert created["segment"] == "pro"
    assert admin.delete(f"/v1/keys/{created['id']}").status_code == 200
    block = admin.post(
        "/v1/blocks", json={"scope": "ip", "value": "10.0.0.7", "ttl": 60, "reason": "abuse"}
    ).json()
    assert admin.delete(f"/v1/blocks/{block['id']}").status_code == 200
    assert admin.patch("/v1/settings", json={"fail_mode": "closed"}).status_code == 200

    wait_for_audit(admin, "settings.updated")
    entries = audit_entries(admin)
    assert_published_shape(admin, admin.get("/v1/audit").json(), "AuditList")
    actions = [entry["action"] for entry in reversed(entries)]  # oldest first
    assert actions == [
        "key.created",
        "key.revoked",
        "block.created",
        "block.removed",
        "settings.updated",
    ]
    by_action = {entry["action"]: entry for entry in entries}
    assert by_action["key.created"]["target"] == created["id"]
    assert by_action["key.created"]["details"]["segment"] == "pro"
    assert "key" not in by_action["key.created"]["details"]  # never the secret
    assert by_action["block.created"]["details"]["value"] == "10.0.0.7"
    assert by_action["settings.updated"]["details"] == {"from": None, "to": "closed"}
    admin_id = {entry["actor"] for entry in entries}
    assert len(admin_id) == 1
    assert next(iter(admin_id)).startswith("key_")
    assert all(entry["source_ip"] == "127.0.0.1" for entry in entries)
    # filters
    assert [e["action"] for e in audit_entries(admin, action="block.created")] == ["block.created"]
    assert len(audit_entries(admin, limit=2)) == 2
    assert audit_entries(admin, since=entries[0]["ts"] + 1) == []


def test_allowlist_and_detection_settings_are_managed_and_audited(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str, admin: httpx.Client
) -> None:
    settings = admin.get("/v1/settings").json()
    assert settings == {
        "tenant": tenant,
        "fail_mode": None,
        "detection_mode": "enforce",
        "max_dynamic_blocks": 1000,
        "detection_threshold": None,
        "campaign_detection": True,
        "campaign_min_members": None,
        "campaign_mode": None,
        "campaign_block_ttl": None,
    }
    changed = admin.patch("/v1/settings", json={"detection_mode": "shadow"}).json()
    assert changed["detection_mode"] == "shadow"
    assert changed["fail_mode"] is None  # fields not given are left alone
    changed = admin.patch("/v1/settings", json={"max_dynamic_blocks": 5}).json()
    assert (changed["detection_mode"], changed["max_dynamic_blocks"]) == ("shadow", 5)
    changed = admin.patch("/v1/settings", json={"detection_threshold": 0.9}).json()
    assert (changed["detection_threshold"], changed["max_dynamic_blocks"]) == (0.9, 5)
    changed = admin.patch("/v1/settings", json={"detection_threshold": None}).json()
    assert changed["detection_threshold"] is None
    for body in (
        {"detection_mode": "loud"},
        {"max_dynamic_blocks": -1},
        {"detection_threshold": 0.2},
        {"detection_threshold": 1.5},
        {"detection_threshold": "high"},
    ):
        response = admin.patch("/v1/settings", json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"

    added = admin.post(
        "/v1/allowlist", json={"scope": "ip", "value": "10.20.0.0/16", "note": "office"}
    )
    assert added.status_code == 201, added.text
    assert (
        admin.post("/v1/allowlist", json={"scope": "ip", "value": "10.1.2.3/8"}).status_code == 422
    )
    assert admin.post("/v1/allowlist", json={"scope": "user_id", "value": "vip"}).status_code == 201
    entries = admin.get("/v1/allowlist").json()["entries"]
    assert {(e["scope"], e["value"], e["note"]) for e in entries} == {
        ("ip", "10.20.0.0/16", "office"),
        ("user_id", "vip", ""),
    }
    removed = admin.delete("/v1/allowlist", params={"scope": "user_id", "value": "vip"})
    assert removed.status_code == 200
    assert (
        admin.delete("/v1/allowlist", params={"scope": "user_id", "value": "vip"}).status_code
        == 404
    )
    assert admin.delete("/v1/allowlist").status_code == 422
    with stack.client(create_key(redis_server.url, tenant, prefix=STACK_PREFIX)) as standard:
        assert len(standard.get("/v1/allowlist").json()["entries"]) == 1
        denied = standard.post("/v1/allowlist", json={"scope": "key", "value": "k"})
        assert denied.status_code == 403
    wait_for_audit(admin, "allowlist.removed")
    assert [e["target"] for e in audit_entries(admin, action="allowlist.added")] == [
        "user_id:vip",
        "ip:10.20.0.0/16",
    ]
    changes = [(e["target"], e["details"]) for e in audit_entries(admin, action="settings.updated")]
    # entries of one millisecond have no order: compare as a multiset
    assert sorted(changes, key=repr) == sorted(
        [
            ("detection_mode", {"from": "enforce", "to": "shadow"}),
            ("max_dynamic_blocks", {"from": 1000, "to": 5}),
            ("detection_threshold", {"from": None, "to": 0.9}),
            ("detection_threshold", {"from": 0.9, "to": None}),
        ],
        key=repr,
    )


def test_campaign_settings_are_validated_audited_and_read_by_the_detector(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str, admin: httpx.Client
) -> None:
    """Through the API of `ratewatch up`, read by a campaign detector on the same Redis as
    the stack's own reads it: at the end of a round, within seconds of the change."""
    wanted = {
        "campaign_detection": False,
        "campaign_min_members": 8,
        "campaign_mode": "shadow",
        "campaign_block_ttl": 600,
    }
    changed = admin.patch("/v1/settings", json=wanted)
    assert changed.status_code == 200, changed.text
    assert {name: changed.json()[name] for name in wanted} == wanted
    assert changed.json()["detection_mode"] == "enforce"  # the rest left alone

    detector = CampaignDetector()
    # a decision of the tenant: the detector knows it and reads its settings
    detector.book.observe(
        decisions_frame([decision(tenant=tenant, ip="192.0.2.44", ts=int(time.time() * 1000))])
    )

    async def read() -> CampaignTuning:
        redis = Redis.from_url(redis_server.url)
        try:
            await CampaignTuningReader(TenantSettingsStore(redis, KEYSPACE), detector).refresh()
        finally:
            await redis.aclose()
        return detector.tuning(tenant)

    assert asyncio.run(read()) == CampaignTuning(False, 8, DetectionMode.SHADOW, 600)
    reset = admin.patch("/v1/settings", json={"campaign_detection": None, "campaign_mode": None})
    assert (reset.json()["campaign_detection"], reset.json()["campaign_mode"]) == (True, None)
    assert asyncio.run(read()) == CampaignTuning(True, 8, None, 600)

    for body, field in (
        ({"campaign_detection": "no"}, "campaign_detection"),
        ({"campaign_min_members": 1}, "campaign_min_members"),
        ({"campaign_min_members": 1001}, "campaign_min_members"),
        ({"campaign_mode": "off"}, "campaign_mode"),
        ({"campaign_block_ttl": 30}, "campaign_block_ttl"),
        ({"campaign_block_ttl": "1h"}, "campaign_block_ttl"),
    ):
        response = admin.patch("/v1/settings", json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
        assert f"$.{field}" in response.json()["detail"], response.json()
    assert admin.get("/v1/settings").json()["campaign_min_members"] == 8  # nothing changed

    entries = wait_for_audit(admin, "settings.updated", 6)
    # entries of one millisecond have no order: compare as a multiset
    changes = [(e["target"], e["details"]["from"], e["details"]["to"]) for e in entries]
    assert sorted(changes, key=repr) == sorted(
        [
            ("campaign_block_ttl", None, 600),
            ("campaign_detection", False, True),
            ("campaign_detection", True, False),
            ("campaign_min_members", None, 8),
            ("campaign_mode", None, "shadow"),
            ("campaign_mode", "shadow", None),
        ],
        key=repr,
    )


def listed_alerts(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/alerts", params=params)
    assert response.status_code == 200, response.text
    alerts: list[dict[str, Any]] = response.json()["alerts"]
    return alerts


def test_alerts_are_listed_per_tenant_filtered_and_erased_with_their_user(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str, admin: httpx.Client
) -> None:
    explanation = {"detector": "rules", "score": 0.97, "threshold": 0.8, "reasons": ["burst"]}
    subjects = [
        (BLOCK_CREATED, "user_id", "user:123", "enforce"),
        (BLOCK_ESCALATED, "key", "user:123:search", "enforce"),
        (BLOCK_SHADOWED, "ip", "10.9.9.9", "shadow"),
        (BLOCK_CREATED, "user_id", "user:1234", "enforce"),
    ]
    alerts = [
        new_alert_event(
            tenant,
            kind,
            scope,
            subject,
            explanation=explanation,
            block_id=f"blk{i}",
            mode=mode,
            ttl_seconds=900,
            offence=1,
        )
        for i, (kind, scope, subject, mode) in enumerate(subjects)
    ]
    # a millisecond apart, so that "newest first" is one order
    alerts = [msgspec.structs.replace(a, ts=a.ts - 10 + i) for i, a in enumerate(alerts)]
    other = "t" + secrets.token_hex(6)
    fill_outboxes(redis_server.url, KEYSPACE, [], alerts)
    fill_outboxes(
        redis_server.url,
        KEYSPACE,
        [],
        [new_alert_event(other, BLOCK_CREATED, "ip", "10.0.0.1", explanation=explanation)],
    )
    wait_until(lambda: len(listed_alerts(admin)) == 4, 60, "the alerts in the store", 0.2)

    # any key of the tenant reads them, newest first, in the published shape
    with stack.client(create_key(redis_server.url, tenant, prefix=STACK_PREFIX)) as standard:
        body = standard.get("/v1/alerts").json()
    assert_published_shape(admin, body, "AlertList")
    assert [a["id"] for a in body["alerts"]] == [a.event_id for a in reversed(alerts)]
    first = body["alerts"][-1]
    assert first["explanation"] == explanation
    assert (first["detector"], first["score"], first["ttl_seconds"]) == ("rules", 0.97, 900)
    assert [a["subject"] for a in listed_alerts(admin, scope="user_id")] == [
        "user:1234",
        "user:123",
    ]
    assert [a["kind"] for a in listed_alerts(admin, mode="shadow")] == [BLOCK_SHADOWED]
    assert listed_alerts(admin, kind=BLOCK_ESCALATED, subject="user:123:search")[0]["id"] == (
        alerts[1].event_id
    )
    assert len(listed_alerts(admin, since=alerts[2].ts)) == 2
    assert listed_alerts(admin, limit=1)[0]["id"] == alerts[3].event_id
    # another tenant's key sees only its own
    with stack.client(create_key(redis_server.url, other, prefix=STACK_PREFIX)) as b:
        wait_until(lambda: len(listed_alerts(b)) == 1, 60, "the other tenant's alert", 0.2)
        assert listed_alerts(b)[0]["subject"] == "10.0.0.1"
    for params in ({"limit": "0"}, {"limit": "many"}, {"scope": ""}, {"colour": "red"}):
        response = admin.get("/v1/alerts", params=params)
        assert response.status_code == 422, params
        assert response.headers["content-type"] == "application/problem+json"

    # a privacy request erases the alerts that name the user or one of its keys
    response = admin.post("/v1/privacy/delete", json={"user_id": "user:123"})
    assert response.status_code == 200, response.text
    assert response.json()["deleted"]["clickhouse"]["alerts"] == 2
    assert sorted(a["subject"] for a in listed_alerts(admin)) == ["10.9.9.9", "user:1234"]
