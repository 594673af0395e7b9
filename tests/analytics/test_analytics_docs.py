"""Every ```sql block of docs/analytics.md runs, as ``ratewatch sql`` would run it, on chDB
against seeded data, and answers what its heading promises.

One chDB directory for the module, as in test_erasure.py (chDB hosts one engine per process;
the module's clients are closed before the next module opens another directory).  The
examples name the tenant 'acme'; each query runs with that literal replaced by the module's
own tenant, so rows of other tenants (seeded too) show up only if an example forgets its
tenant filter.  The rows are stamped minutes before now: the examples' windows end now.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from clickhouse_connect.driver.client import Client

from analytics.alert_store import AlertLogWriter
from analytics.audit_store import AuditLogWriter
from analytics.clickhouse import chdb_url, connect
from analytics.incident_log import IncidentLogWriter
from analytics.migrate import migrate
from analytics.readonly import ReadOnlyQueries
from analytics.sqltext import check_read_only
from analytics.writer import DecisionWriter
from stream.alerts import (
    BLOCK_CREATED,
    BLOCK_ESCALATED,
    BLOCK_SHADOWED,
    BLOCK_SKIPPED_CAP,
    AlertEvent,
    new_alert_event,
)
from stream.audit import ACTIONS, AuditEvent
from stream.events import DecisionEvent
from tests.support.events import incident_story
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(120)

DOC = REPO / "docs" / "analytics.md"
DOC_TENANT = "'acme'"
_HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)
_SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```$", re.MULTILINE | re.DOTALL)

MINUTE_MS = 60_000
NOW_MS = int(time.time() * 1000)
# what the examples look for
IP = "203.0.113.7"
USER = "user:42"
# the incident the history example names, and one still open
INCIDENT = "inc_0123456789abcdef"
OPEN_INCIDENT = "inc_fedcba9876543210"
# the trace of the request that asked for user:42's decisions on /search (the docs' example)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass(frozen=True)
class Example:
    heading: str
    sql: str


def doc_examples() -> list[Example]:
    """The doc's sql blocks, each with the heading it sits under."""
    text = DOC.read_text(encoding="utf-8")
    headings = [(m.start(), m.group(1).strip()) for m in _HEADING.finditer(text)]
    examples = []
    for block in _SQL_BLOCK.finditer(text):
        heading = [title for start, title in headings if start < block.start()][-1]
        examples.append(Example(heading, block.group(1)))
    return examples


EXAMPLES = doc_examples()


def example_id(example: Example) -> str:
    same = [e for e in EXAMPLES if e.heading == example.heading]
    suffix = f"-{same.index(example) + 1}" if len(same) > 1 else ""
    return re.sub(r"[^a-z0-9]+", "-", example.heading.lower()).strip("-") + suffix


def decision(tenant: str, minutes_ago: int, **fields: Any) -> DecisionEvent:
    values: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "ts": NOW_MS - minutes_ago * MINUTE_MS,
        "tenant": tenant,
        "key": USER,
        "algorithm": "sliding_window",
        "limit": 5,
        "window": 60,
        "cost": 1,
        "allowed": True,
        "remaining": 4,
        "reset_in": 60,
        "reason": "ok",
        "ip": IP,
        "route": "/search",
        "user_agent": "curl/8.5",
        "user_id": USER,
        "latency_us": 100,
        "segment": "pro",
    }
    values.update(fields)
    if not values["allowed"]:
        values.update(remaining=0, reason="limit")
    return DecisionEvent(**values)


def seed_decisions(tenant: str) -> list[DecisionEvent]:
    """10 decisions: user:42 on /search (pro), 3 of 5 denied, from 203.0.113.7, in one
    trace; user:42 on the shared key ip:203.0.113.7 (/login, no segment), denied; user:7
    (free) 2 hours ago."""
    return [
        *(
            decision(tenant, 5, allowed=i < 2, latency_us=100 + i, trace_id=TRACE_ID)
            for i in range(5)
        ),
        decision(tenant, 4, key=f"ip:{IP}", route="/login", segment=None, allowed=False),
        *(
            decision(
                tenant,
                120,
                key="user:7",
                user_id="user:7",
                ip="198.51.100.1",
                route="/orders",
                segment="free",
                latency_us=900,
            )
            for _ in range(4)
        ),
    ]


def audit(tenant: str, minutes_ago: int, action: str, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "ts": NOW_MS - minutes_ago * MINUTE_MS,
        "tenant": tenant,
        "actor": "key_0123456789abcdef",
        "action": action,
        "source_ip": "192.0.2.10",
    }
    values.update(fields)
    return AuditEvent(**values)


def seed_audit(tenant: str) -> list[AuditEvent]:
    return [
        audit(tenant, 30, "key.created", target="key_fedcba9876543210", details={"admin": False}),
        audit(
            tenant,
            20,
            "privacy.deleted",
            target=USER,
            details={"reason": "GDPR request 42", "decisions_rows": 6, "counters": 2},
        ),
        audit(tenant, 10, "privacy.summary", target="user:7"),
        # outside "the last 7 days"
        audit(tenant, 10 * 24 * 60, "block.created", target="ip:198.51.100.1"),
    ]


THRESHOLD = 0.8
RULE_REASON = "one IP tried 40 distinct keys in a minute in 60 checks, 95% denied"
MODEL_REASON = "baseline score 0.90 and isolation-forest score 0.82 agree"


# what the detectors did about each subject, newest last within a subject:
# (minutes ago, kind, scope, subject, offence, detector, score)
ALERTS: list[tuple[int, str, str, str, int | None, str, float]] = [
    # 203.0.113.7 blocked three times, twice by the rules, then by the models
    (180, BLOCK_CREATED, "ip", IP, 1, "rules", 0.95),
    (60, BLOCK_ESCALATED, "ip", IP, 2, "rules", 0.95),
    (15, BLOCK_ESCALATED, "ip", IP, 3, "baseline+isolation_forest", 0.86),
    (40, BLOCK_CREATED, "ip", "192.0.2.50", 1, "rules", 0.9),
    (30, BLOCK_SHADOWED, "user_id", USER, 1, "baseline", 0.82),
    (10, BLOCK_SKIPPED_CAP, "ip", "198.51.100.1", None, "rules", 0.9),
    # outside "the last 24 hours"
    (2 * 24 * 60, BLOCK_CREATED, "user_id", "user:7", 1, "baseline", 0.84),
    (26 * 60, BLOCK_ESCALATED, "user_id", "user:7", 2, "baseline", 0.88),
    # outside "the last 7 days"
    (10 * 24 * 60, BLOCK_ESCALATED, "ip", "192.0.2.99", 5, "rules", 0.95),
]


def seed_alerts(tenant: str) -> list[AlertEvent]:
    """ALERTS as the detectors make them: a block unless the cap refused it, its TTL
    doubling with each offence, shadowed in shadow mode."""
    events = []
    for minutes_ago, kind, scope, subject, offence, detector, score in ALERTS:
        explanation: dict[str, Any] = {
            "detector": detector,
            "detector_version": "policy-1",
            "score": score,
            "threshold": THRESHOLD,
            "window_seconds": 60,
            "reasons": [RULE_REASON if detector == "rules" else MODEL_REASON, "900 checks/min"],
            "signals": [{"feature": "rate_short", "value": 900.0, "baseline": 3.0, "weight": 0.7}],
        }
        blocked = offence is not None
        if not blocked:
            explanation.update(max_dynamic_blocks=100, active_dynamic_blocks=100)
        event = new_alert_event(
            tenant,
            kind,
            scope,
            subject,
            explanation=explanation,
            block_id=f"blk_{uuid.uuid4().hex[:12]}" if blocked else None,
            mode="shadow" if kind == BLOCK_SHADOWED else "enforce",
            ttl_seconds=900 * 2 ** (offence - 1) if offence is not None else None,
            offence=offence,
        )
        events.append(msgspec.structs.replace(event, ts=NOW_MS - minutes_ago * MINUTE_MS))
    return events


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return chdb_url(tmp_path_factory.mktemp("analytics_docs") / "clickhouse")


@pytest.fixture(scope="module")
def clickhouse(url: str) -> Iterator[Client]:
    client = connect(url)
    migrate(client)
    yield client
    client.close()


@pytest.fixture(scope="module")
def docs_tenant(clickhouse: Client) -> str:
    """A tenant of this module with the seeded rows; another tenant gets the same rows."""
    tenant = "docs" + secrets.token_hex(6)
    for name in (tenant, "other" + secrets.token_hex(6)):
        DecisionWriter(clickhouse).write(seed_decisions(name), f"docs-decisions/{name}")
        AuditLogWriter(clickhouse).write(seed_audit(name), f"docs-audit/{name}")
        alerts = seed_alerts(name)
        AlertLogWriter(clickhouse).write(alerts, f"docs-alerts/{name}")
        # delivered twice (at least once through the outbox): FINAL must fold the copies
        AlertLogWriter(clickhouse).write(alerts[2:3], f"docs-alerts-again/{name}")
        # the docs' incident, closed, and another still open; one change delivered twice
        incidents = incident_story(name, INCIDENT) + incident_story(name, OPEN_INCIDENT)[:2]
        IncidentLogWriter(clickhouse).write(incidents, f"docs-incidents/{name}")
        IncidentLogWriter(clickhouse).write(incidents[1:2], f"docs-incidents-again/{name}")
    return tenant


@pytest.fixture(scope="module")
def analyst(url: str, clickhouse: Client) -> Iterator[ReadOnlyQueries]:
    """The client ``ratewatch sql`` uses: read-only session, its limits, its checks."""
    queries = ReadOnlyQueries(url)
    yield queries
    queries.close()


def run(analyst: ReadOnlyQueries, tenant: str, example: Example) -> list[dict[str, Any]]:
    sql = example.sql.replace(DOC_TENANT, f"'{tenant}'")
    check_read_only(sql)
    return analyst.run(sql).dicts()


def by_heading(fragment: str) -> Example:
    (found,) = [e for e in EXAMPLES if fragment in e.heading]
    return found


def test_the_doc_has_an_example_for_every_common_question() -> None:
    headings = " | ".join(e.heading for e in EXAMPLES)
    for topic in (
        "per hour",
        "Top keys",
        "Deny ratio by route",
        "segment",
        "Latency",
        "IP address",
        "one user",
        "who changed what",
        "privacy request",
        "per detector and kind",
        "repeat offenders",
        "campaigns per family",
        "one incident's history",
    ):
        assert topic in headings, topic


def test_the_doc_names_every_audit_action() -> None:
    # an analyst filters the audit log by action: the list they read must be the whole list
    text = DOC.read_text(encoding="utf-8")
    assert sorted(action for action in ACTIONS if f"`{action}`" not in text) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=example_id)
def test_every_example_runs_read_only_for_its_tenant_and_finds_the_seeded_rows(
    analyst: ReadOnlyQueries, docs_tenant: str, example: Example
) -> None:
    # every example filters by tenant: the sorting keys start with it, and an example
    # without the filter would mix tenants
    assert f"tenant = {DOC_TENANT}" in example.sql, example.heading
    rows = run(analyst, docs_tenant, example)
    assert rows, f"{example.heading}: no rows"


def test_requests_and_denials_per_hour_add_up_to_the_decisions(
    analyst: ReadOnlyQueries, docs_tenant: str
) -> None:
    rows = run(analyst, docs_tenant, by_heading("per hour, last 7 days"))
    # WITH FILL: every hour of the window, traffic or not
    assert len(rows) >= 7 * 24
    assert sum(int(r["total"]) for r in rows) == 10
    assert sum(int(r["denied"]) for r in rows) == 4
    assert sum(int(r["allowed"]) for r in rows) == 6


def test_traffic_by_route_from_the_tenant_rollup_equals_the_per_key_rollup(
    analyst: ReadOnlyQueries, docs_tenant: str
) -> None:
    example = by_heading("(tenant rollup)")
    assert "ratewatch.tenant_decisions_per_hour" in example.sql
    rows = run(analyst, docs_tenant, example)
    totals: dict[str, tuple[int, int]] = {}
    for row in rows:
        total, denied = totals.get(row["route_name"], (0, 0))
        totals[row["route_name"]] = (total + int(row["total"]), denied + int(row["denied"]))
    assert totals == {"/search": (5, 3), "/login": (1, 1), "/orders": (4, 0)}
    per_key = Example(
        example.heading,
        example.sql.replace("ratewatch.tenant_decisions_per_hour", "ratewatch.decisions_per_hour"),
    )
    assert run(analyst, docs_tenant, per_key) == rows


def test_top_keys_by_denials(analyst: ReadOnlyQueries, docs_tenant: str) -> None:
    rows = run(analyst, docs_tenant, by_heading("Top keys"))
    assert [(r["key"], int(r["denied"]), int(r["total"])) for r in rows] == [
        (USER, 3, 5),
        (f"ip:{IP}", 1, 1),
    ]
    assert rows[0]["deny_ratio"] == pytest.approx(0.6)


def test_deny_ratio_by_route(analyst: ReadOnlyQueries, docs_tenant: str) -> None:
    rows = run(analyst, docs_tenant, by_heading("Deny ratio by route"))
    ratios = {r["route_name"]: r["deny_ratio"] for r in rows}
    assert ratios == pytest.approx({"/login": 1.0, "/search": 0.6, "/orders": 0.0})


def test_usage_by_segment(analyst: ReadOnlyQueries, docs_tenant: str) -> None:
    rows = run(analyst, docs_tenant, by_heading("segment"))
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["customer_segment"]] = totals.get(row["customer_segment"], 0) + int(row["total"])
    assert totals == {"pro": 5, "free": 4, "(none)": 1}


def test_latency_quantiles_are_merged_per_hour(analyst: ReadOnlyQueries, docs_tenant: str) -> None:
    rows = run(analyst, docs_tenant, by_heading("Latency"))
    assert sum(int(r["total"]) for r in rows) == 10
    # user:7's four decisions (900 us) are two hours before the others (100-104 us), so
    # unless both fall in one clock hour, the two hours have their own quantiles
    if len(rows) == 2:
        assert rows[0]["p50_us"] == pytest.approx(900)
        assert 100 <= rows[1]["p50_us"] <= 104
    for row in rows:
        assert row["p50_us"] <= row["p90_us"] <= row["p99_us"]


def test_one_ip_and_one_user(analyst: ReadOnlyQueries, docs_tenant: str) -> None:
    overview, decisions = [e for e in EXAMPLES if "IP address" in e.heading]
    keys = {r["key"]: int(r["decisions"]) for r in run(analyst, docs_tenant, overview)}
    assert keys == {USER: 5, f"ip:{IP}": 1}
    assert len(run(analyst, docs_tenant, decisions)) == 6

    used = run(analyst, docs_tenant, by_heading("one user"))
    assert {r["key"]: int(r["decisions"]) for r in used} == {USER: 5, f"ip:{IP}": 1}


def test_audit_examples(analyst: ReadOnlyQueries, docs_tenant: str) -> None:
    changes = run(analyst, docs_tenant, by_heading("who changed what"))
    # newest first; the block created 10 days ago is outside the window
    assert [r["action"] for r in changes] == ["privacy.summary", "privacy.deleted", "key.created"]

    privacy = run(analyst, docs_tenant, by_heading("privacy request"))
    assert [(r["action"], r["user_id"]) for r in privacy] == [
        ("privacy.summary", "user:7"),
        ("privacy.deleted", USER),
    ]
    assert privacy[1]["reason"] == "GDPR request 42"
    assert int(privacy[1]["raw_rows_erased"]) == 6


def test_alerts_per_detector_and_kind(analyst: ReadOnlyQueries, docs_tenant: str) -> None:
    rows = run(analyst, docs_tenant, by_heading("per detector and kind"))
    # the last 24 hours only, each alert once although one was delivered twice
    assert [(r["detector"], r["kind"], int(r["alerts"]), int(r["subjects"])) for r in rows] == [
        ("rules", BLOCK_CREATED, 2, 2),
        ("baseline", BLOCK_SHADOWED, 1, 1),
        ("baseline+isolation_forest", BLOCK_ESCALATED, 1, 1),
        ("rules", BLOCK_ESCALATED, 1, 1),
        ("rules", BLOCK_SKIPPED_CAP, 1, 1),
    ]
    assert rows[0]["avg_score"] == pytest.approx(0.925)


def test_repeat_offenders_and_why(analyst: ReadOnlyQueries, docs_tenant: str) -> None:
    rows = run(analyst, docs_tenant, by_heading("repeat offenders"))
    # 192.0.2.50 and user:42 offended once, the cap's refusal made no block, and
    # 192.0.2.99's five offences are 10 days old
    assert [(r["scope"], r["subject"], int(r["offences"]), int(r["blocks"])) for r in rows] == [
        ("ip", IP, 3, 3),
        ("user_id", "user:7", 2, 2),
    ]
    latest = rows[0]
    assert int(latest["longest_ttl_seconds"]) == 3600
    assert latest["latest_detector"] == "baseline+isolation_forest"
    assert latest["latest_score"] == pytest.approx(0.86)
    assert latest["latest_threshold"] == pytest.approx(THRESHOLD)
    assert latest["latest_reason"] == MODEL_REASON


def test_incidents_per_family_count_each_incident_once_at_its_latest_state(
    analyst: ReadOnlyQueries, docs_tenant: str
) -> None:
    [row] = run(analyst, docs_tenant, by_heading("campaigns per family"))
    # two incidents of 5 members (4 blocked) each, one closed; a change delivered twice
    # counts once
    assert (row["family"], int(row["incidents"]), int(row["still_open"])) == (
        "credential-stuffing",
        2,
        1,
    )
    assert (int(row["members"]), int(row["blocked"]), int(row["shadowed"])) == (10, 8, 0)


def test_one_incidents_history_is_its_changes_in_order(
    analyst: ReadOnlyQueries, docs_tenant: str
) -> None:
    rows = run(analyst, docs_tenant, by_heading("one incident's history"))
    assert [
        (r["kind"], r["state"], int(r["members_count"]), int(r["joined_now"])) for r in rows
    ] == [
        ("incident.opened", "open", 3, 3),
        ("incident.updated", "open", 5, 2),
        ("incident.closed", "closed", 5, 0),
    ]
    assert {(r["route_template"], r["behaviour"]) for r in rows} == {("/auth/sign-in", "rotating")}
    assert rows[0]["reason"].startswith("coordinated credential-stuffing campaign")
