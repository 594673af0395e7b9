"""Per-subject features of the decision stream, over a short and a long window.

A *subject* is one value of ``ip``, ``key`` or ``user_id`` within a tenant (its *scope*).
Every subject with at least one decision in the short window (default the last minute)
gets one row; the long window (default ten minutes) supplies the subject's own earlier
rate and IP spread, which is what "growth" and "a key suddenly used from many IPs" are
measured against.  Decisions whose value for a scope is null (no IP sent, no user id) are
left out of that scope only.

Features are computed in two steps.  Decisions are first *tallied* per subject into
integers that can be added to and taken from (``TALLY_SCHEMA``: counts, distinct values,
route counts, sums of gaps, the long window's counts); ``features_of`` then derives the
features of every tallied subject and the tenant medians, vectorised over subjects.
``subject_features`` tallies a raw frame from scratch (``detectors.rows``);
``detectors.window.RollingWindow`` keeps the tallies up to date as decisions arrive and
leave the windows (``detectors.tallies``), so an evaluation costs what changed since the
last one plus one pass over the active subjects.  Both derive with the same code and give
the same numbers.

Feature columns (``FEATURE_COLUMNS``), all Float64:

``checks``
    decisions in the short window (the evidence a verdict rests on).
``rate_short``, ``rate_long``
    decisions per minute in the short window and over the covered part of the long window.
``rate_active``
    decisions per minute over the span of the subject's decisions in the short window
    (from its first to its last there), from ``CV_MIN_CHECKS`` decisions on; before,
    ``rate_short``.  A source that started ten seconds ago at ten a second shows 600/min
    at once, not after a minute.
``known_before``
    1.0 for a subject the tenant saw earlier in the long window (or while the tenant has
    less than ``FRESH_MIN_PRIOR_MINUTES`` of earlier decisions, when nothing is known to
    be new), 0.0 for a newcomer.
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
``prior_checks``
    decisions in the long window before the short one: how well the subject's own history
    (``prior_distinct_ips``) is known (a key seen 40 times from one address has one; a key
    seen twice may simply not have shown its other servers yet).
``route_entropy``
    Shannon entropy of the routes in bits (0 for one route).
``route_novelty``
    share of the decisions on routes that no other caller (IP and key) of the tenant used
    in the short window and that this caller hit at most ``NOVEL_ROUTE_HITS`` times: near 0
    for people browsing the same application (also the users behind one NAT address, who
    are many callers) and for an integration calling its own endpoints over and over, near
    1 for a crawler walking ``/products/1``, ``/products/2``, …
``route_divergence``
    how far the subject's mix of routes is from its tenant's over the short window: the
    Kullback-Leibler divergence in bits, ``sum p log2(p / q)`` over the subject's routes,
    ``p`` its share of them and ``q`` the tenant's (half by address, half by check:
    ``ROUTE_MIX_BY_ADDRESS``).  Near 0 for people using the
    application as everybody does (the crowd behind one NAT address too), several bits
    for a source that only calls the sign-in route when one check in twenty does.
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
``fresh_identities``, ``fresh_share``
    for an address: the keys and user ids it used in the short window that the tenant had
    not seen in the long window before it (the larger of the two counts), and that count
    over its distinct keys or user ids (the larger).  A person or a NAT's crowd comes back
    with the identities it used minutes ago; a credential stuffer or an id guesser brings
    identities nobody used before, almost all of them new.  0 for keys and user ids, and
    until the tenant has ``FRESH_MIN_PRIOR_MINUTES`` of earlier decisions.
``tenant_median_<feature>``
    the median of each feature above over the tenant's active subjects of the same scope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from detectors.attribution import spare_victims
from detectors.verdict import SCOPES, Scope
from stream.events import DecisionEvent

MINUTE_MS = 60_000
CV_MIN_CHECKS = 8  # fewer gaps than this and a human's CV ranges over [0, 1.5] by chance
# a crawler fetches a page once (twice with a retry); an application calls its endpoints often
NOVEL_ROUTE_HITS = 2
# minutes of a tenant's earlier decisions before an identity can count as new: in its
# first minutes every identity is, for every source
FRESH_MIN_PRIOR_MINUTES = 0.5
# The tenant's route mix that ``route_divergence`` compares a subject with: this share of
# it weighs every address alike (each address's own mix, averaged), the rest every check
# alike.  A few heavy sources (five stuffers at 20 checks/s on the sign-in route) would
# make their route the tenant's usual one if checks alone counted.
ROUTE_MIX_BY_ADDRESS = 0.5

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
# the reasons a shadow policy answers allowed (limiter/policies/checks.py, SHADOWED)
_SHADOWED = frozenset({"limit", "cost_exceeds_limit"})
# an empty string names nobody: it must not make all anonymous callers one subject
_OPTIONAL = ("key", "ip", "user_id", "route", "user_agent")

ID_COLUMNS = ("tenant", "scope", "subject")
SUBJECT_FEATURES = (
    "checks",
    "rate_short",
    "rate_long",
    "rate_active",
    "known_before",
    "growth",
    "deny_ratio",
    "zero_remaining_share",
    "distinct_keys",
    "distinct_ips",
    "distinct_ips_long",
    "prior_distinct_ips",
    "prior_checks",
    "distinct_user_ids",
    "distinct_user_agents",
    "distinct_routes",
    "route_entropy",
    "route_novelty",
    "route_divergence",
    "interarrival_cv",
    "regularity",
    "rate_per_key",
    "rate_per_identity",
    "identity_churn",
    "fresh_identities",
    "fresh_share",
)
TENANT_FEATURES = tuple(f"tenant_median_{name}" for name in SUBJECT_FEATURES)
FEATURE_COLUMNS = SUBJECT_FEATURES + TENANT_FEATURES

# the values whose distinct count is a feature, and the feature's name
DISTINCT = {
    "key": "distinct_keys",
    "ip": "distinct_ips",
    "user_id": "distinct_user_ids",
    "user_agent": "distinct_user_agents",
    "route": "distinct_routes",
}
HASHED = tuple(DISTINCT)

# What the features of one subject are derived from: integers that a decision adds to when
# it arrives and takes from when it leaves a window (``route_plogp`` is a sum over the
# subject's routes, recomputed from their counts).  Gaps are those between the subject's
# consecutive decisions in the short window, in milliseconds.
TALLY_SCHEMA: dict[str, pl.DataType] = {
    "subject_hash": pl.UInt64(),
    "tenant": pl.String(),
    "subject": pl.String(),
    "checks": pl.Int64(),
    "denied": pl.Int64(),
    "at_zero": pl.Int64(),
    **{name: pl.Int64() for name in DISTINCT.values()},
    "novel": pl.Int64(),  # decisions on novel routes (see ``route_novelty``)
    "routed": pl.Int64(),  # decisions with a route
    "route_plogp": pl.Float64(),  # sum of n log2 n over the subject's route counts n
    # sum of n * -log2 q over its routes, q each route's share of the tenant's decisions
    "route_surprise": pl.Float64(),
    "gap_sum": pl.Int64(),
    "gap_sq": pl.Int64(),
    "prior_checks": pl.Int64(),  # decisions in the long window before the short one
    "prior_distinct_ips": pl.Int64(),
    "distinct_ips_long": pl.Int64(),
    "fresh_identities": pl.Int64(),  # see ``fresh_identities`` (addresses only)
}
# the identities whose novelty an address's ``fresh_identities`` counts
IDENTITIES: tuple[Scope, ...] = ("key", "user_id")

# the long-window summary of a scope: decisions per (subject, ip), both hashed (below)
PRIOR_SCHEMA: dict[str, pl.DataType] = {
    "subject_hash": pl.UInt64(),
    "ip_hash": pl.UInt64(),
    "checks": pl.UInt32(),
}
# what the tallies need to know of each route of a tenant's short window
ROUTE_SCHEMA: dict[str, pl.DataType] = {
    "tenant": pl.String(),
    "route_hash": pl.UInt64(),
    "novel": pl.Boolean(),
    "surprise": pl.Float64(),
}
PRIOR_START_SCHEMA: dict[str, pl.DataType] = {"tenant": pl.String(), "prior_start_ms": pl.Int64()}


def decisions_frame(events: Sequence[DecisionEvent]) -> pl.DataFrame:
    """The events as a frame with ``FRAME_SCHEMA``; missing and empty strings are null.
    A shadow policy's would-be denial (docs/policies.md) is what the caller was answered,
    allowed: a policy under evaluation must not make the detectors block anybody."""
    columns = {name: [getattr(event, name) for event in events] for name in FRAME_SCHEMA}
    if any(event.shadow for event in events):
        answered = [
            event.allowed or (event.shadow and event.reason in _SHADOWED) for event in events
        ]
        columns["allowed"] = answered
        columns["reason"] = [
            "ok" if yes and not event.allowed else event.reason
            for yes, event in zip(answered, events, strict=True)
        ]
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


def value_hash(column: str) -> pl.Expr:
    """``column`` hashed, null where it is null."""
    return pl.when(pl.col(column).is_not_null()).then(pl.col(column).hash())


def with_hashes(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with ``<column>_hash`` for each column of ``HASHED``."""
    return rows.with_columns(value_hash(name).alias(f"{name}_hash") for name in HASHED)


def plogp(counts: pl.Series) -> pl.Series:
    """``n log2 n`` of each count, with the logarithm ``features_of`` takes of their sum:
    one function for both ways of tallying, so that a subject on one route has the same
    entropy (zero) either way."""
    values = counts.cast(pl.Float64)
    return values * values.log(2)


def subject_features(
    frame: pl.DataFrame,
    now_ms: int,
    short_ms: int = MINUTE_MS,
    long_ms: int = 10 * MINUTE_MS,
    bucket_ms: int | None = None,
    blamed: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per (tenant, scope, subject) active in ``(now_ms - short_ms, now_ms]``:
    ``ID_COLUMNS`` then ``FEATURE_COLUMNS``, computed from scratch.  ``frame`` has the
    columns of ``FRAME_SCHEMA``; decisions after ``now_ms`` are ignored, so a replay gives
    the features of that moment.

    The long window is ``(now_ms - long_ms, now_ms]``; with ``bucket_ms`` it starts at the
    first multiple of ``bucket_ms`` at or after ``now_ms - long_ms`` instead, as in
    ``RollingWindow``, which forgets its past a bucket at a time.  With ``blamed``
    (columns ``tenant``, ``ip``), keys and user ids are judged without the decisions
    ``detectors.attribution.spare_victims`` spares them.
    """
    check_windows(short_ms, long_ms)
    upto = frame.filter(pl.col("ts") <= now_ms)
    short_start = now_ms - short_ms
    recent = with_hashes(upto.filter(pl.col("ts") > short_start))
    if bucket_ms is None:
        start = now_ms - long_ms
        earlier = pl.col("ts") > start
    else:
        start = -(-(now_ms - long_ms) // bucket_ms) * bucket_ms
        earlier = pl.col("ts") >= start
    older = upto.filter(earlier & (pl.col("ts") <= short_start))
    # the long window only counts from the tenant's first decision in the frame
    starts = upto.group_by("tenant").agg(pl.col("ts").min().alias("first_ms"))
    prior_start = starts.select(
        "tenant", pl.max_horizontal("first_ms", pl.lit(start)).alias("prior_start_ms")
    )
    novel = route_stats(recent)
    seen = seen_identities(older)
    tallies = {}
    for scope in SCOPES:
        rows = recent
        if blamed is not None and scope != "ip":
            rows = spare_victims(recent, scope, blamed)
        tallies[scope] = tally_rows(rows, subject_ips(older, scope), scope, novel, seen)
    return features_of(tallies, prior_start, now_ms, short_ms)


def subject_ips(frame: pl.DataFrame, scope: Scope) -> pl.DataFrame:
    """Decisions per (subject, ip): the long-window summary of ``scope`` (``PRIOR_SCHEMA``)."""
    rows = frame.filter(pl.col(scope).is_not_null())
    keyed = rows.select(
        subject_hash(scope).alias("subject_hash"), value_hash("ip").alias("ip_hash")
    )
    summary = keyed.group_by("subject_hash", "ip_hash").agg(pl.len().alias("checks"))
    return conform(summary, PRIOR_SCHEMA)


def seen_identities(frame: pl.DataFrame) -> dict[Scope, pl.DataFrame]:
    """Per identity scope, the ``subject_hash`` of its subjects with decisions in ``frame``
    (the long window before the short one): what ``fresh_identities`` is not."""
    return {
        scope: frame.filter(pl.col(scope).is_not_null())
        .select(subject_hash(scope).alias("subject_hash"))
        .unique()
        for scope in IDENTITIES
    }


def route_stats(recent: pl.DataFrame) -> pl.DataFrame:
    """``ROUTE_SCHEMA`` rows of the routes of ``recent`` (rows ``with_hashes``): whether each
    is novel (used by one caller, at most ``NOVEL_ROUTE_HITS`` times) and its surprise,
    ``-log2`` of its share of the tenant's traffic (``ROUTE_MIX_BY_ADDRESS``)."""
    routed = recent.filter(pl.col("route_hash").is_not_null())
    popularity = (
        routed.group_by("tenant", "route_hash")
        # a caller is an address with a key: the people behind one NAT address are many
        # callers, and the routes only they use are their application's, not a crawl;
        # a route its one caller keeps calling is that caller's own endpoint (a partner's
        # integration), not a page found by walking
        .agg(
            pl.struct("ip_hash", "key_hash").n_unique().alias("callers"),
            pl.len().alias("hits"),
        )
    )
    per_address = (
        routed.filter(pl.col("ip_hash").is_not_null())
        .group_by("tenant", "ip_hash", "route_hash")
        .agg(pl.len().alias("n"))
    )
    by_address = (
        per_address.with_columns(
            (pl.col("n") / pl.col("n").sum().over("tenant", "ip_hash")).alias("share"),
            pl.col("ip_hash").n_unique().over("tenant").alias("addresses"),
        )
        .group_by("tenant", "route_hash")
        .agg((pl.col("share").sum() / pl.col("addresses").first()).alias("by_address"))
    )
    novel = (pl.col("callers") <= 1) & (pl.col("hits") <= NOVEL_ROUTE_HITS)
    by_checks = pl.col("hits") / pl.col("hits").sum().over("tenant")
    any_address = pl.col("by_address").is_not_null().any().over("tenant")
    share = (
        pl.when(any_address)
        .then(
            (1 - ROUTE_MIX_BY_ADDRESS) * by_checks
            + ROUTE_MIX_BY_ADDRESS * pl.col("by_address").fill_null(0.0)
        )
        .otherwise(by_checks)
    )
    stats = popularity.join(by_address, on=["tenant", "route_hash"], how="left")
    return conform(
        stats.with_columns(novel.alias("novel"), (-share.log(2)).alias("surprise")),
        ROUTE_SCHEMA,
    )


def tally_rows(
    recent: pl.DataFrame,
    prior: pl.DataFrame,
    scope: Scope,
    novel: pl.DataFrame,
    seen: Mapping[Scope, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """The tallies (``TALLY_SCHEMA``) of ``scope``'s subjects in ``recent`` (short-window rows
    ``with_hashes``), from scratch.  ``prior`` is ``subject_ips`` of the decisions earlier in
    the long window, ``novel`` the ``route_stats`` of the whole short window, ``seen`` the
    ``seen_identities`` of the earlier decisions (needed for addresses only)."""
    key = "subject_hash"
    needed = ["tenant", scope, "ts", "allowed", "remaining", *(f"{c}_hash" for c in HASHED)]
    flags = novel.select(
        "tenant", "route_hash", pl.col("novel").alias("_novel"), pl.col("surprise").alias("_sur")
    )
    rows = (
        recent.filter(pl.col(scope).is_not_null())
        .select(subject_hash(scope).alias(key), *needed)
        .join(flags, on=["tenant", "route_hash"], how="left")
        .sort(key, "ts")  # each subject's decisions in time order: consecutive rows, its gaps
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
            for column, name in DISTINCT.items()
        ),
        pl.col("_novel").sum().alias("novel"),
        pl.col("_gap").sum().alias("gap_sum"),
        (pl.col("_gap") * pl.col("_gap")).sum().alias("gap_sq"),
    )
    per_route = (
        rows.filter(pl.col("route_hash").is_not_null())
        .group_by(key, "route_hash")
        .agg(pl.len().alias("n"), pl.col("_sur").first().alias("sur"))
    )
    routes = (
        per_route.with_columns(plogp(per_route["n"]).alias("p"))
        .group_by(key)
        .agg(
            pl.col("n").sum().alias("routed"),
            pl.col("p").sum().alias("route_plogp"),
            (pl.col("n").cast(pl.Float64) * pl.col("sur")).sum().alias("route_surprise"),
        )
    )
    before = prior.group_by(key).agg(
        pl.col("checks").sum().alias("prior_checks"),
        pl.col("ip_hash").drop_nulls().n_unique().alias("prior_distinct_ips"),
    )
    if scope == "ip":  # an address is its own single IP
        spread = counts.select(key, pl.lit(1).alias("distinct_ips_long"))
    else:
        pairs = pl.concat([rows.select(key, "ip_hash").unique(), prior.select(key, "ip_hash")])
        spread = pairs.group_by(key).agg(
            pl.col("ip_hash").drop_nulls().n_unique().alias("distinct_ips_long")
        )
    tallies = (
        counts.join(routes, on=key, how="left")
        .join(before, on=key, how="left")
        .join(spread, on=key, how="left")
    )
    if scope == "ip" and seen is not None:
        tallies = tallies.join(_fresh(recent, seen), on=key, how="left")
    else:
        tallies = tallies.with_columns(pl.lit(0).alias("fresh_identities"))
    filled = ["routed", "route_plogp", "route_surprise", "prior_checks", "prior_distinct_ips"]
    filled.append("fresh_identities")
    return conform(tallies.with_columns(pl.col(filled).fill_null(0)), TALLY_SCHEMA)


def _fresh(recent: pl.DataFrame, seen: Mapping[Scope, pl.DataFrame]) -> pl.DataFrame:
    """Per address of ``recent``: the larger of its new keys and its new user ids."""
    counts = []
    for scope in IDENTITIES:
        pairs = (
            recent.filter(pl.col("ip").is_not_null() & pl.col(scope).is_not_null())
            .select(
                subject_hash("ip").alias("subject_hash"),
                subject_hash(scope).alias("identity"),
            )
            .unique()
            .join(seen[scope], left_on="identity", right_on="subject_hash", how="anti")
        )
        counts.append(pairs.group_by("subject_hash").agg(pl.len().alias(f"fresh_{scope}")))
    both = counts[0].join(counts[1], on="subject_hash", how="full", coalesce=True)
    return both.select(
        "subject_hash",
        pl.max_horizontal(pl.col("fresh_key").fill_null(0), pl.col("fresh_user_id").fill_null(0))
        .cast(pl.Int64)
        .alias("fresh_identities"),
    )


def features_of(
    tallies: Mapping[Scope, pl.DataFrame], prior_start: pl.DataFrame, now_ms: int, short_ms: int
) -> pl.DataFrame:
    """The features of every tallied subject (``TALLY_SCHEMA`` rows per scope) at
    ``now_ms``, with the medians of its tenant and scope.  ``prior_start`` (columns
    ``PRIOR_START_SCHEMA``) says where each tenant's covered long window begins."""
    parts = [
        tally.join(prior_start, on="tenant", how="left")
        .select("tenant", pl.lit(scope).alias("scope"), "subject", *_derived(now_ms, short_ms))
        .select(*ID_COLUMNS, *SUBJECT_FEATURES)
        for scope, tally in tallies.items()
    ]
    features = pl.concat(parts, how="vertical")
    return features.with_columns(
        pl.col(name).median().over("tenant", "scope").alias(f"tenant_median_{name}")
        for name in SUBJECT_FEATURES
    )


def _derived(now_ms: int, short_ms: int) -> list[pl.Expr]:
    short_minutes = short_ms / MINUTE_MS
    checks = pl.col("checks").cast(pl.Float64)
    prior_checks = pl.col("prior_checks").cast(pl.Float64)
    prior_minutes = ((now_ms - short_ms) - pl.col("prior_start_ms")).clip(lower_bound=0) / MINUTE_MS
    prior_minutes = prior_minutes.fill_null(0.0)
    rate_short = checks / short_minutes
    typical = rate_short.median().over("tenant")
    prior_rate = prior_checks / pl.max_horizontal(prior_minutes, pl.lit(1e-9))
    # gaps: checks - 1 of them, summing to gap_sum, their squares to gap_sq
    gaps = checks - 1.0
    gap_sum = pl.col("gap_sum").cast(pl.Float64)
    gap_mean = pl.when(gaps > 0).then(gap_sum / gaps)
    variance = (pl.col("gap_sq").cast(pl.Float64) * gaps - gap_sum * gap_sum) / (gaps * (gaps - 1))
    gap_std = pl.when(gaps > 1).then(variance.clip(lower_bound=0.0).sqrt())
    measured_cv = (
        pl.when((checks >= CV_MIN_CHECKS) & (gap_mean > 0))
        .then(gap_std / gap_mean)
        .otherwise(1.0)
        .fill_null(1.0)
    )
    routed = pl.col("routed").cast(pl.Float64)
    # H = log2(N) - sum(n log2 n) / N for route counts n summing to N
    entropy = pl.when(routed > 0).then(routed.log(2) - pl.col("route_plogp") / routed)
    distinct_keys = pl.max_horizontal(pl.col("distinct_keys"), pl.lit(1)).cast(pl.Float64)
    fresh = (
        pl.when(prior_minutes >= FRESH_MIN_PRIOR_MINUTES)
        .then(pl.col("fresh_identities").cast(pl.Float64))
        .otherwise(0.0)
    )
    return [
        checks.alias("checks"),
        rate_short.alias("rate_short"),
        ((checks + prior_checks) / (short_minutes + prior_minutes)).alias("rate_long"),
        pl.when((checks >= CV_MIN_CHECKS) & (gap_sum > 0))
        .then(pl.max_horizontal(rate_short, gaps * MINUTE_MS / gap_sum))
        .otherwise(rate_short)
        .alias("rate_active"),
        pl.when((prior_checks > 0) | (prior_minutes < FRESH_MIN_PRIOR_MINUTES))
        .then(1.0)
        .otherwise(0.0)
        .alias("known_before"),
        # no earlier decisions: no own baseline to grow from (new users are not growth)
        pl.when((prior_minutes >= 1.0) & (prior_checks > 0))
        .then((rate_short + typical) / (prior_rate + typical))
        .otherwise(1.0)
        .alias("growth"),
        (pl.col("denied").cast(pl.Float64) / checks).alias("deny_ratio"),
        (pl.col("at_zero").cast(pl.Float64) / checks).alias("zero_remaining_share"),
        *(pl.col(name).cast(pl.Float64) for name in DISTINCT.values()),
        pl.col("distinct_ips_long").cast(pl.Float64),
        pl.col("prior_distinct_ips").cast(pl.Float64),
        prior_checks.alias("prior_checks"),
        entropy.fill_null(0.0).clip(lower_bound=0.0).alias("route_entropy"),
        (pl.col("novel").cast(pl.Float64) / checks).alias("route_novelty"),
        pl.when(routed > 0)
        .then(pl.col("route_surprise") / routed - entropy)
        .fill_null(0.0)
        .clip(lower_bound=0.0)
        .alias("route_divergence"),
        measured_cv.alias("interarrival_cv"),
        ((1.0 - measured_cv) * (checks - 1.0).clip(lower_bound=0.0).sqrt()).alias("regularity"),
        (rate_short / distinct_keys).alias("rate_per_key"),
        (rate_short / pl.max_horizontal(distinct_keys, "distinct_user_ids")).alias(
            "rate_per_identity"
        ),
        (pl.max_horizontal("distinct_keys", "distinct_user_ids") / checks).alias("identity_churn"),
        fresh.alias("fresh_identities"),
        (fresh / pl.max_horizontal("distinct_keys", "distinct_user_ids", pl.lit(1))).alias(
            "fresh_share"
        ),
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
