"""The audit trail of the limiter's API: who changed what, recorded after the change.

Entries go to the audit outbox (a Redis stream, see ``stream/audit.py``); the pipeline
moves them into ``ratewatch.audit_log`` (and, distributed, onto ``ratewatch.audit.v1``).
An entry names the acting API key, never a secret and never a user's deleted data.
"""

from __future__ import annotations

from typing import Any, Protocol

from limiter.auth import Principal
from limiter.errors import StoreUnavailable
from stream.audit import AuditEvent, new_audit_event
from stream.audit_outbox import AuditUnavailable

Detail = str | int | float | bool | None


class AuditSink(Protocol):
    async def record(self, event: AuditEvent) -> None: ...


class AuditTrail:
    def __init__(self, sink: AuditSink):
        self._sink = sink

    async def record(
        self,
        principal: Principal,
        action: str,
        target: str = "",
        details: dict[str, Any] | None = None,
        source_ip: str = "",
    ) -> None:
        """Record ``action`` by ``principal``; StoreUnavailable if the outbox is down."""
        event = new_audit_event(
            principal.tenant,
            principal.key_id,
            action,
            target,
            {name: _detail(value) for name, value in (details or {}).items()},
            source_ip,
        )
        try:
            await self._sink.record(event)
        except AuditUnavailable as exc:
            raise StoreUnavailable(f"the audit entry of {action} was not written: {exc}") from exc


def _detail(value: Any) -> Detail:
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)
