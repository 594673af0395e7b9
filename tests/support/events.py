"""Events as the producers make them, for tests that feed a store, a stream or a topic
directly: decisions (two factories, for the two kinds of test that need them), audit
entries, detector alerts and incident changes."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import msgspec

from detectors.incident_store import Incident, Member
from detectors.incidents import incident_event
from stream.alerts import BLOCK_CREATED, BLOCK_SHADOWED, AlertEvent, new_alert_event
from stream.audit import BLOCK_CREATED as AUDIT_BLOCK_CREATED
from stream.audit import KEY_CREATED, KEY_REVOKED, AuditEvent, new_audit_event
from stream.events import DecisionEvent
from stream.incidents import INCIDENT_CLOSED, INCIDENT_OPENED, INCIDENT_UPDATED, IncidentEvent

# yesterday's midnight (UTC), in ms: every row is well inside every table's TTL, and a day
# of rows after it still lies in the past
T0 = (int(time.time()) // 86_400 - 1) * 86_400_000
MINUTE = 60_000
HOUR = 60 * MINUTE
# a minute ago: for decisions that must sit in the current retention and in order
_RECENT = int(time.time() * 1000) - 60_000


def decision(**fields: Any) -> DecisionEvent:
    """One allowed check of acme's ``user:1`` at ``T0``, with ``fields`` changed: for tests
    that spell out the few fields they look at."""
    values: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "ts": T0,
        "tenant": "acme",
        "key": "user:1",
        "algorithm": "sliding_window",
        "limit": 10,
        "window": 60,
        "cost": 1,
        "allowed": True,
        "remaining": 9,
        "reset_in": 60,
        "reason": "ok",
        "route": "/v1/orders",
        "latency_us": 100,
    }
    values.update(fields)
    return DecisionEvent(**values)


def numbered_decision(seq: int, tenant: str = "acme", **fields: Any) -> DecisionEvent:
    """Decision number ``seq``, every field varied by it (optional ones sometimes absent);
    its sequence rides in latency_us, so a sum tells whether each was stored once."""
    values: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "ts": _RECENT + seq,
        "tenant": tenant,
        "key": f"user:{seq % 13}",
        "algorithm": ("sliding_window", "token_bucket", "fixed_window")[seq % 3],
        "limit": 100,
        "window": 60,
        "cost": 1 + seq % 2,
        "allowed": seq % 4 != 0,
        "remaining": seq % 100,
        "reset_in": seq % 60,
        "reason": "ok" if seq % 4 else "limit",
        "ip": f"10.0.0.{seq % 250}" if seq % 5 else None,
        "route": "/v1/orders" if seq % 2 else None,
        "user_agent": "pytest/1" if seq % 3 else None,
        "user_id": f"u{seq}" if seq % 7 else None,
        "latency_us": seq,
        "instance": "limiter-1",
    }
    values.update(fields)
    return DecisionEvent(**values)


def audit_events(tenant: str, n: int) -> list[AuditEvent]:
    """``n`` audit entries of ``tenant``: three actions, details of every JSON kind and
    non-ASCII text, so a transport that drops or mangles a field shows it."""
    return [
        new_audit_event(
            tenant,
            f"key_{i:04x}",
            (KEY_CREATED, KEY_REVOKED, AUDIT_BLOCK_CREATED)[i % 3],
            target=f"target-{i}",
            details={"seq": i, "ratio": i / 4, "admin": i % 2 == 0, "reason": "ünïcode ✓"},
            source_ip=f"10.1.0.{i % 250}",
        )
        for i in range(n)
    ]


# what the rules detector says about a single-IP burst
ALERT_EXPLANATION = {
    "detector": "rules",
    "detector_version": "rules-2",
    "score": 0.98,
    "threshold": 0.8,
    "reasons": ["1,800 checks/min from one IP with 100% denied"],
    "signals": [{"feature": "rate_short", "value": 1800.0, "baseline": 9.0, "weight": 0.7}],
}


def block_alert(tenant: str, kind: str = BLOCK_CREATED, subject: str = "203.0.113.9") -> AlertEvent:
    """A detector's alert about a first-offence block of the IP ``subject``, shadowed or
    enforced as ``kind`` says."""
    return new_alert_event(
        tenant,
        kind,
        "ip",
        subject,
        explanation=ALERT_EXPLANATION,
        block_id="blk_" + secrets.token_hex(4),
        mode="shadow" if kind == BLOCK_SHADOWED else "enforce",
        ttl_seconds=900,
        offence=1,
    )


def incident_story(tenant: str, incident_id: str = "inc_0123456789abcdef") -> list[IncidentEvent]:
    """An incident opened with three members two minutes ago, joined by two a minute ago,
    closed now: its three changes as the detectors record them, stamped when they
    happened."""
    now = time.time()
    incident = Incident(
        id=incident_id,
        family="credential-stuffing",
        state="open",
        mode="enforce",
        opened_at=now - 120,
        updated_at=now - 120,
        first_seen=now - 150,
        last_seen=now - 120,
        detector="campaign",
        detector_version="campaign-1",
        reasons=["coordinated credential-stuffing campaign: 3 addresses …"],
        evidence={"route_template": "/auth/sign-in", "behaviour": "rotating", "checks": 40},
        members=[Member(f"203.0.113.{n}", "blocked", now - 120, f"blk_{n}") for n in (1, 2, 3)],
    )
    incident.counts = {"members": 3, "blocked": 3}
    events = [incident_event(tenant, INCIDENT_OPENED, incident, incident.members)]
    joined = [Member("203.0.113.4", "blocked", now - 60, "blk_4")]
    joined.append(Member("203.0.113.5", "already_blocked", now - 60))
    incident.members += joined
    incident.counts = {"members": 5, "blocked": 4, "already_blocked": 1}
    incident.last_seen = now - 60
    events.append(incident_event(tenant, INCIDENT_UPDATED, incident, joined))
    incident.state, incident.closed_at = "closed", now
    events.append(incident_event(tenant, INCIDENT_CLOSED, incident, ()))
    stamps = [int((now - ago) * 1000) for ago in (120, 60, 0)]
    return [msgspec.structs.replace(e, ts=ts) for e, ts in zip(events, stamps, strict=True)]
