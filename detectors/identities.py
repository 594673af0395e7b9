"""Which addresses used each identity, since when and how: what a pressed account shows.

``TargetBook`` keeps, per (tenant, identity), where the identity is the user id, else the
key (where the credential is when no user id is sent), the addresses that used it, when
each began and was last seen, its checks and denials.  ``detectors.targets`` judges the
identities used from more than one address (``TargetBook.shared``) against their own
history and the tenant's accounts.  An address silent for ``forget_ms`` is dropped from
an identity, an identity silent for ``forget_ms`` altogether; an identity remembers at most
``MAX_ADDRESSES`` addresses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

MAX_ADDRESSES = 1024  # addresses remembered per identity (a popular app key has more)
FORGET_EVERY_MS = 10_000


@dataclass(slots=True)
class Use:
    """One address's use of one identity.  Times are epoch milliseconds."""

    first_ms: int
    last_ms: int
    checks: int = 0
    denied: int = 0

    def pace(self, now_ms: int) -> float:
        """Checks per minute since it began (at least ten seconds' worth)."""
        return self.checks * 60_000 / max(10_000, now_ms - self.first_ms)


@dataclass(slots=True)
class Target:
    """One identity (a user id, else the key) and the addresses that used it."""

    tenant: str
    scope: str  # "user_id" | "key"
    value: str
    last_ms: int = 0
    uses: dict[str, Use] = field(default_factory=dict)


class TargetBook:
    """Per-identity addresses of every tenant, updated from decision frames."""

    def __init__(self, *, forget_ms: int = 600_000) -> None:
        if forget_ms <= 0:
            raise ValueError(f"forget_ms {forget_ms!r} must be positive")
        self._forget_ms = forget_ms
        self._targets: dict[tuple[str, str], Target] = {}
        self._shared: set[tuple[str, str]] = set()  # identities used from 2+ addresses
        self._tenant_start: dict[str, int] = {}
        self._forgot_ms = 0

    def __len__(self) -> int:
        return len(self._targets)

    def get(self, tenant: str, identity: str) -> Target | None:
        return self._targets.get((tenant, identity))

    def watched_since(self, tenant: str) -> int | None:
        """The tenant's first decision this book saw."""
        return self._tenant_start.get(tenant)

    def active(self, since_ms: int) -> Iterable[Target]:
        return (t for t in self._targets.values() if t.last_ms >= since_ms)

    def shared(self, since_ms: int) -> list[Target]:
        """The identities used from more than one address, active since ``since_ms``: the
        few a pressed account can be among."""
        found = (self._targets.get(pair) for pair in self._shared)
        return [t for t in found if t is not None and t.last_ms >= since_ms]

    def forget(self, now_ms: int) -> None:
        """Drop what was silent for ``forget_ms`` (at most every ``FORGET_EVERY_MS``: a few
        seconds more of memory cost nothing, a pass over every identity each round does)."""
        if now_ms - self._forgot_ms < FORGET_EVERY_MS:
            return
        self._forgot_ms = now_ms
        horizon = now_ms - self._forget_ms
        for pair in [pair for pair, t in self._targets.items() if t.last_ms < horizon]:
            del self._targets[pair]
            self._shared.discard(pair)
        for pair in list(self._shared):
            uses = self._targets[pair].uses
            for ip in [ip for ip, use in uses.items() if use.last_ms < horizon]:
                del uses[ip]
            if len(uses) < 2:
                self._shared.discard(pair)

    def observe(self, frame: pl.DataFrame) -> None:
        """Count decisions in (a ``detectors.features.FRAME_SCHEMA`` frame; rows without an
        address or an identity are nobody's)."""
        rows = frame.filter(
            pl.col("ip").is_not_null()
            & (pl.col("user_id").is_not_null() | pl.col("key").is_not_null())
        )
        if rows.is_empty():
            return
        for tenant, first in rows.group_by("tenant").agg(pl.col("ts").min()).iter_rows():
            if tenant not in self._tenant_start or first < self._tenant_start[tenant]:
                self._tenant_start[tenant] = first
        pairs = rows.group_by("tenant", pl.coalesce("user_id", "key").alias("identity"), "ip").agg(
            pl.col("user_id").is_not_null().any().alias("signed_in"),
            pl.len().alias("checks"),
            pl.col("allowed").not_().fill_null(False).sum().alias("denied"),
            pl.col("ts").min().alias("first"),
            pl.col("ts").max().alias("last"),
        )
        targets = self._targets
        for tenant, identity, ip, signed_in, checks, denied, first, last in pairs.iter_rows():
            target = targets.get((tenant, identity))
            if target is None:
                scope = "user_id" if signed_in else "key"
                target = targets[(tenant, identity)] = Target(tenant, scope, identity)
            target.last_ms = max(target.last_ms, last)
            use = target.uses.get(ip)
            if use is None:
                if len(target.uses) >= MAX_ADDRESSES:
                    continue  # a key of thousands of addresses: it has shown what it is
                use = target.uses[ip] = Use(first, last)
                if len(target.uses) == 2:
                    self._shared.add((tenant, identity))
            use.first_ms = min(use.first_ms, first)
            use.last_ms = max(use.last_ms, last)
            use.checks += checks
            use.denied += denied
