"""Coordinated campaigns: many sources, each below any per-source threshold, that started
together and behave alike, found as a group and blocked together with one explanation.

Each round, the sources active in the last minute (``detectors.sources``) with at least
``min_checks`` checks are described by what a campaign's sources share and a crowd of
people does not:

1. **Shape** (exact): a source is *campaign-shaped* when at least ``min_route_share`` of
   its checks go to one route template and either it names a new identity on most checks
   (``rotating``: trying accounts, keys or ids) or, without signing in, it names a new
   instance of the template on most checks (``walking``: a crawl).  A person signed in
   uses one identity; a launch crowd hits one page; an office behind one address spreads
   over many routes; a partner or a probe calls the same few endpoints.  Sources of the
   same tenant, template, shape and user-agent kind (browser or tool) form a partition.
2. **Timing** (clustered): a campaign is founded by *sure* sources (at least
   ``min_fresh`` identities or pages shown: two people of one household sharing an
   address rotate between two identities, a stuffer soon shows many).  If a partition
   has at least ``min_members`` sure sources, DBSCAN over their standardised behaviour
   vectors (onset, log rate, denied share, each divided by its scale below) keeps those
   that started together and go at a similar pace; a cluster of at least ``min_members``
   founds a campaign, which the partition's other sources join.

A campaign lives on: a later source of the same partition joins it at once (the stragglers
of a staggered start), and it ends when none of its members has been seen for
``close_after_ms``.  A restarted detector carries on the campaigns of the incidents still
open (``resume``), so that the same campaign keeps its incident.  Every member gets one
verdict, warranted at ``SCORE``, sharing the campaign's explanation and naming it
(``Verdict.campaign``).  The settings were chosen on the training seeds of
``bench/detection_families.py`` only.

A tenant may tune campaign detection (``limiter.state.tenants.CampaignTuning``, handed in as
``tenant_settings`` before each round): with it off, its sources found no campaign and its
open ones end; its ``min_members`` replaces the founding size of its partitions.
"""

from __future__ import annotations

import itertools
import secrets
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from detectors.clustering import dbscan_labels
from detectors.sources import Source, SourceBook
from detectors.verdict import CampaignRef, Signal, Verdict
from limiter.state.tenants import DEFAULT_CAMPAIGN_TUNING, CampaignTuning

# "pressing": many addresses on one account; "sharing": on one key that its old addresses
# go on using (``detectors.targets``)
Shape = Literal["rotating", "walking", "pressing", "sharing"]
DETECTOR = "campaign"
DETECTOR_VERSION = "campaign-1"
SCORE = 0.9  # what a campaign verdict scores: above the detectors' 0.8, below the rules'
THRESHOLD = 0.8
FAMILIES: dict[Shape, str] = {
    "rotating": "credential-stuffing",
    "walking": "scraping",
    "pressing": "brute-force",
    "sharing": "leaked-key",
}
PRESSED: tuple[Shape, ...] = ("pressing", "sharing")  # a pressed account's (``Signature.target``)
MAX_EVIDENCE_AGENTS = 5


@dataclass(frozen=True, slots=True)
class CampaignSettings:
    """The thresholds of campaign detection (chosen on training seeds only).

    Scales: a difference of one scale in one feature is one unit of DBSCAN's distance.
    """

    min_members: int = 5
    min_checks: int = 2
    active_ms: int = 60_000
    min_route_share: float = 0.8
    min_churn: float = 0.5
    min_fresh: int = 3  # identities or pages a founding member must have shown
    max_signed_in_walk: float = 0.5  # signed-in people browsing pages are not a crawl
    onset_scale_ms: float = 30_000.0
    log_rate_scale: float = 1.5
    deny_scale: float = 0.5
    eps: float = 1.0
    close_after_ms: int = 300_000

    def __post_init__(self) -> None:
        for name, least in (
            ("min_members", 2),
            ("min_checks", 2),
            ("min_fresh", 2),
            ("active_ms", 1),
            ("close_after_ms", 1),
        ):
            if getattr(self, name) < least:
                raise ValueError(
                    f"campaign setting {name}={getattr(self, name)!r} is below {least}"
                )
        for name in ("min_route_share", "min_churn", "max_signed_in_walk"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"campaign setting {name}={getattr(self, name)!r} is not in 0-1")
        for name in ("onset_scale_ms", "log_rate_scale", "deny_scale", "eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"campaign setting {name}={getattr(self, name)!r} must be > 0")


@dataclass(frozen=True, slots=True)
class Signature:
    """What every member of a campaign shares."""

    tenant: str
    template: str
    shape: Shape
    agents: str  # "browser" | "tool"
    target: str = ""  # the account its members press ("pressing" campaigns)


@dataclass
class Campaign:
    """One campaign as the detector knows it.  ``members``: address → when it joined."""

    id: str
    signature: Signature
    opened_ms: int
    onset_ms: int = 0  # when its earliest founding source began
    members: dict[str, int] = field(default_factory=dict)
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    closed_ms: int | None = None
    evidence: dict[str, object] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    signals: tuple[Signal, ...] = ()
    version: str = DETECTOR_VERSION  # the version of the detector that found it

    @property
    def family(self) -> str:
        return FAMILIES[self.signature.shape]

    def ref(self) -> CampaignRef:
        return CampaignRef(self.id, self.family, len(self.members), dict(self.evidence))

    def seen(self, first_ms: int, last_ms: int) -> None:
        """Its members were seen from ``first_ms`` (kept once known) to ``last_ms``."""
        self.first_seen_ms = self.first_seen_ms or first_ms
        self.last_seen_ms = max(self.last_seen_ms, last_ms)

    def verdict(self, ip: str, now_ms: int, window_seconds: int, detector_version: str) -> Verdict:
        """The verdict on a member that joined it: warranted at ``SCORE``, with the campaign's
        explanation, naming it.  ``detector_version``: that of the detector judging now (a campaign
        carried on from an earlier detector keeps its own ``version``)."""
        return Verdict(
            tenant=self.signature.tenant,
            scope="ip",
            subject=ip,
            score=SCORE,
            threshold=THRESHOLD,
            detector=DETECTOR,
            detector_version=detector_version,
            window_seconds=window_seconds,
            observed_at_ms=now_ms,
            reasons=self.reasons,
            signals=self.signals,
            campaign=self.ref(),
        )


@dataclass(frozen=True, slots=True)
class CampaignChange:
    """What one round changed about a campaign: ``opened`` (new), ``updated`` (members
    joined) or ``closed``; ``joined`` the addresses that joined in this round."""

    kind: Literal["opened", "updated", "closed"]
    campaign: Campaign
    joined: tuple[str, ...] = ()


def new_incident_id() -> str:
    return "inc_" + secrets.token_hex(8)


def agent_evidence(kind: str, agents: Sequence[str]) -> dict[str, object]:
    """What a campaign's evidence says of its members' user agents (``agents``: the
    distinct ones, sorted)."""
    return {
        "user_agent_kind": kind,
        "user_agents": len(agents),
        "user_agent_examples": list(agents[:MAX_EVIDENCE_AGENTS]),
    }


def rate_summary(rates: Sequence[float], per_seconds: float = 1) -> dict[str, float]:
    """The least, median and greatest of the members' rates (each over ``per_seconds``),
    per second, as a campaign's evidence gives them."""
    return {
        "min": round(min(rates) / per_seconds, 3),
        "median": round(statistics.median(rates) / per_seconds, 3),
        "max": round(max(rates) / per_seconds, 3),
    }


def _shape(source: Source, settings: CampaignSettings) -> tuple[Shape, bool] | None:
    """The source's campaign shape, if it has one, and whether it is *sure*: shown by at
    least ``min_fresh`` identities or pages (two people sharing a household's address
    rotate between two identities; a stuffer soon shows many)."""
    template, checks = source.top_template
    if not template or checks < settings.min_route_share * source.checks:
        return None
    if source.identity_churn() >= settings.min_churn:
        return "rotating", source.fresh_identities >= settings.min_fresh
    if (
        source.instance_churn() >= settings.min_churn
        and source.signed_in_share() <= settings.max_signed_in_walk
    ):
        return "walking", source.templates[template].fresh >= settings.min_fresh
    return None


def _signature(source: Source, shape: Shape) -> Signature:
    agents = "tool" if source.tool_share() > 0.5 else "browser"
    return Signature(source.tenant, source.top_template[0], shape, agents)


class CampaignDetector:
    """Finds campaigns among the sources of a ``SourceBook``; keeps them while they last."""

    def __init__(
        self, settings: CampaignSettings | None = None, book: SourceBook | None = None
    ) -> None:
        self.settings = settings or CampaignSettings()
        self.book = book if book is not None else SourceBook()
        self._open: dict[Signature, Campaign] = {}
        # tenant -> its own settings; a tenant missing has the detectors' own
        self.tenant_settings: dict[str, CampaignTuning] = {}

    @property
    def campaigns(self) -> list[Campaign]:
        """The open campaigns."""
        return list(self._open.values())

    def tuning(self, tenant: str) -> CampaignTuning:
        return self.tenant_settings.get(tenant, DEFAULT_CAMPAIGN_TUNING)

    def tenants(self) -> set[str]:
        """The tenants the detector knows sources or open campaigns of: those whose
        settings the next round needs."""
        return self.book.tenants() | {signature.tenant for signature in self._open}

    def resume(self, campaign: Campaign) -> bool:
        """Carry on ``campaign`` (one a previous detector found, still open): sources of its
        signature join it rather than found another.  False, and nothing changed, if a
        campaign of that signature is open already."""
        if campaign.signature in self._open:
            return False
        self._open[campaign.signature] = campaign
        return True

    def evaluate(self, now_ms: int) -> tuple[list[Verdict], list[CampaignChange]]:
        """Verdicts for the sources that joined a campaign in this round, and what changed."""
        settings = self.settings
        partitions: dict[Signature, list[Source]] = {}
        sure: dict[Signature, list[Source]] = {}
        for source in self.book.active(now_ms - settings.active_ms):
            if source.checks < settings.min_checks or not self.tuning(source.tenant).enabled:
                continue
            found = _shape(source, settings)
            if found is not None:
                signature = _signature(source, found[0])
                partitions.setdefault(signature, []).append(source)
                if found[1]:
                    sure.setdefault(signature, []).append(source)
        verdicts: list[Verdict] = []
        changes: list[CampaignChange] = []
        for signature, sources in partitions.items():
            campaign = self._open.get(signature)
            kind: Literal["opened", "updated"]
            if campaign is None:
                # founded by sure sources only; then the whole partition joins, as it would
                # one round later
                least = self.tuning(signature.tenant).min_members or settings.min_members
                founders = self._cluster(sure.get(signature, []), now_ms, least)
                if not founders:
                    continue
                campaign = self._open[signature] = Campaign(
                    new_incident_id(), signature, now_ms, onset_ms=min(s.first_ms for s in founders)
                )
                kind = "opened"
            else:
                kind = "updated"
            # a campaign's members started with it or after it: a source of the same shape
            # that was there well before (someone browsing item pages all along) did not
            # start together with it, whatever it shows now
            since = campaign.onset_ms - settings.onset_scale_ms
            joined = [s for s in sources if s.ip not in campaign.members and s.first_ms >= since]
            for source in joined:
                campaign.members[source.ip] = now_ms
            self._describe(campaign, now_ms)
            if joined:
                ips = tuple(s.ip for s in joined)
                changes.append(CampaignChange(kind, campaign, ips))
                window = settings.active_ms // 1000
                verdicts += [campaign.verdict(ip, now_ms, window, DETECTOR_VERSION) for ip in ips]
        for signature, campaign in list(self._open.items()):
            last = max(
                (
                    s.last_ms
                    for ip in campaign.members
                    if (s := self.book.get(signature.tenant, ip))
                ),
                default=campaign.last_seen_ms,
            )
            campaign.last_seen_ms = max(campaign.last_seen_ms, last)
            quiet = now_ms - campaign.last_seen_ms >= settings.close_after_ms
            if quiet or not self.tuning(signature.tenant).enabled:
                campaign.closed_ms = now_ms
                del self._open[signature]
                changes.append(CampaignChange("closed", campaign))
        self.book.forget(now_ms)
        return verdicts, changes

    def _cluster(self, sources: Sequence[Source], now_ms: int, least: int) -> list[Source]:
        """The largest group of ``sources`` that started together at a similar pace, if it
        has at least ``least`` sources."""
        settings = self.settings
        if len(sources) < least:
            return []
        vectors = np.array(
            [
                [
                    s.first_ms / settings.onset_scale_ms,
                    s.log_rate(now_ms) / settings.log_rate_scale,
                    s.deny_share() / settings.deny_scale,
                ]
                for s in sources
            ]
        )
        labels = dbscan_labels(vectors, settings.eps, least)
        clusters = [label for label in set(labels.tolist()) if label >= 0]
        if not clusters:
            return []
        biggest = max(clusters, key=lambda label: int((labels == label).sum()))
        return [s for s, label in zip(sources, labels, strict=True) if label == biggest]

    def _describe(self, campaign: Campaign, now_ms: int) -> None:
        """The evidence every member's block shares, from its members' behaviour now."""
        members = [
            s for ip in campaign.members if (s := self.book.get(campaign.signature.tenant, ip))
        ]
        if not members:
            return
        sig = campaign.signature
        onsets = [s.first_ms for s in members]
        rates = [s.rate(now_ms) for s in members]
        churn = [
            s.identity_churn() if sig.shape == "rotating" else s.instance_churn() for s in members
        ]
        denied = [s.deny_share() for s in members]
        agents = sorted(set(itertools.chain.from_iterable(s.agents for s in members)))
        campaign.seen(min(onsets), max(s.last_ms for s in members))
        spread = (max(onsets) - min(onsets)) / 1000
        what = (
            f"a new identity on {statistics.median(churn):.0%} of its checks"
            if sig.shape == "rotating"
            else f"a new page of it on {statistics.median(churn):.0%} of its checks"
        )
        reason = (
            f"coordinated {campaign.family} campaign: {len(campaign.members)} addresses "
            f"started within {spread:.0f} s, each on route {sig.template} with {what}, "
            f"at {min(rates):.2f}-{max(rates):.2f} checks/s each, "
            f"{len(agents)} {sig.agents} user agent{'s' if len(agents) != 1 else ''} among them"
        )
        campaign.reasons = (reason,)
        campaign.signals = (
            Signal("members", float(len(campaign.members)), 1.0, 0.4),
            Signal("onset_spread_seconds", round(spread, 1), 0.0, 0.2),
            Signal(f"{sig.shape}_share", round(statistics.median(churn), 3), 0.0, 0.2),
            Signal("rate_per_source", round(statistics.median(rates), 3), 0.0, 0.1),
            Signal("denied_share", round(statistics.median(denied), 3), 0.0, 0.1),
        )
        campaign.evidence = {
            "route_template": sig.template,
            "behaviour": sig.shape,
            **agent_evidence(sig.agents, agents),
            "onset_spread_seconds": round(spread, 1),
            "rate_per_source": rate_summary(rates),
            f"{sig.shape}_share_median": round(statistics.median(churn), 3),
            "denied_share_median": round(statistics.median(denied), 3),
            "checks": sum(s.checks for s in members),
        }
