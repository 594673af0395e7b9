"""Many addresses pressing one account: a brute force spread over addresses, grouped by
the account it targets and blocked together with one explanation.

Each address of a brute force on one account may look like a client retrying past its
limit: one identity, one route, partly denied.  What gives it away is shared: the same
account (a user id, or the key that carries the credential) is suddenly checked from
several addresses it never came from, each of them there for that account only.
``TargetBook`` (``detectors.identities``) keeps, per (tenant, identity), which addresses
used it, since when, how often and how often they were denied; ``TargetDetector`` judges
each identity against its own history and against the tenant's identities:

- **members**: addresses that used the identity in the last minute, at least
  ``min_checks`` times, first used it within ``new_ms`` (new to it) and after the book had
  watched the tenant for ``history_ms`` (in a detector's first minute every address is new
  to every identity), and use no more than ``max_identities`` identities in all
  (``detectors.sources``): an address dedicated to the account.  A NAT office's or a
  carrier's address carries many accounts, so a person hopping between a carrier's
  addresses brings none;
- **many of them**: at least ``min_addresses``, at least ``address_factor`` times the
  addresses the identity used before (its own history: an account used from one place
  every day), and at least ``population_factor`` times the ``population_quantile`` of the
  tenant's active identities' address counts (a tenant whose people each use three
  devices needs more);
- **pressing**: their checks on the identity are at least ``min_denied`` denied, or
  together at least ``rate_factor`` times the tenant's median pace of an identity.  A
  person on three devices is neither.

A pressed identity is a campaign (``detectors.campaigns.Campaign`` with the shape
``pressing``, family ``brute-force``; ``sharing``, family ``leaked-key``, for a key whose
earlier addresses go on using it): its members get one verdict each, with one explanation
and one incident; later addresses pressing it join at once; it closes when no member was
seen for ``close_after_ms``; a restarted detector carries it on (``resume``).  The identity
itself is the victim and is never blocked here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from detectors.campaigns import (
    PRESSED,
    Campaign,
    CampaignChange,
    Shape,
    Signature,
    agent_evidence,
    rate_summary,
)
from detectors.campaigns import new_incident_id as _new_id
from detectors.identities import Target, TargetBook
from detectors.sources import Source, SourceBook
from detectors.verdict import Signal, Verdict

DETECTOR_VERSION = "campaign-target-1"
POPULATION_EVERY_MS = 10_000  # how long a tenant's population summary is reused


@dataclass(frozen=True, slots=True)
class TargetSettings:
    """The thresholds of pressed-identity detection (chosen on training seeds only)."""

    min_addresses: int = 3
    address_factor: float = 2.0
    population_factor: float = 3.0
    population_quantile: float = 0.5  # robust to attacks on up to half the active accounts
    min_checks: int = 2
    max_identities: int = 2
    min_denied: float = 0.5
    rate_factor: float = 10.0
    new_ms: int = 120_000
    history_ms: int = 60_000
    active_ms: int = 60_000
    join_before_ms: int = 30_000  # a member began at most this long before the campaign
    close_after_ms: int = 300_000
    forget_ms: int = 600_000

    def __post_init__(self) -> None:
        for name, least in (
            ("min_addresses", 2),
            ("min_checks", 1),
            ("max_identities", 1),
            ("new_ms", 1),
            ("history_ms", 0),
            ("active_ms", 1),
            ("join_before_ms", 0),
            ("close_after_ms", 1),
            ("forget_ms", 1),
        ):
            if getattr(self, name) < least:
                raise ValueError(f"target setting {name}={getattr(self, name)!r} is below {least}")
        for name in ("min_denied", "population_quantile"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"target setting {name}={getattr(self, name)!r} is not in 0-1")
        for name in ("address_factor", "population_factor", "rate_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"target setting {name}={getattr(self, name)!r} must be > 0")


@dataclass(frozen=True, slots=True)
class _Population:
    """What a tenant's active identities are like: how many addresses each comes from (the
    ``population_quantile``) and how fast each is used (the median checks per minute)."""

    addresses: float
    pace: float


class TargetDetector:
    """Finds identities pressed from many new addresses; keeps each as a campaign while it
    lasts.  ``sources``: the per-address behaviour (how many identities each uses)."""

    def __init__(
        self,
        settings: TargetSettings | None = None,
        *,
        sources: SourceBook,
        book: TargetBook | None = None,
    ) -> None:
        self.settings = settings or TargetSettings()
        self.sources = sources
        self.book = book if book is not None else TargetBook(forget_ms=self.settings.forget_ms)
        self._open: dict[tuple[str, str], Campaign] = {}
        self._populations: dict[str, tuple[int, _Population]] = {}
        # the addresses each pressed identity came from before its campaign began
        self._usual: dict[tuple[str, str], int] = {}

    @property
    def campaigns(self) -> list[Campaign]:
        return list(self._open.values())

    def resume(self, campaign: Campaign) -> bool:
        """Carry on ``campaign`` (a pressed account a previous detector found, still open,
        as ``detectors.incidents.campaign_of`` rebuilds it): later addresses pressing its
        account join it rather than found another, judged against the addresses its
        evidence says the account usually came from.  False, and nothing changed, if it
        names no account or that (tenant, account) has an open campaign already."""
        signature = campaign.signature
        pair = (signature.tenant, signature.target)
        if signature.shape not in PRESSED or not signature.target or pair in self._open:
            return False
        usual = campaign.evidence.get("usual_addresses")
        self._open[pair] = campaign
        self._usual[pair] = usual if isinstance(usual, int) and usual >= 0 else 0
        return True

    def evaluate(self, now_ms: int) -> tuple[list[Verdict], list[CampaignChange]]:
        """Verdicts for the addresses that joined a campaign in this round, and what changed."""
        settings = self.settings
        since = now_ms - settings.active_ms
        verdicts: list[Verdict] = []
        changes: list[CampaignChange] = []
        kind: Literal["opened", "updated"]
        for target in self.book.shared(since):
            members, usual, carrying_on = self._members(target, since, now_ms)
            pair = (target.tenant, target.value)
            campaign = self._open.get(pair)
            if campaign is None:
                if len(members) < settings.min_addresses:  # nearly always: no need to look on
                    continue
                population = self._population(target.tenant, since, now_ms)
                if not self._pressed(target, members, usual, population, now_ms):
                    continue
                # a key used before from elsewhere, whose old addresses go on while new ones
                # flock to it, is shared (leaked) rather than guessed at
                shape: Shape = "sharing" if target.scope == "key" and carrying_on else "pressing"
                campaign = self._open[pair] = Campaign(
                    _new_id(),
                    Signature(
                        target.tenant,
                        _template(members),
                        shape,
                        _agents(members),
                        target=target.value,
                    ),
                    now_ms,
                    onset_ms=min(target.uses[s.ip].first_ms for s in members),
                    version=DETECTOR_VERSION,
                )
                self._usual[pair] = usual
                kind = "opened"
            else:
                kind = "updated"
            earliest = campaign.onset_ms - settings.join_before_ms
            joined = [
                s
                for s in members
                if s.ip not in campaign.members and target.uses[s.ip].first_ms >= earliest
            ]
            for source in joined:
                campaign.members[source.ip] = now_ms
            if joined:
                population = self._population(target.tenant, since, now_ms)
                self._describe(campaign, target, self._usual[pair], population, now_ms)
                ips = tuple(s.ip for s in joined)
                changes.append(CampaignChange(kind, campaign, ips))
                window = settings.active_ms // 1000
                verdicts += [campaign.verdict(ip, now_ms, window, DETECTOR_VERSION) for ip in ips]
        for pair, campaign in list(self._open.items()):
            pressed = self.book.get(*pair)
            if pressed is not None:
                last = max(
                    (u.last_ms for ip in campaign.members if (u := pressed.uses.get(ip))),
                    default=campaign.last_seen_ms,
                )
                campaign.last_seen_ms = max(campaign.last_seen_ms, last)
            if now_ms - campaign.last_seen_ms >= settings.close_after_ms:
                campaign.closed_ms = now_ms
                del self._open[pair]
                self._usual.pop(pair, None)
                changes.append(CampaignChange("closed", campaign))
        self.book.forget(now_ms)
        return verdicts, changes

    def _population(self, tenant: str, since: int, now_ms: int) -> _Population:
        """The tenant's active identities summed up, computed at most every
        ``POPULATION_EVERY_MS`` (it moves slowly; a pass over every identity does not)."""
        cached = self._populations.get(tenant)
        if cached is not None and now_ms - cached[0] < POPULATION_EVERY_MS:
            return cached[1]
        counts: list[int] = []
        paces: list[float] = []
        for target in self.book.active(since):
            if target.tenant != tenant:
                continue
            uses = [u for u in target.uses.values() if u.last_ms >= since]
            counts.append(len(uses))
            paces.append(sum(u.pace(now_ms) for u in uses))
        population = _Population(
            float(np.quantile(np.array(counts), self.settings.population_quantile)),
            float(np.median(np.array(paces))),
        )
        self._populations[tenant] = (now_ms, population)
        return population

    def _members(self, target: Target, since: int, now_ms: int) -> tuple[list[Source], int, bool]:
        """The addresses new to ``target`` and dedicated to it that used it lately, how many
        addresses it came from before them, and whether one of those goes on using it."""
        settings = self.settings
        watched = self.book.watched_since(target.tenant)
        if watched is None:
            return [], 0, False
        newer = max(now_ms - settings.new_ms, watched + settings.history_ms)
        members, usual, carrying_on = [], 0, False
        for ip, use in target.uses.items():
            if use.first_ms < newer:
                usual += 1
                carrying_on = carrying_on or use.last_ms >= since
                continue
            if use.last_ms < since or use.checks < settings.min_checks:
                continue
            source = self.sources.get(target.tenant, ip)
            if source is not None and len(source.identities) <= settings.max_identities:
                members.append(source)
        return members, usual, carrying_on

    def _pressed(
        self,
        target: Target,
        members: list[Source],
        usual: int,
        population: _Population,
        now_ms: int,
    ) -> bool:
        settings = self.settings
        needed = max(
            settings.min_addresses,
            settings.address_factor * usual,
            settings.population_factor * population.addresses,
        )
        if len(members) < needed:
            return False
        uses = [target.uses[s.ip] for s in members]
        checks = sum(u.checks for u in uses)
        denied = sum(u.denied for u in uses) / checks
        pace = sum(u.pace(now_ms) for u in uses)
        return denied >= settings.min_denied or pace >= settings.rate_factor * population.pace

    def _describe(
        self, campaign: Campaign, target: Target, usual: int, population: _Population, now_ms: int
    ) -> None:
        members = [
            (s, u)
            for ip in campaign.members
            if (s := self.sources.get(target.tenant, ip)) and (u := target.uses.get(ip))
        ]
        if not members:
            return
        uses = [u for _, u in members]
        onsets = [u.first_ms for u in uses]
        paces = [u.pace(now_ms) for u in uses]
        checks = sum(u.checks for u in uses)
        denied = sum(u.denied for u in uses) / checks if checks else 0.0
        agents = sorted(set(itertools.chain.from_iterable(s.agents for s, _ in members)))
        spread = (max(onsets) - min(onsets)) / 1000
        campaign.seen(min(onsets), max(u.last_ms for u in uses))
        who = "user id" if target.scope == "user_id" else "key"
        what = (
            "a key shared beyond its owners: its earlier addresses go on, and"
            if campaign.signature.shape == "sharing"
            else "coordinated brute force on one account:"
        )
        campaign.reasons = (
            f"{what} {len(members)} addresses new to "
            f"{who} {target.value!r} pressed it within {spread:.0f} s, each using no other "
            f"account, {checks} checks, {denied:.0%} denied, {sum(paces):.0f} checks/min "
            f"together (it came from {usual} other address{'es' if usual != 1 else ''} "
            f"in the 10 minutes before; the tenant's accounts: {population.addresses:.0f} "
            f"address{'es' if population.addresses != 1 else ''} at the "
            f"{self.settings.population_quantile:.0%} quantile, {population.pace:.1f} "
            "checks/min at the median)",
        )
        campaign.signals = (
            Signal("members", float(len(members)), float(usual), 0.4),
            Signal("denied_share", round(denied, 3), 0.0, 0.2),
            Signal("rate_per_minute", round(sum(paces), 1), round(population.pace, 2), 0.2),
            Signal("onset_spread_seconds", round(spread, 1), 0.0, 0.2),
        )
        campaign.evidence = {
            "target": {"scope": target.scope, "value": target.value},
            "behaviour": campaign.signature.shape,
            "route_template": campaign.signature.template,
            "new_addresses": len(members),
            "usual_addresses": usual,
            "tenant_addresses_per_account": round(population.addresses, 2),
            "tenant_median_rate_per_account": round(population.pace, 2),
            "onset_spread_seconds": round(spread, 1),
            "rate_per_minute": round(sum(paces), 1),
            "rate_per_source": rate_summary(paces, per_seconds=60),
            "denied_share": round(denied, 3),
            **agent_evidence(campaign.signature.agents, agents),
            "checks": checks,
        }


def _template(members: list[Source]) -> str:
    templates = [s.top_template[0] for s in members]
    return max(set(templates), key=templates.count) if templates else ""


def _agents(members: list[Source]) -> str:
    tools = sum(1 for s in members if s.tool_share() > 0.5)
    return "tool" if tools * 2 > len(members) else "browser"
