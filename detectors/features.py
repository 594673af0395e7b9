"""Per-subject features of the decision stream, over a short and a long window.

A *subject* is one value of ``ip``, ``key`` or ``user_id`` within a tenant (its *scope*).
Every subject with at least one decision in the short window (default the last minute)
gets one row; the long window (default ten minutes) supplies the subject's own earlier
rate and IP spread, which is what "growth" and "a key suddenly used from many IPs" are
measured against.  Decisions whose value for a scope is null (no IP sent, no user id) are
left out of that scope only.

Everything is vectorised polars: the cost grows with the number of decisions and subjects,
never with a Python loop per event.  ``subject_features`` works on a raw frame;
``detectors.window.RollingWindow`` keeps the long window as per-minute roll-ups instead and
calls the same ``assemble``, so both give the same numbers.

Feature columns (``FEATURE_COLUMNS``), all Float64:

``checks``
    decisions in the short window (the evidence a verdict rests on).
``rate_short``, ``rate_long``
    decisions per minute in the short window and over the covered part of the long window.
``growth``
    short-window rate over the subject's own rate earlier in the long window, both shrunk
    toward the tenant's median rate (``(rate_short + m) / (rate_prior + m)``) so that a
    subject seen once long ago does not divide by almost zero.  1.0 (no growth) for a
    subject without earlier decisions, and until the tenant has a minute of earlier data:
    a newcomer is compared with the tenant by the baseline, not with itself.
``deny_ratio``, ``zero_remaining_share``
    share of decisions denied, and share answered with ``remaining == 0``.
``distinct_keys``, ``distinct_ips``, ``distinct_user_ids``, ``distinct_user_agents``,
``distinct_routes``
    distinct values in the short window.
``distinct_ips_long``, ``prior_distinct_ips``
    distinct IPs over the whole long window, and before the short window (the subject's own
    IP baseline; 0 when it was not seen earlier).
``route_entropy``
    Shannon entropy of the routes in bits (0 for one route).
``route_novelty``
    share of the decisions on routes that no other caller (IP and key) of the tenant used
    in the short window and that this caller hit at most ``NOVEL_ROUTE_HITS`` times: near 0
    for people browsing the same application (also the users behind one NAT address, who
    are many callers) and for an integration calling its own endpoints over and over, near
    1 for a crawler walking ``/products/1``, ``/products/2``, …
``interarrival_cv``
    standard deviation over mean of the gaps between decisions: about 1 for human
    (Poisson-like) traffic, near 0 for a timer.  Set to 1.0 below ``CV_MIN_CHECKS``
    decisions, where the estimate is noise.
``regularity``
    ``(1 - interarrival_cv) * sqrt(checks - 1)``: how many standard errors the subject is
    more regular than a Poisson process (the CV of n exponential gaps scatters by about
    1/sqrt(n) around 1).  A person's is about N(0, 1) whatever their pace; a timer's grows
    with every check (30 checks at CV 0.15 give 4.6).
``rate_per_key``
    ``rate_short`` divided by ``distinct_keys``: a NAT address carries many keys each at a
    normal pace, an abusive one drives few keys hard.
``rate_per_identity``
    ``rate_short`` divided by the larger of ``distinct_keys`` and ``distinct_user_ids``:
    the pace of each key behind an address, of each user behind a key, of each key of a
    user.  A NAT's addresses and an app's shared key carry many identities each at a
    person's pace.
``identity_churn``
    the larger of distinct keys and distinct user ids, per decision: a person or a NAT's
    crowd repeats its identities (0.1-0.3), a credential stuffer or key guesser brings a new
    one with almost every check (near 1).
``tenant_median_<feature>``
    the median of each feature above over the tenant's active subjects of the same scope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from detectors.verdict import SCOPES, Scope
from stream.events import DecisionEvent

MINUTE_MS = 60_000
CV_MIN_CHECKS = 8  # fewer gaps than this and a human's CV ranges over [0, 1.5] by chance
# a crawler fetches a page once (twice with a retry); an application calls its endpoints often
NOVEL_ROUTE_HITS = 2

FRAME_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Int64(),
    "tenant": pl.String(),
    "key": pl.String(),
    "ip": pl.String(),
    "user_id": pl.String(),
    "route": pl.String(),
    "user_agent": pl.String(),
    "allowed": pl.Boolean(),
    "remaining": pl.Int64(),
    "reason": pl.String(),
}
# an empty string names nobody: it must not make all anonymous callers one subject
_OPTIONAL = ("key", "ip", "user_id", "route", "user_agent")

ID_COLUMNS = ("tenant", "scope", "subject")
SUBJECT_FEATURES = (
    "checks",
    "rate_short",
    "rate_long",
    "growth",
    "deny_ratio",
    "zero_remaining_share",
    "distinct_keys",
    "distinct_ips",
    "distinct_ips_long",
    "prior_distinct_ips",
    "distinct_user_ids",
    "distinct_user_agents",
    "distinct_routes",
    "route_entropy",
    "route_novelty",
    "interarrival_cv",
    "regularity",
    "rate_per_key",
    "rate_per_identity",
    "identity_churn",
)
TENANT_FEATURES = tuple(f"tenant_median_{name}" for name in SUBJECT_FEATURES)
FEATURE_COLUMNS = SUBJECT_FEATURES + TENANT_FEATURES

# the long-window summary of a scope: decisions per (subject, ip), both hashed (below)
PRIOR_SCHEMA: dict[str, pl.DataType] = {
    "subject_hash": pl.UInt64(),
    "ip_hash": pl.UInt64(),
    "checks": pl.UInt32(),
}
_HASHED = ("key", "ip", "user_id", "user_agent", "route")


def decisions_frame(events: Sequence[DecisionEvent]) -> pl.DataFrame:
    """The events as a frame with ``FRAME_SCHEMA``; missing and empty strings are null."""
    columns = {name: [getattr(event, name) for event in events] for name in FRAME_SCHEMA}
    return normalise(pl.DataFrame(columns, schema=FRAME_SCHEMA))


def normalise(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` reduced to ``FRAME_SCHEMA`` (extra columns dropped, types cast)."""
    return frame.select(
        pl.col(name).cast(dtype)
        if name not in _OPTIONAL
        else pl.when(pl.col(name) != "").then(pl.col(name).cast(dtype)).alias(name)
        for name, dtype in FRAME_SCHEMA.items()
    )


def conform(frame: pl.DataFrame, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """``frame``'s columns of ``schema``, in its order and types."""
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=FRAME_SCHEMA)


# Grouping and counting distinct values on 64-bit hashes instead of strings is several
# times faster; the subject's name is carried along once per group.  A collision merges
# two subjects with probability about n² / 2^64: none in practice.
def subject_hash(scope: Scope) -> pl.Expr:
    """One number per (tenant, subject) of ``scope``."""
    return pl.struct("tenant", scope).hash()


def _value_hash(column: str) -> pl.Expr:
    return pl.when(pl.col(column).is_not_null()).then(pl.col(column).hash())


def subject_ips(frame: pl.DataFrame, scope: Scope, by: Sequence[str] = ()) -> pl.DataFrame:
    """Decisions per (subject, ip[, *by]): the long-window summary of ``scope``."""
    rows = frame.filter(pl.col(scope).is_not_null())
    keyed = rows.select(
        subject_hash(scope).alias("subject_hash"), _value_hash("ip").alias("ip_hash"), *by
    )
    return keyed.group_by("subject_hash", "ip_hash", *by).agg(pl.len().alias("checks"))


ORIGINS_SCHEMA: dict[str, pl.DataType] = {
    "tenant": pl.String(),
    "subject": pl.String(),
    "ips": pl.List(pl.String()),
    "ips_truncated": pl.Boolean(),
    "ipless": pl.Boolean(),
}


def subject_origins(
    recent: pl.DataFrame, scope: Scope, subjects: pl.DataFrame, cap: int
) -> pl.DataFrame:
    """Where the decisions in ``recent`` of each of ``subjects`` (columns ``tenant`` and
    ``subject``, of ``scope``) came from: its distinct ``ips`` (sorted, at most ``cap``),
    ``ips_truncated`` if there were more, ``ipless`` if some decisions had no address.
    Columns ``ORIGINS_SCHEMA``; subjects without decisions in ``recent`` are left out.

    Unlike ``subject_ips`` this keeps the addresses themselves (not hashes), so it is meant
    for the few subjects a verdict names, not for every subject of the window.
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
    return conform(grouped.rename({scope: "subject"}), ORIGINS_SCHEMA)


def subject_features(
    frame: pl.DataFrame, now_ms: int, short_ms: int = MINUTE_MS, long_ms: int = 10 * MINUTE_MS
) -> pl.DataFrame:
    """One row per (tenant, scope, subject) active in ``(now_ms - short_ms, now_ms]``:
    ``ID_COLUMNS`` then ``FEATURE_COLUMNS``.  ``frame`` has the columns of ``FRAME_SCHEMA``;
    decisions after ``now_ms`` are ignored, so a replay gives the features of that moment.
    """
    check_windows(short_ms, long_ms)
    upto = frame.filter(pl.col("ts") <= now_ms)
    window = upto.filter(pl.col("ts") > now_ms - long_ms)
    short_start = now_ms - short_ms
    recent = window.filter(pl.col("ts") > short_start)
    older = window.filter(pl.col("ts") <= short_start)
    prior = {scope: conform(subject_ips(older, scope), PRIOR_SCHEMA) for scope in SCOPES}
    # the long window only counts from the tenant's first decision in the frame
    starts = upto.group_by("tenant").agg(pl.col("ts").min().alias("first_ms"))
    prior_start = starts.select(
        "tenant", pl.max_horizontal("first_ms", pl.lit(now_ms - long_ms)).alias("prior_start_ms")
    )
    return assemble(Snapshot(recent, prior, prior_start, now_ms, short_ms))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the features of one moment are computed from.

    Parameters
    ----------
    recent
        Decisions in ``(now_ms - short_ms, now_ms]``, columns of ``FRAME_SCHEMA``.
    prior
        Per scope, ``subject_ips`` of the decisions from ``prior_start_ms`` up to the short
        window (rows may repeat a (subject, ip): their checks add up).
    prior_start
        ``tenant`` and ``prior_start_ms``: where each tenant's covered long window begins.
    """

    recent: pl.DataFrame
    prior: Mapping[Scope, pl.DataFrame]
    prior_start: pl.DataFrame
    now_ms: int
    short_ms: int


def assemble(
    snapshot: Snapshot, scopes: Sequence[Scope] = SCOPES, blamed: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The features of ``scopes`` at the snapshot's moment.

    ``blamed`` (columns ``tenant``, ``ip``) lists addresses already judged abusive.  A key
    or user id that none of them dominates is their target, not their tool (the accounts a
    credential stuffer tries from many addresses, the keys an enumerator guesses), so it is
    judged on the rest of its traffic; one that gets most of its decisions from a single
    blamed address (the account a scraper or a low-and-slow client drives) is judged on
    all of it.
    """
    recent = _mark_novel_routes(
        snapshot.recent.with_columns(_value_hash(name).alias(f"{name}_hash") for name in _HASHED)
    )
    parts = []
    for scope in scopes:
        rows = recent
        if blamed is not None and scope != "ip" and blamed.height:
            rows = spare_victims(recent, scope, blamed)
        parts.append(_scope_features(rows, snapshot, scope))
    features = pl.concat(parts, how="vertical")
    return features.with_columns(
        pl.col(name).median().over("tenant", "scope").alias(f"tenant_median_{name}")
        for name in SUBJECT_FEATURES
    )


def _mark_novel_routes(recent: pl.DataFrame) -> pl.DataFrame:
    keys = ["tenant", "route_hash"]
    popularity = (
        recent.filter(pl.col("route_hash").is_not_null())
        .group_by(keys)
        # a caller is an address with a key: the people behind one NAT address are many
        # callers, and the routes only they use are their application's, not a crawl;
        # a route its one caller keeps calling is that caller's own endpoint (a partner's
        # integration), not a page found by walking
        .agg(
            pl.struct("ip_hash", "key_hash").n_unique().alias("_route_ips"),
            pl.len().alias("_route_hits"),
        )
    )
    novel = (pl.col("_route_ips") <= 1) & (pl.col("_route_hits") <= NOVEL_ROUTE_HITS)
    return recent.join(popularity, on=keys, how="left").select(
        pl.exclude("_route_ips", "_route_hits"), novel.fill_null(False).alias("_novel")
    )


def spare_victims(recent: pl.DataFrame, scope: Scope, blamed: pl.DataFrame) -> pl.DataFrame:
    """``recent`` without the decisions ``blamed`` IPs made on subjects of ``scope`` that no
    single blamed IP gives more than half of their decisions (see ``assemble``)."""
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


def _scope_features(recent: pl.DataFrame, snapshot: Snapshot, scope: Scope) -> pl.DataFrame:
    prior = snapshot.prior[scope]
    key = "subject_hash"
    # each subject's decisions in time order, so consecutive rows give its gaps
    needed = ["tenant", scope, "ts", "allowed", "remaining", "_novel"]
    needed += [f"{column}_hash" for column in _HASHED]
    rows = (
        recent.filter(pl.col(scope).is_not_null())
        .select(subject_hash(scope).alias(key), *needed)
        .sort(key, "ts")  # only the columns used below: the other strings need not move
    )
    gap = pl.when(pl.col(key) == pl.col(key).shift()).then(pl.col("ts").diff())
    rows = rows.with_columns(gap.alias("_gap"))
    counts = rows.group_by(key).agg(
        pl.col("tenant").first(),
        pl.col(scope).first().alias("subject"),
        pl.len().alias("checks"),
        (~pl.col("allowed")).sum().alias("denied"),
        (pl.col("remaining") == 0).sum().alias("at_zero"),
        *(
            pl.col(f"{column}_hash").drop_nulls().n_unique().alias(name)
            for column, name in _DISTINCT.items()
        ),
        pl.col("_novel").mean().alias("route_novelty"),
        pl.col("_gap").mean().alias("gap_mean"),
        pl.col("_gap").std().alias("gap_std"),
    )
    route_counts = (
        rows.filter(pl.col("route_hash").is_not_null())
        .group_by(key, "route_hash")
        .agg(pl.len().cast(pl.Float64).alias("n"))
    )
    total = pl.col("n").sum()
    # H = log2(N) - sum(n log2 n) / N for route counts n summing to N
    entropy = route_counts.group_by(key).agg(
        (total.log(2) - (pl.col("n") * pl.col("n").log(2)).sum() / total).alias("route_entropy")
    )
    before = prior.group_by(key).agg(
        pl.col("checks").sum().alias("prior_checks"),
        pl.col("ip_hash").drop_nulls().n_unique().alias("prior_distinct_ips"),
    )
    features = (
        counts.join(entropy, on=key, how="left")
        .join(before, on=key, how="left")
        .join(_long_ips(rows, prior, scope), on=key, how="left")
        .join(snapshot.prior_start, on="tenant", how="left")
    )
    return features.select(
        "tenant",
        pl.lit(scope).alias("scope"),
        "subject",
        *_derived(snapshot.now_ms, snapshot.short_ms),
    ).select(*ID_COLUMNS, *SUBJECT_FEATURES)


_DISTINCT = {
    "key": "distinct_keys",
    "ip": "distinct_ips",
    "user_id": "distinct_user_ids",
    "user_agent": "distinct_user_agents",
    "route": "distinct_routes",
}


def _long_ips(rows: pl.DataFrame, prior: pl.DataFrame, scope: Scope) -> pl.DataFrame:
    """Distinct IPs of each subject over the whole long window."""
    key = "subject_hash"
    if scope == "ip":  # an address is its own single IP: skip the union
        return rows.select(key, pl.lit(1).alias("distinct_ips_long")).unique()
    pairs = pl.concat([rows.select(key, "ip_hash").unique(), prior.select(key, "ip_hash")])
    return pairs.group_by(key).agg(
        pl.col("ip_hash").drop_nulls().n_unique().alias("distinct_ips_long")
    )


def _derived(now_ms: int, short_ms: int) -> list[pl.Expr]:
    short_minutes = short_ms / MINUTE_MS
    checks = pl.col("checks").cast(pl.Float64)
    prior_checks = pl.col("prior_checks").fill_null(0).cast(pl.Float64)
    prior_minutes = ((now_ms - short_ms) - pl.col("prior_start_ms")).clip(lower_bound=0) / MINUTE_MS
    prior_minutes = prior_minutes.fill_null(0.0)
    rate_short = checks / short_minutes
    typical = rate_short.median().over("tenant")
    prior_rate = prior_checks / pl.max_horizontal(prior_minutes, pl.lit(1e-9))
    cv = pl.col("gap_std") / pl.col("gap_mean")
    measured_cv = (
        pl.when((checks >= CV_MIN_CHECKS) & (pl.col("gap_mean") > 0))
        .then(cv)
        .otherwise(1.0)
        .fill_null(1.0)
    )
    distinct_keys = pl.max_horizontal(pl.col("distinct_keys"), pl.lit(1)).cast(pl.Float64)
    return [
        checks.alias("checks"),
        rate_short.alias("rate_short"),
        ((checks + prior_checks) / (short_minutes + prior_minutes)).alias("rate_long"),
        # no earlier decisions: no own baseline to grow from (new users are not growth)
        pl.when((prior_minutes >= 1.0) & (prior_checks > 0))
        .then((rate_short + typical) / (prior_rate + typical))
        .otherwise(1.0)
        .alias("growth"),
        (pl.col("denied").cast(pl.Float64) / checks).alias("deny_ratio"),
        (pl.col("at_zero").cast(pl.Float64) / checks).alias("zero_remaining_share"),
        *(pl.col(name).cast(pl.Float64) for name in _DISTINCT.values()),
        pl.col("distinct_ips_long").fill_null(1).cast(pl.Float64),
        pl.col("prior_distinct_ips").fill_null(0).cast(pl.Float64),
        pl.col("route_entropy").fill_null(0.0).clip(lower_bound=0.0),
        pl.col("route_novelty").cast(pl.Float64),
        measured_cv.alias("interarrival_cv"),
        ((1.0 - measured_cv) * (checks - 1.0).clip(lower_bound=0.0).sqrt()).alias("regularity"),
        (rate_short / distinct_keys).alias("rate_per_key"),
        (rate_short / pl.max_horizontal(distinct_keys, "distinct_user_ids")).alias(
            "rate_per_identity"
        ),
        (pl.max_horizontal("distinct_keys", "distinct_user_ids") / checks).alias("identity_churn"),
    ]


def check_windows(short_ms: int, long_ms: int) -> None:
    if not 0 < short_ms <= long_ms:
        raise ValueError(f"windows must satisfy 0 < short_ms <= long_ms, got {short_ms}, {long_ms}")


def as_scope(value: str) -> Scope:
    """``value`` as a ``Scope``; ValueError naming it if it is not one."""
    try:
        return _SCOPE_NAMES[value]
    except KeyError:
        raise ValueError(f"not a scope: {value!r}") from None


_SCOPE_NAMES: dict[str, Scope] = {scope: scope for scope in SCOPES}
