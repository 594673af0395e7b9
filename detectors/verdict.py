"""A detector's conclusion about one subject, with the explanation a block carries.

The models (``detectors.policy``) produce verdicts; the actions (``detectors.actions``)
turn them into blocks, audit entries and alert events.  Everything here is plain data, so
both sides and the alert contract can share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Scope = Literal["ip", "key", "user_id"]
SCOPES: tuple[Scope, ...] = ("ip", "key", "user_id")
# distinct addresses a verdict names (``Verdict.ips``): enough for an office network or a
# partner's servers, few enough that a verdict on a botnet's target stays small
MAX_IPS = 64


@dataclass(frozen=True, slots=True)
class Signal:
    """One feature that pushed the score up: its value now and the baseline it was held
    against (the subject's own history, or the tenant's for subjects without one)."""

    feature: str
    value: float
    baseline: float
    weight: float = 0.0  # its share of the score, for ordering explanations


@dataclass(frozen=True, slots=True)
class CampaignRef:
    """The coordinated campaign a verdict's subject belongs to (``detectors.campaigns``):
    its incident id, family guess, members so far and the evidence they share."""

    incident_id: str
    family: str
    members: int
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``score`` is in [0, 1] and a block is warranted when it reaches ``threshold``.

    ``ips`` (warranted ``key`` and ``user_id`` verdicts of ``AbuseDetector`` only) are the
    distinct addresses the subject's decisions of the short window came from, sorted, at
    most ``MAX_IPS``; ``ips_truncated`` says there were more, ``ipless`` that some decisions
    came without an address.  ``BlockActions`` uses them to spare a subject whose traffic
    all came from allowlisted addresses, so it must be able to tell "all of them" apart.
    """

    tenant: str
    scope: Scope
    subject: str
    score: float
    threshold: float
    detector: str  # the layer that decided: "rules", "baseline", "isolation_forest", …
    detector_version: str
    window_seconds: int
    observed_at_ms: int
    reasons: tuple[str, ...] = ()  # one sentence each, e.g. "900 checks/min (baseline 3)"
    signals: tuple[Signal, ...] = field(default=())
    ips: tuple[str, ...] = ()
    ips_truncated: bool = False
    ipless: bool = False
    campaign: CampaignRef | None = None

    @property
    def warranted(self) -> bool:
        return self.score >= self.threshold

    def explanation(self) -> dict[str, Any]:
        """What a block, an audit entry and an alert say about why (and, for a campaign's
        member, the incident and the evidence its members share)."""
        explained = {
            "detector": self.detector,
            "detector_version": self.detector_version,
            "score": round(self.score, 4),
            "threshold": self.threshold,
            "window_seconds": self.window_seconds,
            "observed_at_ms": self.observed_at_ms,
            "reasons": list(self.reasons),
            "signals": [
                {
                    "feature": signal.feature,
                    "value": signal.value,
                    "baseline": signal.baseline,
                    "weight": round(signal.weight, 4),
                }
                for signal in self.signals
            ],
        }
        if self.campaign is not None:
            explained["incident_id"] = self.campaign.incident_id
            explained["campaign"] = {
                "family": self.campaign.family,
                "members": self.campaign.members,
                **self.campaign.evidence,
            }
        return explained
