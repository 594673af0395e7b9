"""The actions of abuse detection: a warranted verdict becomes a block, an audit entry and
an alert, within what the tenant allows.

``BlockActions.apply`` decides, in this order:

1. ``not_warranted`` — the score is below the threshold: nothing.
2. ``detection_off`` — the tenant turned detection off (or, for a campaign's verdict,
   campaign detection: ``campaign_detection`` false): nothing.  ``not_warranted`` too
   when the score is below the tenant's own ``detection_threshold`` (a tenant may ask for
   more evidence than the detectors' threshold, never for less); a block made above it
   records the tenant's threshold in its explanation.
3. ``allowlisted`` — the subject (or, for an IP, a network holding it) is on the tenant's
   allowlist, or it is a key or user id all of whose traffic in the short window came from
   allowlisted addresses or networks (``Verdict.ips``, complete: not truncated and no
   decision without an address): nothing, no alert, no offence counted.  The allowlist is
   an operator's statement of trust, and traffic from a trusted network must not get the
   keys and accounts it uses blocked either; alerting on each verdict would be noise, and
   the outcome is still counted by the caller (``DetectionLoop.stats``).  A key or user id
   with only *some* of its traffic from allowlisted addresses is judged as usual: the rest
   is traffic nobody vouched for, and may be the very abuse (a leaked office key used from
   elsewhere too), so the allowlisted share does not shield it.
   ``lifted_by_hand`` — an operator lifted a detector's block of the subject less than
   ``LIFT_SUPPRESSION_SECONDS`` ago (``limiter.state.blocks``): nothing, for the same reason.
4. ``already_blocked`` — an active block already stops the subject (any enforced block,
   manual or dynamic; in shadow mode a shadow record too), or another process is acting on
   it right now: nothing, so no duplicate block.  A shadow record does not stop enforcement
   once the tenant switches to ``enforce``.
5. ``cap_reached`` — the tenant has ``max_dynamic_blocks`` active detector blocks of this
   mode: no block, and an alert ``block.skipped_cap``, at most one per tenant per minute.
6. ``shadowed`` (shadow mode) or ``blocked`` (enforce): the offence is counted and the
   block made with the escalated TTL (``detectors.offenders.escalated_ttl``; a campaign
   member's from the tenant's ``campaign_block_ttl`` when set, and in shadow mode when the
   tenant's ``campaign_mode`` is ``shadow``: ``limiter.state.tenants``), audited as
   ``block.created`` by ``detector:<name>`` and alerted (``block.shadowed``, or
   ``block.created`` / ``block.escalated`` for a first / repeat offence).  A shadow block is
   a record without an enforcement key: listed, audited, alerted, never enforced.  Shadow
   mode counts offences too, so that its TTLs show what enforcement would do.

Concurrency: steps 4-6 run under a per-subject claim (``OffenderHistory.claim``, a
``SET NX PX`` lease), so several processes applying the same verdict at once make one block
and count one offence.  The cap is checked under the subject's claim only, so concurrent
actions on different subjects may pass it by at most their number: it is a safety valve,
not an exact quota.

Failures: an error before the block is made and audited is raised (StoreUnavailable,
AuditUnavailable), and a block whose audit entry could not be written is lifted again,
because no block may stand unaudited.  After that, a failure to count the offence or to
record the alert is logged, never raised: the block stands and a retry would only find it
``already_blocked``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

from detectors.offenders import DEFAULT_BASE_TTL, DEFAULT_MAX_TTL, OffenderHistory, escalated_ttl
from detectors.verdict import Verdict
from limiter.errors import LimiterError, StoreUnavailable
from limiter.state.allowlist import Allowlist
from limiter.state.blocks import (
    MAX_BLOCK_SECONDS,
    MAX_REASON_LENGTH,
    Block,
    BlockStore,
    normalize_subject,
)
from limiter.state.tenants import DetectionMode, TenantSettingsStore
from stream.alerts import (
    BLOCK_CREATED,
    BLOCK_ESCALATED,
    BLOCK_SHADOWED,
    BLOCK_SKIPPED_CAP,
    AlertEvent,
    AlertOutbox,
    AlertUnavailable,
    new_alert_event,
)
from stream.audit import BLOCK_CREATED as AUDIT_BLOCK_CREATED
from stream.audit import new_audit_event
from stream.audit_outbox import AuditOutbox, AuditUnavailable

log = logging.getLogger("ratewatch.detect")

Outcome = Literal[
    "blocked",
    "shadowed",
    "allowlisted",
    "lifted_by_hand",
    "already_blocked",
    "cap_reached",
    "detection_off",
    "not_warranted",
]
# longer than one action takes (a few Redis round trips), short enough that a crashed
# process holds a subject back only briefly
CLAIM_MS = 30_000
CAP_ALERT_PERIOD = 60


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What ``apply`` did; ``block_id``, ``ttl_seconds`` and ``offence`` are set for
    ``blocked`` and ``shadowed``."""

    outcome: Outcome
    block_id: str | None = None
    ttl_seconds: int | None = None
    offence: int | None = None


class BlockActions:
    def __init__(
        self,
        blocks: BlockStore,
        allowlist: Allowlist,
        settings: TenantSettingsStore,
        offenders: OffenderHistory,
        audit: AuditOutbox,
        alerts: AlertOutbox,
        *,
        base_ttl: int = DEFAULT_BASE_TTL,
        max_ttl: int = DEFAULT_MAX_TTL,
    ):
        escalated_ttl(base_ttl, 1, max_ttl)  # ValueError naming a bad base or cap
        if max_ttl > MAX_BLOCK_SECONDS:
            raise ValueError(f"ttl cap {max_ttl!r} is longer than {MAX_BLOCK_SECONDS} seconds")
        self._blocks = blocks
        self._allowlist = allowlist
        self._settings = settings
        self._offenders = offenders
        self._audit = audit
        self._alerts = alerts
        self._base_ttl = base_ttl
        self._max_ttl = max_ttl

    async def apply(self, verdict: Verdict) -> ActionResult:
        """Act on ``verdict`` as the tenant's settings allow (see the module's docstring)."""
        if not verdict.warranted:
            return ActionResult("not_warranted")
        tenant, scope = verdict.tenant, verdict.scope
        subject = normalize_subject(scope, verdict.subject)
        detection = await self._settings.detection(tenant)
        mode = detection.mode
        base_ttl = self._base_ttl
        if verdict.campaign is not None:
            # the tenant's campaign settings, read with the rest at each verdict
            if not detection.campaigns.enabled:
                return ActionResult("detection_off")
            mode = detection.campaigns.mode_within(mode)
            if detection.campaigns.block_ttl is not None:
                base_ttl = min(detection.campaigns.block_ttl, self._max_ttl)
        if mode is DetectionMode.OFF:
            return ActionResult("detection_off")
        if detection.threshold is not None and detection.threshold > verdict.threshold:
            # the tenant asks for more evidence: what follows records this threshold
            verdict = dataclasses.replace(verdict, threshold=detection.threshold)
            if not verdict.warranted:
                return ActionResult("not_warranted")
        if await self._allowlist.contains(tenant, scope, subject):
            return ActionResult("allowlisted")
        if await self._vouched_for(verdict):
            return ActionResult("allowlisted")
        if await self._blocks.recently_lifted(tenant, scope, subject):
            return ActionResult("lifted_by_hand")
        token = await self._offenders.claim(tenant, scope, subject, CLAIM_MS)
        if token is None:
            return ActionResult("already_blocked")
        try:
            result, alert = await self._act(
                verdict, subject, mode.value, detection.max_dynamic_blocks, base_ttl
            )
        finally:
            with contextlib.suppress(StoreUnavailable):  # the claim then expires by itself
                await self._offenders.release(tenant, scope, subject, token)
        if alert is not None:
            try:
                await self._alerts.record(alert)
            except AlertUnavailable:
                log.warning("alert %s for %s %s=%s lost", alert.kind, tenant, scope, subject)
        return result

    async def _vouched_for(self, verdict: Verdict) -> bool:
        """Whether all of a key's or user id's traffic came from allowlisted addresses, as far
        as the verdict can tell: an incomplete list of addresses proves nothing."""
        if verdict.scope == "ip" or verdict.ips_truncated or verdict.ipless:
            return False
        return await self._allowlist.holds_all(verdict.tenant, verdict.ips)

    async def _act(
        self, verdict: Verdict, subject: str, mode: str, cap: int, base_ttl: int
    ) -> tuple[ActionResult, AlertEvent | None]:
        tenant, scope = verdict.tenant, verdict.scope
        active = await self._blocks.active(tenant)
        if any(_stops(block, scope, subject, mode) for block in active):
            return ActionResult("already_blocked"), None
        dynamic = sum(1 for block in active if block.source == "detector" and block.mode == mode)
        if dynamic >= cap:
            alert = None
            if await self._offenders.throttle(tenant, BLOCK_SKIPPED_CAP, CAP_ALERT_PERIOD):
                explanation = verdict.explanation()
                explanation.update(max_dynamic_blocks=cap, active_dynamic_blocks=dynamic)
                alert = new_alert_event(
                    tenant, BLOCK_SKIPPED_CAP, scope, subject, explanation=explanation, mode=mode
                )
            return ActionResult("cap_reached"), alert

        offence = await self._offenders.offences(tenant, scope, subject) + 1
        ttl = escalated_ttl(base_ttl, offence, self._max_ttl)
        block = await self._block(verdict, subject, mode, offence, ttl)
        try:
            await self._offenders.record_offence(tenant, scope, subject, blocked_for=ttl)
        except StoreUnavailable:
            log.warning("offence %d of %s %s=%s not counted", offence, tenant, scope, subject)
        outcome: Outcome = "shadowed" if mode == DetectionMode.SHADOW else "blocked"
        if outcome == "shadowed":
            kind = BLOCK_SHADOWED
        else:
            kind = BLOCK_ESCALATED if offence > 1 else BLOCK_CREATED
        alert = new_alert_event(
            tenant,
            kind,
            scope,
            subject,
            explanation=verdict.explanation(),
            block_id=block.id,
            mode=mode,
            ttl_seconds=ttl,
            offence=offence,
        )
        return ActionResult(outcome, block.id, ttl, offence), alert

    async def _block(
        self, verdict: Verdict, subject: str, mode: str, offence: int, ttl: int
    ) -> Block:
        """The block, made and audited; lifted again if it could not be audited."""
        explanation: dict[str, Any] = verdict.explanation()
        explanation.update(offence=offence, ttl_seconds=ttl)
        block = await self._blocks.create(
            verdict.tenant,
            verdict.scope,
            subject,
            ttl,
            _reason(verdict),
            mode=mode,
            source="detector",
            detector=verdict.detector,
            score=verdict.score,
            explanation=explanation,
            incident_id=verdict.campaign.incident_id if verdict.campaign else None,
        )
        event = new_audit_event(
            verdict.tenant,
            f"detector:{verdict.detector}",
            AUDIT_BLOCK_CREATED,
            block.id,
            {
                "scope": block.scope,
                "value": block.value,
                "ttl": ttl,
                "reason": block.reason,
                "mode": block.mode,
                "source": "detector",
                "detector": verdict.detector,
                "detector_version": verdict.detector_version,
                "score": round(verdict.score, 4),
                "threshold": verdict.threshold,
                "offence": offence,
            },
        )
        try:
            await self._audit.record(event)
        except AuditUnavailable:
            with contextlib.suppress(LimiterError):
                await self._blocks.remove(verdict.tenant, block.id)
            raise
        return block


def _stops(block: Block, scope: str, subject: str, mode: str) -> bool:
    """Whether ``block`` makes a new block of ``subject`` in ``mode`` pointless."""
    return (block.scope, block.value) == (scope, subject) and block.mode in ("enforce", mode)


def _reason(verdict: Verdict) -> str:
    reason = (
        verdict.reasons[0]
        if verdict.reasons
        else f"{verdict.detector} score {verdict.score:.2f} >= {verdict.threshold}"
    )
    return reason[:MAX_REASON_LENGTH]
