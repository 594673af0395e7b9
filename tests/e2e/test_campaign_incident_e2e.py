"""A coordinated campaign end to end against a real `ratewatch up`: distributed credential
stuffing (one family seed of ``ratewatch simulate --families``, tens of addresses at about
0.1 check/s each, beside a launch crowd) is blocked as one campaign, explained, enforced,
grouped as one incident, and a real webhook receiver hears of it once per incident change
rather than once per blocked address.  The tenant's campaign settings (set through the API
first) shape the blocks, and the incident's history reaches ``ratewatch.incidents``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from analytics.query_client import query
from tests.support.credentials import STACK_PREFIX, create_key
from tests.support.openapi import assert_published_shape
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer
from tests.support.traffic import check_from
from tests.support.webhook_receiver import Receiver

# seed 2 draws 38 addresses at 0.12 check/s each, credentials in user_id, joining within
# 6 s from 13 s after the attack starts: no address stands out by its rate
SEED = 2
FAMILY = "stuffing-distributed"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver().start()
    yield hook
    hook.stop()


def verified(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks signature check a receiver makes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return f"v1,{expected}" in headers["webhook-signature"].split(" ")


def alerts(admin: httpx.Client, kind: str) -> list[dict[str, Any]]:
    """The tenant's alerts of ``kind``, checked against the published schema."""
    body = admin.get("/v1/alerts", params={"kind": kind, "limit": 1000}).json()
    assert_published_shape(admin, body, "AlertList")
    found: list[dict[str, Any]] = body["alerts"]
    return found


@pytest.mark.timeout(300)
def test_a_distributed_stuffing_campaign_is_one_incident_and_one_message_per_change(
    stack: RatewatchProcess, redis_server: RedisServer, tenant: str, receiver: Receiver
) -> None:
    admin_key = create_key(redis_server.url, tenant, admin=True, prefix=STACK_PREFIX)
    admin = httpx.Client(
        base_url=stack.base_url, timeout=30, headers={"Authorization": f"Bearer {admin_key}"}
    )
    created = admin.post("/v1/webhooks", json={"url": receiver.url()})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert "incident.opened" in created.json()["events"]

    tuned = admin.patch("/v1/settings", json={"campaign_block_ttl": 1200})
    assert tuned.status_code == 200, tuned.text

    key = create_key(redis_server.url, tenant, prefix=STACK_PREFIX)
    run = subprocess.run(
        [sys.executable, "-m", "ratewatch", "simulate", "--url", stack.base_url,
         "--api-key", key, "--families", "--family", FAMILY, "--family", "flash-crowd",
         "--seed", str(SEED), "--duration", "85", "--attack-at", "5", "--json"],
        capture_output=True, text=True, timeout=200, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    scenarios = {s["name"]: s for s in report["scenarios"]}
    assert scenarios[FAMILY]["recall_within_window"] >= 0.95, scenarios[FAMILY]
    assert scenarios["flash-crowd"]["legit_blocked"] == 0, report["blocks"]

    # blocked as members of one campaign, with one explanation
    blocks = [b for b in admin.get("/v1/blocks").json()["blocks"] if b["detector"] == "campaign"]
    assert len(blocks) >= 30
    [incident_id] = {b["incident_id"] for b in blocks}
    for block in blocks:
        assert block["source"] == "detector"
        assert block["mode"] == "enforce"
        assert block["explanation"]["incident_id"] == incident_id
        assert block["explanation"]["campaign"]["behaviour"] == "rotating"
        assert block["reason"].startswith("coordinated credential-stuffing campaign")
        # the tenant's campaign block TTL, a first offence each
        assert block["expires_at"] - block["created_at"] == pytest.approx(1200, abs=2)
    # enforced by the check script
    assert check_from(admin, blocks[0]["value"])["reason"] == "blocked"

    # one incident: its members are the blocked addresses, its evidence what they share
    listed = admin.get("/v1/incidents").json()["incidents"]
    assert [i["id"] for i in listed] == [incident_id]
    incident = admin.get(f"/v1/incidents/{incident_id}").json()
    assert incident["family"] == "credential-stuffing"
    assert incident["state"] == "open"
    assert {m["ip"] for m in incident["members"]} >= {b["value"] for b in blocks}
    assert {m["block_id"] for m in incident["members"] if m["outcome"] == "blocked"} == {
        b["id"] for b in blocks
    }
    assert incident["counts"]["members"] == len(incident["members"])
    assert incident["evidence"]["behaviour"] == "rotating"
    assert incident["evidence"]["route_template"]
    assert incident["first_seen"] <= incident["last_seen"]
    assert incident["reasons"]
    other = admin.get("/v1/incidents/inc_0000000000000000")
    assert other.status_code == 404
    assert other.headers["content-type"].startswith("application/problem+json")
    assert admin.get("/v1/incidents", params={"state": "gone"}).status_code == 422

    # one message per incident change, none per member: one delivery per incident alert
    def incident_deliveries() -> list[dict[str, Any]]:
        return [r.json() for r in receiver.requests if r.json()["type"].startswith("incident.")]

    told: list[dict[str, Any]] = []

    def settled() -> bool:
        told[:] = alerts(admin, "incident.opened") + alerts(admin, "incident.updated")
        delivered = {d["data"]["event_id"] for d in incident_deliveries()}
        return bool(told) and delivered == {a["id"] for a in told}

    wait_until(settled, 60, "a delivery for each of the incident's alerts", 0.5)
    assert [a["subject"] for a in told if a["kind"] == "incident.opened"] == [incident_id]
    assert {a["subject"] for a in told} == {incident_id}
    assert {a["scope"] for a in told} == {"incident"}
    delivered = incident_deliveries()
    assert len(delivered) == len(told)  # each alert delivered once
    assert [d["type"] for d in delivered].count("incident.opened") == 1
    assert len(delivered) < len(blocks)
    per_block = [
        r.json()
        for r in receiver.requests
        if r.json()["type"].startswith("block.")
        and r.json()["data"]["explanation"].get("incident_id")
    ]
    assert per_block == []
    assert all(verified(secret, r.headers, r.body) for r in receiver.requests)

    # the incident's history in ClickHouse: one row per change, as ratewatch sql reads it
    assert stack.data_dir is not None
    socket = stack.data_dir / "clickhouse" / "query.sock"
    sql = (
        "SELECT kind, incident_id, members_count, counts['blocked'] AS blocked"
        " FROM ratewatch.incidents FINAL"
        f" WHERE tenant = '{tenant}' ORDER BY ts, event_id"
    )
    rows: list[dict[str, Any]] = []

    def recorded() -> bool:
        rows[:] = query(socket, sql)
        return len(rows) >= len(told)

    wait_until(recorded, 60, "the incident's changes in ratewatch.incidents", 0.5)
    assert rows[0]["kind"] == "incident.opened"
    assert [r["kind"] for r in rows].count("incident.opened") == 1
    assert {r["incident_id"] for r in rows} == {incident_id}
    assert [r["members_count"] for r in rows] == sorted(r["members_count"] for r in rows)
    assert rows[-1]["members_count"] == incident["counts"]["members"]
    admin.close()
