"""What a webhook delivery sends: the body (Standard Webhooks JSON, or a Slack message for
Slack-compatible URLs) and the signature headers.

Standard body: ``{"type": <kind>, "timestamp": <ISO 8601>, "data": <the event>}``.  Headers
(https://www.standardwebhooks.com): ``webhook-id`` (the delivery id, the same on every
attempt), ``webhook-timestamp`` (the attempt's epoch seconds) and ``webhook-signature:
v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``, keyed by the base64-decoded part of
the ``whsec_`` secret; signed by the ``standardwebhooks`` reference library.  While a
rotated-out secret is in its grace period, the header holds both signatures, the current
secret's first, separated by a space.

A Slack incoming webhook takes only its own message format, so URLs on ``hooks.slack.com``
(or whose path has ``/services/``, as Slack-compatible chat servers copy it) get
``{"text", "blocks"}`` summarising the alert instead.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec
from standardwebhooks import Webhook as Signer

from stream.alerts import AlertEvent
from webhooks.queue import Delivery, delivery_id

SLACK_HOST = "hooks.slack.com"
TEST_KIND = "webhook.test"
_encoder = msgspec.json.Encoder()


def alert_delivery(tenant: str, webhook_id: str, event: AlertEvent) -> Delivery:
    """The delivery of an alert to one webhook."""
    return Delivery(
        id=delivery_id(webhook_id, event.event_id),
        tenant=tenant,
        webhook_id=webhook_id,
        event_id=event.event_id,
        type=event.kind,
        timestamp=iso_time(event.ts),
        data=msgspec.to_builtins(event),
        queued_at=round(time.time(), 3),
    )


def ping_delivery(tenant: str, webhook_id: str) -> Delivery:
    """A ``webhook.test`` ping, sent like an alert."""
    event_id = str(uuid.uuid4())
    now_ms = time.time_ns() // 1_000_000
    return Delivery(
        id=delivery_id(webhook_id, event_id),
        tenant=tenant,
        webhook_id=webhook_id,
        event_id=event_id,
        type=TEST_KIND,
        timestamp=iso_time(now_ms),
        data={
            "event_id": event_id,
            "ts": now_ms,
            "tenant": tenant,
            "webhook_id": webhook_id,
            "message": "a test ping from RateWatch: this webhook receives its alerts",
        },
        queued_at=round(now_ms / 1000, 3),
    )


def iso_time(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_slack(url: str) -> bool:
    parts = urlsplit(url)
    return (parts.hostname or "").rstrip(".") == SLACK_HOST or "/services/" in parts.path


def body_for(url: str, delivery: Delivery) -> bytes:
    """The bytes to POST for ``delivery`` to ``url`` (the same on every attempt)."""
    if is_slack(url):
        return _encoder.encode(slack_message(delivery))
    return _encoder.encode(
        {"type": delivery.type, "timestamp": delivery.timestamp, "data": delivery.data}
    )


def signature_headers(
    secrets: str | Sequence[str], delivery_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed with each of ``secrets`` (the
    current secret, and the one it replaced during a rotation's grace period): the
    signatures are space-separated, and a receiver accepts any one it can verify."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    keys = (secrets,) if isinstance(secrets, str) else tuple(secrets)
    if not keys:
        raise ValueError("a delivery needs at least one secret to be signed with")
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            Signer(key).sign(delivery_id, moment, body.decode()) for key in keys
        ),
    }


def slack_message(delivery: Delivery) -> dict[str, Any]:
    """A Slack message summarising the alert: kind, subject, mode, TTL, top reason, score."""
    data = delivery.data
    if delivery.type == TEST_KIND:
        text = f"RateWatch test ping for webhook {_escape(data.get('webhook_id', ''))}"
        return {"text": text}
    explanation = data.get("explanation") or {}
    if delivery.type.startswith("incident."):
        return _incident_message(delivery.type, data, explanation)
    reasons = explanation.get("reasons") or []
    score = explanation.get("score")
    # values are escaped: a subject such as "<!channel>" must not notify anyone
    subject = f"{_escape(data.get('scope', '?'))} `{_escape(data.get('subject', '?'))}`"
    headline = {
        "block.created": f"blocked {subject}",
        "block.escalated": f"blocked repeat offender {subject}",
        "block.shadowed": f"would block {subject} (shadow mode)",
        "block.skipped_cap": f"did not block {subject}: the tenant's block cap is reached",
    }.get(delivery.type, f"{delivery.type} for {subject}")
    facts = [
        ("Kind", delivery.type),
        ("Tenant", _escape(data.get("tenant", ""))),
        ("Mode", _escape(data.get("mode", ""))),
        ("TTL", _duration(data.get("ttl_seconds"))),
        ("Score", f"{score:.2f}" if isinstance(score, int | float) else "–"),
        ("Detector", _escape(explanation.get("detector", "–"))),
    ]
    return _message(headline, facts, reasons)


def _incident_message(kind: str, data: dict[str, Any], incident: dict[str, Any]) -> dict[str, Any]:
    """One message per incident and update: the campaign, its size, what it shares."""
    counts = incident.get("counts") or {}
    members = counts.get("members", 0)
    family = _escape(incident.get("family", "coordinated"))
    ident = f"`{_escape(data.get('subject', '?'))}`"
    blocked = counts.get("blocked", 0) + counts.get("shadowed", 0)
    headline = {
        "incident.opened": f"opened incident {ident}: {family} campaign of {members} addresses",
        "incident.updated": f"incident {ident} grew: {family} campaign of {members} addresses",
        "incident.closed": f"closed incident {ident}: the {family} campaign went quiet",
    }.get(kind, f"{kind} {ident}")
    reasons = incident.get("reasons") or []
    facts = [
        ("Kind", kind),
        ("Tenant", _escape(data.get("tenant", ""))),
        ("Mode", _escape(data.get("mode", ""))),
        ("Members", str(members)),
        ("Blocked", str(blocked)),
        ("Family", family),
    ]
    return _message(headline, facts, reasons)


def _message(headline: str, facts: list[tuple[str, str]], reasons: list[str]) -> dict[str, Any]:
    """The Slack message of an alert or an incident: the headline and its facts (escaped
    already) side by side, the top reason beneath; within Slack's lengths."""
    reason = _escape(reasons[0]) if reasons else ""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*RateWatch* {headline}"}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{value}"} for name, value in facts],
        },
    ]
    if reason:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": reason[:2000]}]})
    text = f"RateWatch {headline}" + (f": {reason}" if reason else "")
    return {"text": text[:3000], "blocks": blocks}


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int) or seconds <= 0:
        return "–"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _escape(value: object) -> str:
    """Text for Slack's mrkdwn: its control characters escaped as Slack documents."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
