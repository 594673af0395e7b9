"""The detector's memory of the decision stream: tallies of the short and long windows,
kept up to date as decisions arrive and as time passes.

Appended decisions wait until the window is brought to a moment (``advance``, which every
evaluation does).  Then those up to that moment are folded in: each is numbered and
counted into the tallies of its subjects (``detectors.tallies``); those that have left the
short window are counted out of it and into the long window's earlier part, in the bucket
(one minute by default) of their time; and buckets that have left the long window are
counted out of it.  So an evaluation costs the decisions that arrived and left since the
last one, plus one vectorised pass over the subjects active in the short window to derive
their features, whatever the windows hold.

What is kept: the short window's decisions (numbered, with their raw rows for the few
subjects a verdict concerns, ``detectors.recent``), per-subject and per-(subject, value)
counts, and per bucket what it added to the long window.  The long window starts at the
first bucket boundary at or after ``now - long_ms`` (``subject_features`` with
``bucket_ms`` computes the same from scratch); a tenant's covered long window starts at
its first decision, and a tenant silent for a whole long window starts afresh.

Time only moves forward: the features asked for a moment before the latest the window was
brought to are those of that latest moment.  Decisions later than the moment a window is
brought to are held until it gets there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

from detectors.attribution import spare_victims, subject_origins
from detectors.features import (
    HASHED,
    MINUTE_MS,
    NOVEL_ROUTE_HITS,
    PRIOR_START_SCHEMA,
    check_windows,
    empty_frame,
    features_of,
    normalise,
    subject_hash,
    tally_rows,
    with_hashes,
)
from detectors.recent import RecentRows
from detectors.slots import Ints
from detectors.tallies import Batch, PriorShare, RouteTally, ScopeTally, row_columns
from detectors.verdict import SCOPES, Scope


class RollingWindow:
    """Append decision frames; ask for the features of the present or a later moment."""

    def __init__(
        self,
        *,
        short_ms: int = MINUTE_MS,
        long_ms: int = 10 * MINUTE_MS,
        bucket_ms: int = MINUTE_MS,
        flush_rows: int = 500_000,
    ) -> None:
        check_windows(short_ms, long_ms)
        if bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
        self.short_ms = short_ms
        self.long_ms = long_ms
        self.bucket_ms = bucket_ms
        self._flush_rows = flush_rows
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._held = empty_frame()  # decisions after the present
        self._now: int | None = None
        self._recent = RecentRows(row_columns(SCOPES))
        self._scopes = {scope: ScopeTally(scope) for scope in SCOPES}
        self._routes = RouteTally()
        self._buckets: dict[int, dict[Scope, PriorShare]] = {}
        self._first_seen: dict[str, int] = {}  # tenant → its earliest decision still relevant
        self._last_seen: dict[str, int] = {}
        self._tenant_numbers: dict[str, int] = {}
        self._tenant_names: list[str] = []
        self.folded = 0  # decisions counted in, ever
        self.expired = 0  # decisions counted out of the short window, ever

    def append(self, frame: pl.DataFrame) -> None:
        """Add decisions (``FRAME_SCHEMA`` columns; extra ones are dropped)."""
        if frame.is_empty():
            return
        self._pending.append(normalise(frame))
        self._pending_rows += frame.height
        if self._pending_rows >= self._flush_rows:
            # nobody evaluated for a while: fold now so memory stays bounded
            latest = self._pending[-1]["ts"].max()
            if isinstance(latest, int):
                self.advance(latest)

    @property
    def tenants(self) -> list[str]:
        return list(self._last_seen)

    @property
    def rows(self) -> int:
        """Decisions held as rows (for memory accounting)."""
        return len(self._recent) + self._pending_rows + self._held.height

    @property
    def subjects(self) -> int:
        """Subjects of every scope with decisions in the long window."""
        return sum(self.subjects_by_scope.values())

    @property
    def subjects_by_scope(self) -> dict[str, int]:
        """``subjects``, per scope."""
        return {scope: len(tally.subjects) for scope, tally in self._scopes.items()}

    def prune(self, now_ms: int) -> None:
        """Bring the window to ``now_ms`` (``advance``)."""
        self.advance(now_ms)

    def advance(self, now_ms: int) -> int:
        """Fold in what was appended up to ``now_ms``, count out what left the windows by
        then, and forget tenants silent for a whole long window.  Returns the window's
        present: ``now_ms``, or the later moment it was already at."""
        now = now_ms if self._now is None else max(now_ms, self._now)
        self._now = now
        self._take_pending(now)
        first_bucket = self._first_bucket(now)
        self._expire(now - self.short_ms, first_bucket)
        for bucket in [b for b in self._buckets if b < first_bucket]:
            for scope, share in self._buckets.pop(bucket).items():
                self._scopes[scope].expire_prior(share)
        horizon = (now - self.long_ms) // self.bucket_ms * self.bucket_ms
        for tenant in [t for t, ms in self._last_seen.items() if ms < horizon]:
            del self._last_seen[tenant]  # idle for a whole long window: start afresh
            del self._first_seen[tenant]
        self._recent.compact()  # what left is counted out: its storage may go (after a burst)
        return now

    def features(
        self, now_ms: int, scopes: Sequence[Scope] = SCOPES, blamed: pl.DataFrame | None = None
    ) -> pl.DataFrame:
        """``detectors.features.subject_features`` of everything appended, at ``now_ms``
        (see ``advance``), for ``scopes``.

        ``blamed`` (columns ``tenant``, ``ip``) lists addresses already judged abusive: the
        keys and user ids they touched are judged without the decisions
        ``detectors.attribution.spare_victims`` spares them.
        """
        now = self.advance(now_ms)
        tenants = pl.Series(self._tenant_names, dtype=pl.String)
        novel = self._routes.novel(NOVEL_ROUTE_HITS)
        surprise = self._routes.surprise(self._scopes["ip"], len(self._tenant_names))
        tallies = {}
        for scope in scopes:
            tally = self._scopes[scope].frame(novel, tenants, self._scopes, surprise)
            if blamed is not None and blamed.height and scope != "ip":
                tally = self._spare(scope, tally, blamed, tenants, surprise)
            tallies[scope] = tally
        return features_of(tallies, self._prior_start(now), now, self.short_ms)

    def origins(self, scope: Scope, subjects: pl.DataFrame, cap: int) -> pl.DataFrame:
        """``detectors.attribution.subject_origins`` of ``subjects`` (columns ``tenant`` and
        ``subject``) over the short window."""
        wanted = subjects.select("tenant", pl.col("subject").alias(scope))
        keys = wanted.select(subject_hash(scope)).to_series().to_numpy()
        slots = self._scopes[scope].subjects.find(keys)
        rows = self._rows_of(scope, slots[slots >= 0])
        return subject_origins(self._recent.raw(rows), scope, subjects, cap)

    # -- folding in and counting out ------------------------------------------------------

    def _take_pending(self, now: int) -> None:
        if self._pending:
            batch = pl.concat(self._pending, rechunk=False)
            self._pending, self._pending_rows = [], 0
            self._track(batch)
            self._held = pl.concat([self._held, batch]) if self._held.height else batch
        if not self._held.height:
            return
        latest = self._held["ts"].max()
        if isinstance(latest, int) and latest <= now:
            due, self._held = self._held, empty_frame()
        else:
            due = self._held.filter(pl.col("ts") <= now)
            self._held = self._held.filter(pl.col("ts") > now)
        if due.height:
            self._fold(due.sort("ts"))

    def _fold(self, rows: pl.DataFrame) -> None:
        ts = rows["ts"].to_numpy()
        seqs = self._recent.append(rows, ts)
        batch = self._batch(rows, seqs, ts)
        self._recent.set("denied", seqs, batch.denied)
        self._recent.set("at_zero", seqs, batch.at_zero)
        self._routes.add(batch, self._recent)
        for tally in self._scopes.values():
            tally.add(batch, self._recent)
        self.folded += rows.height

    def _batch(self, rows: pl.DataFrame, seqs: Ints, ts: Ints) -> Batch:
        for tenant in rows["tenant"].unique().to_list():
            if tenant not in self._tenant_numbers:
                self._tenant_numbers[tenant] = len(self._tenant_names)
                self._tenant_names.append(tenant)
        hashed = rows.select(
            pl.col("tenant").replace_strict(self._tenant_numbers, return_dtype=pl.Int64),
            pl.col("allowed").eq(False).fill_null(False).alias("denied"),
            pl.col("remaining").eq(0).fill_null(False).alias("at_zero"),
            *(pl.col(c).is_not_null().alias(f"has_{c}") for c in HASHED),
            *(pl.col(c).hash().alias(f"{c}_hash") for c in HASHED),
            *(subject_hash(s).alias(f"{s}_subject") for s in SCOPES),
            pl.struct("tenant", "route").hash().alias("route_key"),
            pl.struct("tenant", "route", "ip", "key").hash().alias("caller_key"),
        )
        pairs = hashed.select(
            pl.struct(f"{s}_subject", f"{kind}_hash").hash().alias(f"{s}.{kind}")
            for s in SCOPES
            for kind in HASHED
            if kind != s
        )
        return Batch(
            raw=rows,
            seq=seqs,
            ts=ts,
            tenant=hashed["tenant"].to_numpy(),
            denied=hashed["denied"].to_numpy(),
            at_zero=hashed["at_zero"].to_numpy(),
            present={c: hashed[f"has_{c}"].to_numpy() for c in HASHED},
            values={c: hashed[f"{c}_hash"].to_numpy() for c in HASHED},
            subjects={s: hashed[f"{s}_subject"].to_numpy() for s in SCOPES},
            pairs={(s, k): pairs[f"{s}.{k}"].to_numpy() for s in SCOPES for k in HASHED if k != s},
            route_keys=hashed["route_key"].to_numpy(),
            caller_keys=hashed["caller_key"].to_numpy(),
        )

    def _expire(self, short_start: int, first_bucket: int) -> None:
        seqs = self._recent.expire(short_start)
        if not seqs.size:
            return
        buckets = self._recent.get("ts", seqs) // self.bucket_ms * self.bucket_ms
        for bucket in np.unique(buckets).tolist():
            group = seqs[buckets == bucket]
            to_prior = bucket >= first_bucket
            for scope, tally in self._scopes.items():
                share = tally.expire(group, to_prior, self._recent)
                if to_prior:
                    self._buckets.setdefault(bucket, {}).setdefault(scope, PriorShare()).absorb(
                        share
                    )
        self._routes.expire(seqs, self._recent)
        self.expired += seqs.size

    def _track(self, batch: pl.DataFrame) -> None:
        spans = batch.group_by("tenant").agg(
            pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last")
        )
        for tenant, first, last in spans.iter_rows():
            self._first_seen[tenant] = min(first, self._first_seen.get(tenant, first))
            self._last_seen[tenant] = max(last, self._last_seen.get(tenant, last))

    # -- reading ----------------------------------------------------------------------------

    def _first_bucket(self, now: int) -> int:
        return -(-(now - self.long_ms) // self.bucket_ms) * self.bucket_ms

    def _prior_start(self, now: int) -> pl.DataFrame:
        first_bucket = self._first_bucket(now)
        return pl.DataFrame(
            {
                "tenant": list(self._first_seen),
                "prior_start_ms": [max(ms, first_bucket) for ms in self._first_seen.values()],
            },
            schema=PRIOR_START_SCHEMA,
        )

    def _rows_of(self, scope: Scope, slots: Ints) -> Ints:
        """The numbers of the short window's decisions of ``scope``'s subjects ``slots``."""
        live = self._recent.live()
        return live[np.isin(self._recent.get(f"{scope}.slot", live), slots)]

    def _spare(
        self,
        scope: Scope,
        tally: pl.DataFrame,
        blamed: pl.DataFrame,
        tenants: pl.Series,
        surprise: npt.NDArray[np.float64],
    ) -> pl.DataFrame:
        """``tally`` with the subjects blamed addresses touched tallied again without the
        decisions ``spare_victims`` spares them."""
        addresses = blamed.select(subject_hash("ip")).to_series().to_numpy()
        blamed_slots = self._scopes["ip"].subjects.find(addresses)
        from_blamed = self._rows_of("ip", blamed_slots[blamed_slots >= 0])
        touched = np.unique(self._recent.get(f"{scope}.slot", from_blamed))
        touched = touched[touched >= 0]
        if not touched.size:
            return tally
        own = self._scopes[scope]
        rows = spare_victims(self._recent.raw(self._rows_of(scope, touched)), scope, blamed)
        novel = self._routes.stats_frame(NOVEL_ROUTE_HITS, tenants, surprise)
        again = tally_rows(with_hashes(rows), own.prior_of(touched), scope, novel)
        redone = pl.DataFrame({"subject_hash": own.subjects.keys[touched]})
        return pl.concat([tally.join(redone, on="subject_hash", how="anti"), again])
