"""What each source address has been doing: the behaviour a coordinated campaign shares.

A campaign's sources each stay below every per-source threshold; what gives them away is
that they behave alike.  ``SourceBook`` keeps, per (tenant, address), the few facts that
describe how it behaves, independent of its rate:

- when it started (its first decision still remembered) and how fast it goes;
- the route *template* it uses most and that template's share of its checks (a template is
  the route with every path segment holding a digit replaced by ``*``: ``/shop/item/42``
  and ``/shop/item/43`` are one template, two *instances*);
- how often a check names an identity (user id, else key) the source had not used before:
  1 for a credential stuffer trying a new account each time, 0 for a person signed in;
- how often a check on the top template names an instance not seen before: 1 for a crawler
  walking a catalogue page by page, 0 for a client calling its own endpoints;
- its user agents (how many, and whether browser-shaped or tool-shaped) and its denials.

"Seen before" is remembered in bounded sets (``SEEN_CAP`` values, forgotten all at once
when full): a source then counts one fresh value again, which moves a rate of thousands of
checks by nothing.  A source silent for ``forget_ms`` is dropped, so memory follows the
addresses active in the last minutes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import polars as pl

SEEN_CAP = 256  # distinct identities / route instances remembered per source
AGENT_CAP = 16  # distinct user agents remembered per source
# a path segment holding a digit is an id (a page number, an order, a user), not a place
_ID_SEGMENT = r"/[^/?#]*[0-9][^/?#]*"
_BROWSER_PREFIX = "Mozilla/"


@dataclass(slots=True)
class _Template:
    checks: int = 0
    fresh: int = 0  # checks on an instance this source had not used before
    seen: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Source:
    """One address's behaviour.  Times are epoch milliseconds."""

    tenant: str
    ip: str
    first_ms: int
    last_ms: int
    checks: int = 0
    denied: int = 0
    signed_in: int = 0  # checks with a user id
    tool_agents: int = 0  # checks with a user agent that is not browser-shaped
    fresh_identities: int = 0
    identities: set[str] = field(default_factory=set)
    agents: set[str] = field(default_factory=set)
    templates: dict[str, _Template] = field(default_factory=dict)
    top: str = ""  # the template most of its checks used (kept as counts grow)

    @property
    def top_template(self) -> tuple[str, int]:
        """The route template most of its checks used, and how many did."""
        tally = self.templates.get(self.top)
        return (self.top, tally.checks) if tally is not None else ("", 0)

    def identity_churn(self) -> float:
        """Share of its checks after the first that named a new identity (0 to 1)."""
        if self.checks < 2:
            return 0.0
        return min(1.0, max(0, self.fresh_identities - 1) / (self.checks - 1))

    def instance_churn(self) -> float:
        """Share of its checks on the top template after the first that named a new
        instance of it (0 to 1)."""
        name, checks = self.top_template
        if checks < 2:
            return 0.0
        return min(1.0, max(0, self.templates[name].fresh - 1) / (checks - 1))

    def rate(self, now_ms: int) -> float:
        """Checks per second since it started (at least ten seconds' worth, so that two
        checks a moment apart do not read as a flood)."""
        span = max(10_000, now_ms - self.first_ms)
        return self.checks * 1000 / span

    def tool_share(self) -> float:
        return self.tool_agents / self.checks if self.checks else 0.0

    def deny_share(self) -> float:
        return self.denied / self.checks if self.checks else 0.0

    def signed_in_share(self) -> float:
        return self.signed_in / self.checks if self.checks else 0.0

    def log_rate(self, now_ms: int) -> float:
        return math.log(self.rate(now_ms))


def _remember(seen: set[str], value: str, cap: int) -> bool:
    """Whether ``value`` is new to ``seen`` (and remember it; the set starts afresh when
    full)."""
    if value in seen:
        return False
    if len(seen) >= cap:
        seen.clear()
    seen.add(value)
    return True


class SourceBook:
    """Per-address behaviour of every tenant, updated from decision frames."""

    def __init__(self, *, forget_ms: int = 600_000) -> None:
        if forget_ms <= 0:
            raise ValueError(f"forget_ms {forget_ms!r} must be positive")
        self._forget_ms = forget_ms
        self._sources: dict[tuple[str, str], Source] = {}

    def __len__(self) -> int:
        return len(self._sources)

    def get(self, tenant: str, ip: str) -> Source | None:
        return self._sources.get((tenant, ip))

    def tenants(self) -> set[str]:
        return {tenant for tenant, _ in self._sources}

    def active(self, since_ms: int) -> Iterator[Source]:
        """The sources with a decision at or after ``since_ms``."""
        return (source for source in self._sources.values() if source.last_ms >= since_ms)

    def forget(self, now_ms: int) -> None:
        """Drop the sources silent for ``forget_ms``."""
        horizon = now_ms - self._forget_ms
        for pair in [pair for pair, s in self._sources.items() if s.last_ms < horizon]:
            del self._sources[pair]

    def observe(self, frame: pl.DataFrame) -> None:
        """Count decisions in (a ``detectors.features.FRAME_SCHEMA`` frame; rows without an
        address are nobody's)."""
        rows = frame.filter(pl.col("ip").is_not_null())
        if rows.is_empty():
            return
        rows = rows.sort("ts").with_columns(
            pl.coalesce("user_id", "key").fill_null("").alias("_identity"),
            pl.col("route").fill_null("").alias("_route"),
            pl.col("route").fill_null("").str.replace_all(_ID_SEGMENT, "/*").alias("_template"),
        )
        self._count_sources(rows)
        self._count_identities(rows)
        self._count_routes(rows)

    def _count_sources(self, rows: pl.DataFrame) -> None:
        per_source = rows.group_by("tenant", "ip").agg(
            pl.len().alias("checks"),
            pl.col("ts").min().alias("first"),
            pl.col("ts").max().alias("last"),
            pl.col("allowed").not_().fill_null(False).sum().alias("denied"),
            pl.col("user_id").is_not_null().sum().alias("signed_in"),
            (
                pl.col("user_agent").is_not_null()
                & pl.col("user_agent").str.starts_with(_BROWSER_PREFIX).not_()
            )
            .sum()
            .alias("tools"),
            pl.col("user_agent").drop_nulls().unique().head(AGENT_CAP).alias("agents"),
        )
        for (
            tenant,
            ip,
            checks,
            first,
            last,
            denied,
            signed_in,
            tools,
            agents,
        ) in per_source.iter_rows():
            source = self._sources.get((tenant, ip))
            if source is None:
                source = self._sources[(tenant, ip)] = Source(tenant, ip, first, last)
            source.first_ms = min(source.first_ms, first)
            source.last_ms = max(source.last_ms, last)
            source.checks += checks
            source.denied += denied
            source.signed_in += signed_in
            source.tool_agents += tools
            for agent in agents:
                if len(source.agents) < AGENT_CAP:
                    source.agents.add(agent)

    def _count_identities(self, rows: pl.DataFrame) -> None:
        # within one frame a repeated identity is fresh at most once, as it would be row by row
        identities = rows.group_by("tenant", "ip").agg(pl.col("_identity").unique())
        for tenant, ip, values in identities.iter_rows():
            source = self._sources[(tenant, ip)]
            for value in values:
                if _remember(source.identities, value, SEEN_CAP):
                    source.fresh_identities += 1

    def _count_routes(self, rows: pl.DataFrame) -> None:
        routes = rows.group_by("tenant", "ip", "_template").agg(
            pl.len().alias("checks"), pl.col("_route").unique().alias("instances")
        )
        for tenant, ip, template, checks, instances in routes.iter_rows():
            source = self._sources[(tenant, ip)]
            tally = source.templates.get(template)
            if tally is None:
                if len(source.templates) >= SEEN_CAP:
                    source.templates.clear()  # a source using hundreds of places: start afresh
                    source.top = ""
                tally = source.templates[template] = _Template()
            tally.checks += checks
            top = source.templates.get(source.top)
            if top is None or tally.checks > top.checks:
                source.top = template
            for instance in instances:
                if _remember(tally.seen, instance, SEEN_CAP):
                    tally.fresh += 1
