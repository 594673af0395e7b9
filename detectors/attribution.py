"""Whose decisions count against whom, and where a flagged subject's decisions came from.

Both work on the raw decisions of the short window, and only on those of the few subjects
a verdict concerns: the window (``detectors.window``) hands them the rows of the subjects
that blamed addresses touched, or that a verdict names.
"""

from __future__ import annotations

import polars as pl

from detectors.verdict import Scope

ORIGINS_SCHEMA: dict[str, pl.DataType] = {
    "tenant": pl.String(),
    "subject": pl.String(),
    "ips": pl.List(pl.String()),
    "ips_truncated": pl.Boolean(),
    "ipless": pl.Boolean(),
}


def spare_victims(recent: pl.DataFrame, scope: Scope, blamed: pl.DataFrame) -> pl.DataFrame:
    """``recent`` without the decisions ``blamed`` IPs (columns ``tenant``, ``ip``) made on
    subjects of ``scope`` that no single blamed IP gives more than half of their decisions.

    A key or user id that none of the addresses already judged abusive dominates is their
    target, not their tool (the accounts a credential stuffer tries from many addresses,
    the keys an enumerator guesses), so it is judged on the rest of its traffic; one that
    gets most of its decisions from a single blamed address (the account a scraper or a
    low-and-slow client drives) is judged on all of it.  ``recent`` must hold every
    decision of the subjects it holds.
    """
    subject = ["tenant", scope]
    indexed = recent.with_row_index("_row")
    # only the few rows from blamed addresses and the subjects they touched are examined
    hits = indexed.join(blamed.select("tenant", "ip").unique(), on=["tenant", "ip"], how="semi")
    hits = hits.filter(pl.col(scope).is_not_null())
    if hits.is_empty():
        return recent
    touched = hits.select(subject).unique()
    totals = (
        indexed.join(touched, on=subject, how="semi")
        .group_by(subject)
        .agg(pl.len().alias("_total"))
    )
    tied = (
        hits.group_by(*subject, "ip")
        .agg(pl.len().alias("_from_ip"))
        .join(totals, on=subject)
        .filter(pl.col("_from_ip") > 0.5 * pl.col("_total"))
        .select(subject)
        .unique()
    )
    spared = hits.join(tied, on=subject, how="anti").select("_row")
    return indexed.join(spared, on="_row", how="anti").drop("_row")


def subject_origins(
    recent: pl.DataFrame, scope: Scope, subjects: pl.DataFrame, cap: int
) -> pl.DataFrame:
    """Where the decisions in ``recent`` of each of ``subjects`` (columns ``tenant`` and
    ``subject``, of ``scope``) came from: its distinct ``ips`` (sorted, at most ``cap``),
    ``ips_truncated`` if there were more, ``ipless`` if some decisions had no address.
    Columns ``ORIGINS_SCHEMA``; subjects without decisions in ``recent`` are left out.

    This keeps the addresses themselves (not hashes), so it is meant for the few subjects a
    verdict names, not for every subject of the window.
    """
    # semi join first: only the flagged subjects' rows are grouped and their strings moved
    wanted = subjects.select("tenant", pl.col("subject").alias(scope)).unique()
    rows = recent.select("tenant", scope, "ip").join(wanted, on=["tenant", scope], how="semi")
    addresses = pl.col("ip").drop_nulls().unique()
    grouped = rows.group_by("tenant", scope).agg(
        addresses.sort().head(cap).alias("ips"),
        (addresses.len() > cap).alias("ips_truncated"),
        pl.col("ip").is_null().any().alias("ipless"),
    )
    named = grouped.rename({scope: "subject"})
    return named.select(pl.col(name).cast(dtype) for name, dtype in ORIGINS_SCHEMA.items())
