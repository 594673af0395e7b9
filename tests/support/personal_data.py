"""A user's analytics data as erasure finds it: one tenant's decisions, alerts and incidents
in chDB,
under the user's own keys, under a key the user shares with another, and under keys that
only look like the user's, which an erasure must spare.  ``seed`` writes them the way the
consumers do, through the raw table, so the views fill the rollups."""

from __future__ import annotations

import uuid
from typing import Any

from clickhouse_connect.driver.client import Client

from analytics.alert_store import AlertLogWriter
from analytics.incident_log import IncidentLogWriter
from analytics.sqltext import quote
from analytics.tables import DECISIONS_TABLE
from stream.alerts import BLOCK_CREATED, new_alert_event
from stream.incidents import IncidentEvent, IncidentMember, new_incident_event
from tests.support.events import HOUR, MINUTE, T0

USER = "user:1"
SHARED = "ip:10.0.0.1"


def insert_decisions(client: Client, tenant: str, rows: list[dict[str, Any]]) -> None:
    """Rows into the raw table, so that the views fill the rollups as in production."""
    columns = ["ts", "event_id", "tenant", "key", "user_id", "route", "reason", "segment"]
    columns += ["allowed", "cost", "latency_us"]
    values = []
    for row in rows:
        allowed = row.get("allowed", True)
        fields = [
            f"fromUnixTimestamp64Milli({row.get('ts', T0)}, 'UTC')",
            quote(str(uuid.uuid4())),
            quote(tenant),
            quote(row["key"]),
            quote(row.get("user_id", "")),
            quote(row.get("route", "/v1/orders")),
            quote("ok" if allowed else "limit"),
            quote(row.get("segment", "")),
            "true" if allowed else "false",
            str(row.get("cost", 1)),
            str(row.get("latency_us", 100)),
        ]
        values.append("(" + ", ".join(fields) + ")")
    client.command(
        f"INSERT INTO {DECISIONS_TABLE} ({', '.join(columns)}) VALUES {', '.join(values)}"
    )


def seed(client: Client, tenant: str) -> None:
    """USER's own keys, a shared key that USER and user:2 both hit, user:2's key, and a key
    that only looks like USER's; spread over minutes, hours, days, routes and segments."""
    rows: list[dict[str, Any]] = [
        {"key": USER, "user_id": USER},
        {"key": USER, "user_id": USER, "ts": T0 + MINUTE, "allowed": False},
        {"key": USER, "ts": T0 + 2 * HOUR, "segment": "pro"},
        {"key": f"{USER}:search", "route": "/v1/search", "cost": 5},
        {"key": f"{USER}:search", "user_id": "user:2", "ts": T0 + 25 * HOUR},
        {"key": SHARED, "user_id": USER, "cost": 3, "latency_us": 5000},
        {"key": SHARED, "user_id": USER, "ts": T0 + MINUTE, "allowed": False},
        {"key": SHARED, "user_id": USER, "ts": T0 + 3 * HOUR, "segment": "pro"},
        {"key": SHARED, "user_id": USER, "ts": T0 + 26 * HOUR, "route": "/v1/search"},
        {"key": SHARED, "user_id": "user:2", "cost": 2},
        {"key": SHARED, "user_id": "user:2", "ts": T0 + MINUTE, "allowed": False},
        {"key": SHARED, "ts": T0 + 3 * HOUR, "segment": "pro", "latency_us": 7},
        {"key": SHARED, "ts": T0 + 26 * HOUR, "route": "/v1/search"},
        {"key": "user:2", "user_id": "user:2"},
        {"key": "user:2", "user_id": "user:2", "ts": T0 + 25 * HOUR},
        {"key": "user:12", "user_id": "user:12"},
        {"key": "user:1-x"},
        {"key": "x:user:1"},
    ]
    # written in several inserts, as consumers do: rollup rows of a key stay unmerged
    insert_decisions(client, tenant, rows[:9])
    insert_decisions(client, tenant, rows[9:])
    # alerts about USER (as a user id and by its keys), and about subjects that only look
    # like USER's or are someone else's
    subjects = [
        ("user_id", USER),
        ("key", USER),
        ("key", f"{USER}:search"),
        ("user_id", "user:12"),
        ("key", "user:1-x"),
        ("ip", USER),  # an ip alert is never a user's, whatever its subject
        ("key", SHARED),
    ]
    alerts = [
        new_alert_event(tenant, BLOCK_CREATED, scope, subject, explanation={"score": 0.9})
        for scope, subject in subjects
    ]
    AlertLogWriter(client).write(alerts, f"erasure-seed/{tenant}/{uuid.uuid4()}")
    # incidents whose evidence names USER (as a user id, by its keys; one twice, as its
    # history has a row per change), and incidents naming look-alikes, someone else or no
    # account at all
    targets: list[dict[str, str] | None] = [
        {"scope": "user_id", "value": USER},
        {"scope": "key", "value": USER},
        {"scope": "key", "value": f"{USER}:search"},
        {"scope": "user_id", "value": "user:12"},
        {"scope": "key", "value": "user:1-x"},
        {"scope": "user_id", "value": f"{USER}:search"},  # a user id, not a key: not USER's
        {"scope": "key", "value": SHARED},
        None,  # a campaign incident: addresses only
    ]
    incidents = [
        incident_event(tenant, f"inc-{n}", target, kind)
        for n, target in enumerate(targets)
        for kind in (["incident.opened", "incident.updated"] if n == 0 else ["incident.opened"])
    ]
    IncidentLogWriter(client).write(incidents, f"erasure-seed/{tenant}/{uuid.uuid4()}")


INCIDENT_ROWS = 4
"""The rows of incident history ``seed`` writes that name USER (3 incidents, one twice)."""


def incident_event(
    tenant: str, incident_id: str, target: dict[str, str] | None, kind: str = "incident.opened"
) -> IncidentEvent:
    """An incident of the targeted-account detector (``detectors/targets.py``) pressing
    ``target``, or a campaign incident without one."""
    evidence: dict[str, Any] = {"route": "/v1/login", "pace": 2.5}
    reasons = ["many addresses sharing one route"]
    if target is not None:
        evidence["target"] = target
        reasons = [f"{target['scope']} {target['value']!r} pressed it within 30 s"]
    return new_incident_event(
        tenant,
        kind,
        incident_id=incident_id,
        family="brute-force" if target else "campaign",
        state="open",
        mode="enforce",
        opened_at=T0,
        first_seen=T0,
        last_seen=T0 + MINUTE,
        reasons=reasons,
        evidence=evidence,
        counts={"members": 1, "blocked": 1},
        members=[IncidentMember(ip="203.0.113.7", outcome="blocked", joined_at=T0)],
    )
