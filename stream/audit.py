"""The audit event: who changed what, when, from where.  One encoder and one decoder.

Every security-relevant change (API keys, blocks, webhooks, privacy requests, settings) is
one ``AuditEvent``.  The limiter records it in the audit outbox (``stream.audit_outbox``);
the outbox drain (``stream.outbox_drain``) stores it in ``ratewatch.audit_log`` and, in the
distributed deployment, publishes it to ``AUDIT_TOPIC`` (keyed by tenant).  Like
``stream.events`` for decisions, this module is the contract: it imports nothing of theirs.
The envelope (version, id, time, tenant) and its codec are shared with the alert event
(``stream.envelope``).

``details`` says what an auditor needs to understand the change (counts, a reason, a mode,
a TTL), never the personal data a change deleted.  Consumers ignore unknown fields and
unknown actions, so both may grow; a change of a field's meaning bumps
``AUDIT_SCHEMA_VERSION`` and the topic's ``.vN`` suffix.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from stream.envelope import Envelope, EnvelopeCodec, new_envelope
from stream.events import MalformedEvent

__all__ = [
    "ACTIONS",
    "AUDIT_SCHEMA_VERSION",
    "AUDIT_TOPIC",
    "BLOCK_CREATED",
    "BLOCK_REMOVED",
    "CODEC",
    "KEY_CREATED",
    "KEY_REVOKED",
    "OVERRIDE_DELETED",
    "OVERRIDE_SAVED",
    "POLICY_DELETED",
    "POLICY_SAVED",
    "PRIVACY_DELETED",
    "PRIVACY_SUMMARY",
    "SETTINGS_UPDATED",
    "WEBHOOK_CREATED",
    "WEBHOOK_DELETED",
    "WEBHOOK_SECRET_ROTATED",
    "WEBHOOK_UPDATED",
    "AuditEvent",
    "Detail",
    "MalformedAuditEvent",
    "decode",
    "encode",
    "new_audit_event",
]

AUDIT_SCHEMA_VERSION = 1
AUDIT_TOPIC = "ratewatch.audit.v1"

# actions: <object>.<past-tense verb>
KEY_CREATED = "key.created"
KEY_REVOKED = "key.revoked"
BLOCK_CREATED = "block.created"
BLOCK_REMOVED = "block.removed"
WEBHOOK_CREATED = "webhook.created"
WEBHOOK_DELETED = "webhook.deleted"
WEBHOOK_UPDATED = "webhook.updated"
WEBHOOK_SECRET_ROTATED = "webhook.secret_rotated"
PRIVACY_DELETED = "privacy.deleted"
PRIVACY_SUMMARY = "privacy.summary"
SETTINGS_UPDATED = "settings.updated"
ALLOWLIST_ADDED = "allowlist.added"
ALLOWLIST_REMOVED = "allowlist.removed"
POLICY_SAVED = "policy.saved"
POLICY_DELETED = "policy.deleted"
OVERRIDE_SAVED = "policy_override.saved"
OVERRIDE_DELETED = "policy_override.deleted"
ACTIONS = frozenset(
    {
        KEY_CREATED,
        KEY_REVOKED,
        BLOCK_CREATED,
        BLOCK_REMOVED,
        WEBHOOK_CREATED,
        WEBHOOK_DELETED,
        WEBHOOK_UPDATED,
        WEBHOOK_SECRET_ROTATED,
        PRIVACY_DELETED,
        PRIVACY_SUMMARY,
        SETTINGS_UPDATED,
        ALLOWLIST_ADDED,
        ALLOWLIST_REMOVED,
        POLICY_SAVED,
        POLICY_DELETED,
        OVERRIDE_SAVED,
        OVERRIDE_DELETED,
    }
)

Detail = str | int | float | bool | None
_DETAIL_TYPES = (str, int, float, bool, type(None))
# the range of the table's DateTime64(3) column: an event outside it could never be stored


class MalformedAuditEvent(MalformedEvent):
    """Bytes in the audit outbox or on the audit topic that are not an audit event."""


class AuditEvent(Envelope, kw_only=True, frozen=True):
    """One security-relevant change.  ``ts`` is epoch milliseconds; ``actor`` is who did it
    (an API key id such as ``key_ab12…``, ``cli``, or ``detector:<name>``); ``target`` the
    id or subject acted upon; ``source_ip`` the caller's address, when there is one."""

    v: int = AUDIT_SCHEMA_VERSION
    actor: str
    action: str
    target: str = ""
    details: dict[str, Detail] = msgspec.field(default_factory=dict)
    source_ip: str = ""

    def describe(self) -> str:
        return f"{self.action} {self.event_id}"


def new_audit_event(
    tenant: str,
    actor: str,
    action: str,
    target: str = "",
    details: Mapping[str, object] | None = None,
    source_ip: str = "",
) -> AuditEvent:
    """An event with a fresh id, stamped now.  ValueError naming the value if ``tenant``,
    ``actor`` or ``action`` is empty or a detail is not a JSON scalar: an event that cannot
    be stored must fail where it is made, not in the drain."""
    event_id, ts = new_envelope("audit", tenant=tenant, actor=actor, action=action)
    fields: dict[str, Detail] = {}
    for key, value in (details or {}).items():
        if not isinstance(key, str) or not isinstance(value, _DETAIL_TYPES):
            raise ValueError(
                f"audit detail {key!r}={value!r} is not a string key with a string, number, "
                "boolean or null value"
            )
        fields[key] = value
    return AuditEvent(
        event_id=event_id,
        ts=ts,
        tenant=tenant,
        actor=actor,
        action=action,
        target=target,
        details=fields,
        source_ip=source_ip,
    )


CODEC = EnvelopeCodec(AuditEvent, "audit", AUDIT_SCHEMA_VERSION, MalformedAuditEvent)


def encode(event: AuditEvent) -> bytes:
    return CODEC.encode(event)


def decode(data: bytes) -> AuditEvent:
    """The event in ``data``; MalformedAuditEvent (never another error) if it is not one,
    or if ``ratewatch.audit_log`` could not hold it (an id that is no UUID, a ts out of
    range), which would hold up every event stored with it."""
    return CODEC.decode(data)
