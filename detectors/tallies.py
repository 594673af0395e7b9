"""Per-subject tallies kept up to date as decisions arrive and leave the windows.

``ScopeTally`` holds, for every subject of one scope with decisions in the long window, the
integers of ``detectors.features.TALLY_SCHEMA``: decisions, denials and decisions at zero
in the short window; a count per (subject, value) pair for each value whose distinct
number is a feature, so that a distinct count changes only when a pair's count leaves or
reaches zero; the sum and the sum of squares of the gaps between its consecutive decisions;
and the long window's decisions and addresses.  ``RouteTally`` counts each tenant's routes
and their callers, which decide the novel routes.

A decision's arrival or departure costs one dictionary lookup per distinct key of its
batch (``detectors.slots``) and numpy arithmetic; what stays in the window costs nothing.
The gaps are kept exact: a decision records the gap to the next decision of each of its
subjects when that one arrives, and takes it out of the sums when it leaves.  A decision
that arrives before its subject's latest (from a slower partition) has its subject's gaps
recomputed from the subject's decisions in the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from detectors.features import (
    DISTINCT,
    HASHED,
    IDENTITIES,
    PRIOR_SCHEMA,
    ROUTE_MIX_BY_ADDRESS,
    ROUTE_SCHEMA,
    TALLY_SCHEMA,
    plogp,
)
from detectors.recent import RecentRows
from detectors.slots import Ints, Keys, Mask, SlotTable
from detectors.verdict import Scope

Floats = npt.NDArray[np.float64]
Prior = tuple[Ints, Ints]  # slots, and the decisions each one gained


@dataclass
class Batch:
    """Decisions being folded into the window, in time order, as numpy columns."""

    raw: pl.DataFrame
    seq: Ints
    ts: Ints
    tenant: Ints  # the window's tenant numbers
    denied: Mask
    at_zero: Mask
    present: dict[str, Mask]  # per column of HASHED: not null
    values: dict[str, Keys]  # per column of HASHED: its hash
    subjects: dict[Scope, Keys]  # per scope: the subject's hash
    pairs: dict[tuple[Scope, str], Keys]  # per scope and column: the (subject, value) hash
    route_keys: Keys  # (tenant, route)
    caller_keys: Keys  # (tenant, route, ip, key)
    pops: Ints = field(default_factory=lambda: np.zeros(0, np.int64))  # route slots


@dataclass
class PriorShare:
    """What decisions that moved into one bucket of the long window added to a scope."""

    subjects: list[Prior] = field(default_factory=list)
    addresses: list[Prior] = field(default_factory=list)  # (subject, ip) pairs

    def absorb(self, other: PriorShare) -> None:
        """Add what ``other`` added, kept summed: a bucket gathers the expirations of every
        evaluation during its minute, mostly of the same subjects, and holds one (slots,
        decisions) pair per kind instead of one per expiration (``expire_prior`` sums them
        anyway)."""
        if other.subjects:
            self.subjects = [_summed(self.subjects + other.subjects)]
        if other.addresses:
            self.addresses = [_summed(self.addresses + other.addresses)]


def row_columns(scopes: tuple[Scope, ...]) -> dict[str, npt.DTypeLike]:
    """The per-decision columns of ``RecentRows`` the tallies of ``scopes`` use."""
    columns: dict[str, npt.DTypeLike] = {"denied": np.bool_, "at_zero": np.bool_}
    columns |= {"route.pop": np.int32, "route.caller": np.int32}
    for scope in scopes:
        columns[f"{scope}.slot"] = np.int32
        columns[f"{scope}.gap"] = np.int64
        columns |= {f"{scope}.{kind}": np.int32 for kind in HASHED if kind != scope}
    return columns


class ScopeTally:
    """The tallies of one scope's subjects (see the module docstring)."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        # a subject's own scope has one distinct value, itself
        self.kinds = tuple(kind for kind in HASHED if kind != scope)
        columns = ["tenant", "checks", "denied", "at_zero", "gap_sum", "gap_sq", "last_ts"]
        columns += ["last_seq", "prior_checks", "prior_ips", "long_ips"]
        columns += [f"distinct_{kind}" for kind in self.kinds]
        self.subjects = SlotTable(dict.fromkeys(columns, np.int64) | {"name": np.object_})
        self.pairs: dict[str, SlotTable] = {}
        for kind in self.kinds:
            pair_columns: dict[str, npt.DTypeLike] = {"owner": np.int64, "count": np.int64}
            if kind == "ip":  # the long window's addresses
                pair_columns |= {"prior": np.int64, "value": np.uint64}
            if kind == "route":
                pair_columns["pop"] = np.int64
            if scope == "ip" and kind in IDENTITIES:  # the identity, for its novelty
                pair_columns["ident"] = np.uint64
            self.pairs[kind] = SlotTable(pair_columns)

    # -- arrivals -------------------------------------------------------------------------

    def add(self, batch: Batch, rows: RecentRows) -> None:
        """Count ``batch`` (already appended to ``rows``) in."""
        mine = batch.present[self.scope]
        if not mine.any():
            rows.set(f"{self.scope}.slot", batch.seq, -1)
            return
        at = np.flatnonzero(mine)
        seq = batch.seq[at]
        keys, first, inverse = np.unique(
            batch.subjects[self.scope][at], return_index=True, return_inverse=True
        )
        slots, new = self.subjects.claim(keys)
        if new.any():
            born = at[first[new]]
            names = batch.raw[self.scope].gather(born).to_list()
            self.subjects["name"][slots[new]] = names
            self.subjects["tenant"][slots[new]] = batch.tenant[born]
        slot = slots[inverse]
        rows.set(f"{self.scope}.slot", batch.seq, -1)
        rows.set(f"{self.scope}.slot", seq, slot)
        self._add_gaps(slot, batch.ts[at], seq, rows)
        per = np.bincount(inverse, minlength=keys.size)
        self.subjects["checks"][slots] += per
        for name, flags in (("denied", batch.denied), ("at_zero", batch.at_zero)):
            self.subjects[name][slots] += np.bincount(inverse[flags[at]], minlength=keys.size)
        for kind in self.kinds:
            self._add_pairs(kind, batch, at, slot, rows)

    def _add_pairs(self, kind: str, batch: Batch, at: Ints, slot: Ints, rows: RecentRows) -> None:
        column = f"{self.scope}.{kind}"
        seq = batch.seq[at]
        rows.set(column, seq, -1)
        has = batch.present[kind][at]
        if not has.any():
            return
        where = at[has]
        keys, first, inverse, counts = np.unique(
            batch.pairs[(self.scope, kind)][where],
            return_index=True,
            return_inverse=True,
            return_counts=True,
        )
        table = self.pairs[kind]
        slots, new = table.claim(keys)
        if new.any():
            table["owner"][slots[new]] = slot[has][first[new]]
            if kind == "ip":
                table["value"][slots[new]] = batch.values["ip"][where[first[new]]]
            if kind == "route":
                table["pop"][slots[new]] = batch.pops[where[first[new]]]
            identity = _identity_scope(kind)
            if identity is not None and "ident" in table.columns:
                table["ident"][slots[new]] = batch.subjects[identity][where[first[new]]]
        old = table["count"][slots]
        table["count"][slots] = old + counts
        appeared = slots[old == 0]
        np.add.at(self.subjects[f"distinct_{kind}"], table["owner"][appeared], 1)
        if kind == "ip":  # new to the long window too if it had no earlier decision
            fresh = appeared[table["prior"][appeared] == 0]
            np.add.at(self.subjects["long_ips"], table["owner"][fresh], 1)
        rows.set(column, seq[has], slots[inverse])

    def _add_gaps(self, slot: Ints, ts: Ints, seq: Ints, rows: RecentRows) -> None:
        column = f"{self.scope}.gap"
        rows.set(column, seq, -1)  # no next decision yet
        order = np.lexsort((seq, ts, slot))
        s, t, q = slot[order], ts[order], seq[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        ends = np.r_[starts[1:] - 1, s.size - 1]
        heads = s[starts]
        # a subject's first decision of the batch follows its latest in the window, if any
        had = self.subjects["checks"][heads] > 0
        late = had & (t[starts] < self.subjects["last_ts"][heads])
        before_t = np.r_[0, t[:-1]]
        before_q = np.r_[0, q[:-1]]
        before_t[starts] = self.subjects["last_ts"][heads]
        before_q[starts] = self.subjects["last_seq"][heads]
        follows = np.ones(s.size, bool)
        follows[starts] = had
        dirty = heads[late]
        if dirty.size:
            follows &= ~np.isin(s, dirty)
        gaps = (t - before_t)[follows]
        rows.set(column, before_q[follows], gaps)
        np.add.at(self.subjects["gap_sum"], s[follows], gaps)
        np.add.at(self.subjects["gap_sq"], s[follows], gaps * gaps)
        self.subjects["last_ts"][s[ends]] = t[ends]
        self.subjects["last_seq"][s[ends]] = q[ends]
        if dirty.size:
            self._regap(dirty, rows)

    def _regap(self, dirty: Ints, rows: RecentRows) -> None:
        """Recompute the gaps of ``dirty`` subjects from their decisions in the window."""
        live = rows.live()
        seq = live[np.isin(rows.get(f"{self.scope}.slot", live), dirty)]
        slot, ts = rows.get(f"{self.scope}.slot", seq), rows.get("ts", seq)
        order = np.lexsort((seq, ts, slot))
        s, t, q = slot[order], ts[order], seq[order]
        chained = np.r_[s[1:] == s[:-1], False]  # followed by a decision of its subject
        gaps = np.where(chained, np.r_[t[1:] - t[:-1], 0], -1)
        rows.set(f"{self.scope}.gap", q, gaps)
        for name in ("gap_sum", "gap_sq"):
            self.subjects[name][dirty] = 0
        np.add.at(self.subjects["gap_sum"], s[chained], gaps[chained])
        np.add.at(self.subjects["gap_sq"], s[chained], gaps[chained] ** 2)
        ends = ~chained
        self.subjects["last_ts"][s[ends]] = t[ends]
        self.subjects["last_seq"][s[ends]] = q[ends]

    # -- departures -----------------------------------------------------------------------

    def expire(self, seqs: Ints, to_prior: bool, rows: RecentRows) -> PriorShare:
        """Count the decisions ``seqs`` out of the short window; with ``to_prior`` into the
        long window's earlier part.  Returns what they added there."""
        share = PriorShare()
        slot = rows.get(f"{self.scope}.slot", seqs)
        seq = seqs[slot >= 0]
        slot = slot[slot >= 0]
        if not slot.size:
            return share
        slots, inverse, per = np.unique(slot, return_inverse=True, return_counts=True)
        self.subjects["checks"][slots] -= per
        for name in ("denied", "at_zero"):
            flags = rows.get(name, seq).astype(bool)
            self.subjects[name][slots] -= np.bincount(inverse[flags], minlength=slots.size)
        gaps = rows.get(f"{self.scope}.gap", seq)
        chained = gaps >= 0
        np.subtract.at(self.subjects["gap_sum"], slot[chained], gaps[chained])
        np.subtract.at(self.subjects["gap_sq"], slot[chained], gaps[chained] ** 2)
        if to_prior:
            self.subjects["prior_checks"][slots] += per
            share.subjects.append((slots, per))
        for kind in self.kinds:
            pair = rows.get(f"{self.scope}.{kind}", seq)
            moved = self._expire_pairs(kind, pair[pair >= 0], to_prior)
            if moved is not None:
                share.addresses.append(moved)
        self._release(slots)
        return share

    def _expire_pairs(self, kind: str, pair: Ints, to_prior: bool) -> Prior | None:
        if not pair.size:
            return None
        table = self.pairs[kind]
        slots, per = np.unique(pair, return_counts=True)
        table["count"][slots] -= per
        left = slots[table["count"][slots] == 0]
        np.subtract.at(self.subjects[f"distinct_{kind}"], table["owner"][left], 1)
        if kind != "ip":
            table.release(left)
            return None
        moved = None
        if to_prior:
            earlier = table["prior"][slots]
            table["prior"][slots] = earlier + per
            np.add.at(self.subjects["prior_ips"], table["owner"][slots[earlier == 0]], 1)
            moved = (slots, per)
        gone = left[table["prior"][left] == 0]
        np.subtract.at(self.subjects["long_ips"], table["owner"][gone], 1)
        table.release(gone)
        return moved

    def expire_prior(self, share: PriorShare) -> None:
        """Take what one bucket added to the long window out again."""
        if share.addresses:
            table = self.pairs["ip"]
            slots, per = _summed(share.addresses)
            table["prior"][slots] -= per
            left = slots[table["prior"][slots] == 0]
            np.subtract.at(self.subjects["prior_ips"], table["owner"][left], 1)
            gone = left[table["count"][left] == 0]
            np.subtract.at(self.subjects["long_ips"], table["owner"][gone], 1)
            table.release(gone)
        if share.subjects:
            slots, per = _summed(share.subjects)
            self.subjects["prior_checks"][slots] -= per
            self._release(slots)

    def _release(self, slots: Ints) -> None:
        subjects = self.subjects
        idle = slots[(subjects["checks"][slots] == 0) & (subjects["prior_checks"][slots] == 0)]
        subjects.release(idle)

    # -- reading --------------------------------------------------------------------------

    def frame(
        self,
        novel: Mask,
        tenants: pl.Series,
        identities: Mapping[Scope, ScopeTally] | None = None,
        surprise: Floats | None = None,
    ) -> pl.DataFrame:
        """``TALLY_SCHEMA`` rows of the subjects with decisions in the short window.
        ``novel`` flags the route slots of ``RouteTally`` that are novel and ``surprise``
        gives their ``RouteTally.surprise`` (zero without); ``tenants`` names
        the window's tenant numbers; ``identities`` are the tallies of the key and user id
        scopes, which say which identities of an address are new."""
        subjects = self.subjects
        size = subjects.size
        active = np.flatnonzero(subjects["checks"][:size] > 0)
        if surprise is None:
            surprise = np.zeros(novel.size, np.float64)
        routed, plogps, novels, surprises = self._route_sums(novel, surprise, size)

        def column(name: str) -> Ints:
            return subjects[name][active]

        ones = np.ones(active.size, np.int64)
        prior = column("prior_checks")
        data: dict[str, object] = {
            "subject_hash": subjects.keys[active],
            "tenant": tenants.gather(column("tenant")),
            "subject": pl.Series(subjects.columns["name"][active].tolist(), dtype=pl.String),
            "checks": column("checks"),
            "denied": column("denied"),
            "at_zero": column("at_zero"),
            **{
                name: ones if kind == self.scope else column(f"distinct_{kind}")
                for kind, name in DISTINCT.items()
            },
            "novel": novels[active],
            "routed": routed[active],
            "route_plogp": plogps[active],
            "route_surprise": surprises[active],
            "gap_sum": column("gap_sum"),
            "gap_sq": column("gap_sq"),
            "prior_checks": prior,
        }
        data["fresh_identities"] = np.zeros(active.size, np.int64)
        if self.scope == "ip":  # an address is its own single IP
            data["prior_distinct_ips"] = (prior > 0).astype(np.int64)
            data["distinct_ips_long"] = ones
            if identities is not None:
                data["fresh_identities"] = self._fresh(identities, size)[active]
        else:
            data["prior_distinct_ips"] = column("prior_ips")
            data["distinct_ips_long"] = column("long_ips")
        return pl.DataFrame(data, schema=TALLY_SCHEMA)

    def _fresh(self, identities: Mapping[Scope, ScopeTally], size: int) -> Ints:
        """Per address slot: the larger of its keys and its user ids in the short window
        that had no decision earlier in the long window."""
        fresh = np.zeros(size, np.int64)
        for kind in IDENTITIES:
            table = self.pairs[kind]
            live = np.flatnonzero(table["count"][: table.size] > 0)
            own = identities[kind].subjects
            idents: Keys = table.columns["ident"][live]  # type: ignore[assignment]
            slots = own.find(idents)
            new = np.ones(live.size, dtype=bool)
            known = slots >= 0
            new[known] = own["prior_checks"][slots[known]] == 0
            fresh = np.maximum(fresh, np.bincount(table["owner"][live[new]], minlength=size))
        return fresh

    def _route_sums(
        self, novel: Mask, surprise: Floats, size: int
    ) -> tuple[Ints, Floats, Ints, Floats]:
        """Per subject slot: decisions with a route, the sum of n log2 n over its route
        counts, decisions on novel routes, the sum of n times each route's surprise."""
        table = self.pairs["route"]
        live = np.flatnonzero(table["count"][: table.size] > 0)
        owner, counts = table["owner"][live], table["count"][live]
        routed = np.bincount(owner, weights=counts, minlength=size).astype(np.int64)
        terms = plogp(pl.Series(counts)).to_numpy()
        plogps = np.bincount(owner, weights=terms, minlength=size).astype(np.float64)
        on_novel = counts * novel[table["pop"][live]]
        novels = np.bincount(owner, weights=on_novel, minlength=size).astype(np.int64)
        weighted = counts * surprise[table["pop"][live]]
        surprises = np.bincount(owner, weights=weighted, minlength=size).astype(np.float64)
        return routed, plogps, novels, surprises

    def prior_of(self, slots: Ints) -> pl.DataFrame:
        """``PRIOR_SCHEMA`` rows of the long window's earlier part for subjects ``slots``
        (not of the ``ip`` scope): decisions per address, and those without one."""
        table = self.pairs["ip"]
        live = np.flatnonzero(table["prior"][: table.size] > 0)
        live = live[np.isin(table["owner"][live], slots)]
        owners, per = table["owner"][live], table["prior"][live]
        addressed = np.bincount(owners, weights=per, minlength=self.subjects.size)[slots]
        anonymous = self.subjects["prior_checks"][slots] - addressed.astype(np.int64)
        rest = slots[anonymous > 0]
        keys = self.subjects.keys
        frame = pl.DataFrame(
            {
                "subject_hash": np.concatenate([keys[owners], keys[rest]]),
                "ip_hash": pl.Series(
                    [*table["value"][live].tolist(), *([None] * rest.size)], dtype=pl.UInt64
                ),
                "checks": np.concatenate([per, anonymous[anonymous > 0]]),
            }
        )
        return frame.cast(PRIOR_SCHEMA)  # type: ignore[arg-type]


def _identity_scope(kind: str) -> Scope | None:
    """``kind`` as the identity scope it names, if it is one (``IDENTITIES``)."""
    return next((scope for scope in IDENTITIES if scope == kind), None)


def _summed(parts: list[Prior]) -> Prior:
    slots = np.concatenate([slots for slots, _ in parts])
    per = np.concatenate([per for _, per in parts])
    unique, inverse = np.unique(slots, return_inverse=True)
    return unique, np.bincount(inverse, weights=per, minlength=unique.size).astype(np.int64)


class RouteTally:
    """Each tenant's routes in the short window: their decisions and distinct callers."""

    def __init__(self) -> None:
        columns = {"hits": np.int64, "callers": np.int64, "tenant": np.int64}
        self.routes = SlotTable(columns | {"route": np.uint64})
        self.callers = SlotTable({"owner": np.int64, "count": np.int64})

    def add(self, batch: Batch, rows: RecentRows) -> None:
        """Count ``batch`` in; set ``batch.pops``, each decision's route slot (-1: none)."""
        pops = np.full(batch.seq.size, -1, np.int64)
        callers = np.full(batch.seq.size, -1, np.int64)
        at = np.flatnonzero(batch.present["route"])
        if at.size:
            keys, first, inverse, per = np.unique(
                batch.route_keys[at], return_index=True, return_inverse=True, return_counts=True
            )
            slots, new = self.routes.claim(keys)
            self.routes["tenant"][slots[new]] = batch.tenant[at[first[new]]]
            self.routes["route"][slots[new]] = batch.values["route"][at[first[new]]]
            self.routes["hits"][slots] += per
            pops[at] = slots[inverse]
            keys, first, inverse, per = np.unique(
                batch.caller_keys[at], return_index=True, return_inverse=True, return_counts=True
            )
            known, new = self.callers.claim(keys)
            self.callers["owner"][known[new]] = pops[at[first[new]]]
            old = self.callers["count"][known]
            self.callers["count"][known] = old + per
            np.add.at(self.routes["callers"], self.callers["owner"][known[old == 0]], 1)
            callers[at] = known[inverse]
        batch.pops = pops
        rows.set("route.pop", batch.seq, pops)
        rows.set("route.caller", batch.seq, callers)

    def expire(self, seqs: Ints, rows: RecentRows) -> None:
        pops = rows.get("route.pop", seqs)
        pops = pops[pops >= 0]
        if not pops.size:
            return
        slots, per = np.unique(pops, return_counts=True)
        self.routes["hits"][slots] -= per
        callers = rows.get("route.caller", seqs)
        known, per = np.unique(callers[callers >= 0], return_counts=True)
        self.callers["count"][known] -= per
        left = known[self.callers["count"][known] == 0]
        np.subtract.at(self.routes["callers"], self.callers["owner"][left], 1)
        self.callers.release(left)
        self.routes.release(slots[self.routes["hits"][slots] == 0])

    def novel(self, most_hits: int) -> Mask:
        """Per route slot: used by one caller, at most ``most_hits`` times."""
        size = self.routes.size
        hits = self.routes["hits"][:size]
        novel: Mask = (hits > 0) & (hits <= most_hits) & (self.routes["callers"][:size] <= 1)
        return novel

    def surprise(self, addresses: ScopeTally, tenants: int) -> Floats:
        """Per route slot: ``-log2`` of its share of its tenant's traffic, weighing
        addresses (``addresses``, the ``ip`` tally) and checks as ``ROUTE_MIX_BY_ADDRESS``
        says; zero for a free slot.  ``tenants``: how many tenant numbers there are."""
        size = self.routes.size
        hits = self.routes["hits"][:size]
        tenant = self.routes["tenant"][:size]
        used = hits > 0
        totals = np.bincount(tenant[used], weights=hits[used], minlength=tenants)
        by_checks = np.zeros(size, np.float64)
        by_checks[used] = hits[used] / totals[tenant[used]]
        pairs = addresses.pairs["route"]
        live = np.flatnonzero(pairs["count"][: pairs.size] > 0)
        owner, pop = pairs["owner"][live], pairs["pop"][live]
        counts = pairs["count"][live].astype(np.float64)
        routed = np.bincount(owner, weights=counts, minlength=addresses.subjects.size)
        weighted = np.bincount(pop, weights=counts / routed[owner], minlength=size)
        routed_owners = np.unique(owner)
        per_tenant = np.bincount(
            addresses.subjects["tenant"][routed_owners], minlength=tenants
        ).astype(np.float64)
        mixed = by_checks.copy()
        has = used & (per_tenant[tenant] > 0)
        mixed[has] = (1 - ROUTE_MIX_BY_ADDRESS) * by_checks[has] + ROUTE_MIX_BY_ADDRESS * (
            weighted[has] / per_tenant[tenant[has]]
        )
        out = np.zeros(size, np.float64)
        out[used] = -np.log2(mixed[used])
        return out

    def stats_frame(self, most_hits: int, tenants: pl.Series, surprise: Floats) -> pl.DataFrame:
        """``detectors.features.ROUTE_SCHEMA`` rows of the routes in the short window, with
        their ``surprise``."""
        slots = np.flatnonzero(self.routes["hits"][: self.routes.size] > 0)
        return pl.DataFrame(
            {
                "tenant": tenants.gather(self.routes["tenant"][slots]),
                "route_hash": pl.Series(self.routes.columns["route"][slots], dtype=pl.UInt64),
                "novel": self.novel(most_hits)[slots],
                "surprise": surprise[slots],
            },
            schema=ROUTE_SCHEMA,
        )
