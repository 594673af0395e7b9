"""The detector's memory of the decision stream, bounded by the long window.

Decisions of the short window are kept as rows, because most features need them (distinct
values, gaps, route entropy).  Beyond it, only the long-window summary is needed (each
subject's decisions per IP), so rows older than the short window are rolled up into
per-bucket counts (one minute by default) and dropped, and buckets older than the long
window are pruned.  At 10,000 decisions/s that keeps about two minutes of rows instead of
ten, plus a summary with one row per (subject, ip, minute), summed over the long window
once a minute rather than at every evaluation.
"""

from __future__ import annotations

import polars as pl

from detectors.features import (
    MINUTE_MS,
    PRIOR_SCHEMA,
    Snapshot,
    assemble,
    check_windows,
    conform,
    empty_frame,
    normalise,
    subject_ips,
)
from detectors.verdict import SCOPES, Scope

_ROLLUP_SCHEMA = {**PRIOR_SCHEMA, "bucket": pl.Int64()}


class RollingWindow:
    """Append decision frames; ask for the features of any moment after the last prune."""

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
        self._rows = empty_frame()
        self._rollups = {scope: pl.DataFrame(schema=_ROLLUP_SCHEMA) for scope in SCOPES}
        self._first_seen: dict[str, int] = {}  # tenant → its earliest decision still relevant
        self._last_seen: dict[str, int] = {}
        self._generation = 0  # bumped whenever a roll-up changes
        self._summed: dict[Scope, tuple[tuple[int, int], pl.DataFrame]] = {}

    def append(self, frame: pl.DataFrame) -> None:
        """Add decisions (``FRAME_SCHEMA`` columns; extra ones are dropped)."""
        if frame.is_empty():
            return
        self._pending.append(normalise(frame))
        self._pending_rows += frame.height
        if self._pending_rows >= self._flush_rows:
            # nobody evaluated for a while: summarise now so memory stays bounded
            latest = self._pending[-1]["ts"].max()
            if isinstance(latest, int):
                self.prune(latest)

    @property
    def tenants(self) -> list[str]:
        return list(self._last_seen)

    @property
    def rows(self) -> int:
        """Decisions held as rows (for memory accounting)."""
        return self._rows.height + self._pending_rows

    def features(self, now_ms: int) -> pl.DataFrame:
        """``detectors.features.subject_features`` of everything appended, at ``now_ms``."""
        return assemble(self.snapshot(now_ms))

    def snapshot(self, now_ms: int) -> Snapshot:
        """The rows and summaries the features at ``now_ms`` are assembled from."""
        self.prune(now_ms)
        rows = self._rows.filter(pl.col("ts") <= now_ms)
        short_start = now_ms - self.short_ms
        recent = rows.filter(pl.col("ts") > short_start)
        older = rows.filter(pl.col("ts") <= short_start)
        first_bucket = -(-(now_ms - self.long_ms) // self.bucket_ms) * self.bucket_ms
        prior: dict[Scope, pl.DataFrame] = {}
        for scope in SCOPES:
            rolled = self._rolled(scope, first_bucket)
            prior[scope] = pl.concat([rolled, conform(subject_ips(older, scope), PRIOR_SCHEMA)])
        prior_start = pl.DataFrame(
            {
                "tenant": list(self._first_seen),
                "prior_start_ms": [max(ms, first_bucket) for ms in self._first_seen.values()],
            },
            schema={"tenant": pl.String(), "prior_start_ms": pl.Int64()},
        )
        return Snapshot(recent, prior, prior_start, now_ms, self.short_ms)

    def _rolled(self, scope: Scope, first_bucket: int) -> pl.DataFrame:
        """The buckets from ``first_bucket`` on, summed per (subject, ip).  They change
        once a minute, so the sum is kept until they do: evaluations every few seconds
        then read a few hundred thousand rows instead of a million."""
        key = (first_bucket, self._generation)
        cached = self._summed.get(scope)
        if cached is None or cached[0] != key:
            rolled = self._rollups[scope].filter(pl.col("bucket") >= first_bucket)
            summed = rolled.group_by("subject_hash", "ip_hash").agg(pl.col("checks").sum())
            cached = self._summed[scope] = (key, conform(summed, PRIOR_SCHEMA))
        return cached[1]

    def prune(self, now_ms: int) -> None:
        """Roll rows older than the short window into buckets; forget the long window's past."""
        if self._pending:
            batch = pl.concat(self._pending, rechunk=False)
            self._pending, self._pending_rows = [], 0
            self._track(batch)
            self._rows = pl.concat([self._rows, batch], rechunk=False)
        cut = (now_ms - self.short_ms) // self.bucket_ms * self.bucket_ms
        old = self._rows.filter(pl.col("ts") < cut)
        if old.height:
            self._rows = self._rows.filter(pl.col("ts") >= cut)
            bucket = pl.col("ts") // self.bucket_ms * self.bucket_ms
            old = old.with_columns(bucket.alias("bucket"))
            for scope in SCOPES:
                summary = conform(subject_ips(old, scope, by=["bucket"]), _ROLLUP_SCHEMA)
                self._rollups[scope] = pl.concat([self._rollups[scope], summary])
            self._generation += 1
        horizon = (now_ms - self.long_ms) // self.bucket_ms * self.bucket_ms
        for scope in SCOPES:
            kept = self._rollups[scope].filter(pl.col("bucket") >= horizon)
            if kept.height != self._rollups[scope].height:
                self._rollups[scope] = kept
                self._generation += 1
        if self._rows.n_chunks() > 64:  # one chunk per observed batch otherwise
            self._rows = self._rows.rechunk()
        for tenant in [t for t, ms in self._last_seen.items() if ms < horizon]:
            del self._last_seen[tenant]  # idle for a whole long window: start afresh
            del self._first_seen[tenant]

    def _track(self, batch: pl.DataFrame) -> None:
        spans = batch.group_by("tenant").agg(
            pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last")
        )
        for tenant, first, last in spans.iter_rows():
            self._first_seen[tenant] = min(first, self._first_seen.get(tenant, first))
            self._last_seen[tenant] = max(last, self._last_seen.get(tenant, last))
