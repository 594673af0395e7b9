"""The rule layer: the cases no model is needed for.

Each rule is a conjunction of thresholds that honest traffic does not reach, chosen so that
the legitimate look-alikes stay out: a NAT address also sends hundreds of checks a minute
with many keys, but almost none of them are denied; a mobile app's shared key also comes
from many IPs, but it did so before too.  The NAT's keys and users also come back every
few seconds (an enumerator's key is used once) and browse many routes (a stuffer's IP
only logs in); a launch crowd brings one user per IP.  A rule that fires decides alone (see
``detectors.policy``).

=======================  =====  ========================================================
rule                     scope  fires when (defaults in ``RuleThresholds``)
=======================  =====  ========================================================
``burst``                ip     > 600 checks/min while active (over the span of its
                                checks in the window, so a burst shows in seconds),
                                > 60% of them denied, from an address new to the
                                tenant (a known client over its limit, a sync job, is
                                the limiter's to stop)
``key_enumeration``      ip     >= 10 distinct keys in a minute and > 60% denied, or
                                >= 60 distinct keys in a minute that are > 80% of its
                                checks and mostly come without a user id (each key tried
                                about once: a walk through ``user:1``, ``user:2``, …
                                that the limiter allows, since every new key is a fresh
                                counter; a NAT's users signing in name themselves)
``credential_stuffing``  ip     >= 10 distinct user ids in a minute and > 60% denied, or
                                >= 3 distinct user ids in >= 12 checks, >= 5% denied, all
                                on one route (a botnet IP that lives seconds on the login
                                route, trying accounts past their login limit; a NAT's
                                users signing in at once are not denied)
``new_identities``       ip     >= 8 keys or user ids new to the tenant in a minute
                                (none of its earlier 10 minutes used them), >= 80% of
                                its identities, and >= 4 times the median of the
                                tenant's addresses, on routes >= 1.5 bits away from the
                                tenant's route mix: judged against the population, not
                                the shape, and never hidden by the volume guard (a NAT's
                                crowd, even new, browses as everybody does)
``unique_paths``         ip     >= 20 checks in a minute, and >= 80% of them on routes
                                no other caller used and it hit at most twice, or >= 90%
                                of them on a route of their own (distinct routes per
                                check, a walk through pages another crawler may fetch
                                too); each also >= 4 times the tenant's median (a
                                tenant whose every address opens pages of its own is
                                not judged by it)
``key_spread``           key    >= 20 distinct IPs over 10 minutes, where before the
                                last minute the same key came from 1 or 2 IPs
``key_growth``           key    its addresses grew beyond its own history: in the last
                                minute >= 2 addresses new to it (none of its earlier
                                decisions in the 10 minutes came from them), at least as
                                many as it had before (its set at least doubled), while
                                one of its old addresses goes on using it (a move to new
                                servers stops the old ones), and a history that shows its
                                addresses (>= 8 earlier checks per earlier address: a
                                key seen twice may not have shown its second server yet)
=======================  =====  ========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from detectors.model_features import describe
from detectors.verdict import Signal

RULES_VERSION = "rules-4"


@dataclass(frozen=True, slots=True)
class RuleThresholds:
    burst_rate: float = 600.0  # checks/min from one IP; a browser makes a few dozen
    # a sync job's first burst, over its (large) limit, was half denied in a training seed
    burst_deny_ratio: float = 0.6
    many_subjects: int = 10  # distinct keys or user ids behind one IP within a minute
    many_subjects_deny_ratio: float = 0.6  # a NAT's users mostly succeed
    # allowed enumeration: each key used about once (a NAT's keys repeat: churn 0.1-0.3)
    enumerated_keys: int = 60
    enumeration_churn: float = 0.8  # distinct keys per check
    enumeration_identified: float = 0.5  # user ids per key: people signing in name themselves
    # rotating stuffing IPs: a few accounts each, on one route, partly past the login limit
    stuffing_user_ids: int = 3
    stuffing_checks: int = 12
    # a stuffer's accounts are tried a few times each, so only 10-40% of an IP's attempts
    # meet the login limit; people signing in at once behind a NAT are hardly ever denied
    stuffing_deny_ratio: float = 0.05
    # identities nobody used before: the population's own level, or this floor, whichever
    # is higher (a NAT's users come back with the keys they used minutes ago)
    fresh_min: int = 8
    fresh_share: float = 0.8
    fresh_factor: float = 4.0
    fresh_quantile: float = 0.5  # robust to attackers up to half the tenant's addresses
    # ... and used unlike the tenant's own mix of routes: a crowd of people behind one
    # address, even all new at once, uses the application as everybody does
    fresh_divergence: float = 1.5  # bits
    # a crawl: nearly every check on a page nobody else fetched
    unique_checks: int = 20
    unique_share: float = 0.8
    unique_factor: float = 4.0
    walk_share: float = 0.9  # distinct routes per check
    spread_ips: int = 20  # distinct IPs of one key over the long window
    spread_baseline_max: float = 2.0  # the key's usual number of IPs
    # a key's addresses growing beyond its own history (a leaked key used from a few
    # addresses while its owner goes on): new addresses, and their count over its earlier one
    growth_new_ips: int = 2
    growth_factor: float = 1.0
    growth_history: float = 8.0  # earlier checks per earlier address: a history that shows

    def __post_init__(self) -> None:
        shares = ("burst_deny_ratio", "many_subjects_deny_ratio", "stuffing_deny_ratio")
        for name in (
            *shares,
            "enumeration_churn",
            "enumeration_identified",
            "fresh_share",
            "unique_share",
            "walk_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a share in [0, 1], got {value!r}")
        if self.growth_new_ips < 1:
            raise ValueError(f"growth_new_ips must be >= 1, got {self.growth_new_ips!r}")
        for name in ("growth_factor", "growth_history"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True, slots=True)
class RuleHit:
    row: int  # index into the features frame given to ``apply_rules``
    rule: str
    score: float
    reason: str
    signals: tuple[Signal, ...]


# how sure each rule is; all clear the policy's threshold on their own
RULE_SCORES = {
    "burst": 0.99,
    "key_enumeration": 0.97,
    "credential_stuffing": 0.97,
    "new_identities": 0.95,
    "unique_paths": 0.95,
    "key_spread": 0.95,
    "key_growth": 0.95,
}


def apply_rules(features: pl.DataFrame, thresholds: RuleThresholds) -> list[RuleHit]:
    """The strongest rule that fires for each row of ``features`` (``subject_features``
    output), in row order.  Vectorised: only firing rows cost Python work."""
    t = thresholds
    ip = pl.col("scope") == "ip"
    denied = pl.col("deny_ratio")
    # a key's own history, not the tenant's: a brand-new key shared by a launch crowd has
    # none, and is left to the models, which compare it with the tenant's keys
    own_ips = pl.col("prior_distinct_ips")
    conditions = {
        "burst": ip
        & (pl.col("rate_active") > t.burst_rate)
        & (denied > t.burst_deny_ratio)
        # an address with no earlier decision, even in the tenant's first minutes
        & (pl.col("prior_distinct_ips") == 0),
        "key_enumeration": ip & (_denied_keys(t) | _walked_keys(t)),
        "credential_stuffing": ip & (_denied_users(t) | _rotating_stuffer(t)),
        "new_identities": ip & _fresh(t),
        "unique_paths": ip & (pl.col("checks") >= t.unique_checks) & (_novel(t) | _walk(t)),
        "key_spread": (pl.col("scope") == "key")
        & (pl.col("distinct_ips_long") >= t.spread_ips)
        & (own_ips >= 1)
        & (own_ips <= t.spread_baseline_max),
        "key_growth": (pl.col("scope") == "key") & _grown(t),
    }
    flagged = (
        features.with_row_index("row")
        .with_columns(_fresh_bar(t).alias("fresh_bar"))
        .with_columns(
            own_ips.alias("own_ips"), *(cond.alias(name) for name, cond in conditions.items())
        )
        .filter(pl.any_horizontal(*conditions))
    )
    hits: list[RuleHit] = []
    for row in flagged.iter_rows(named=True):
        rule = next(name for name in RULE_SCORES if row[name])  # strongest first
        hits.append(_hit(rule, row, t))
    return hits


def _novel(t: RuleThresholds) -> pl.Expr:
    novelty = pl.col("route_novelty")
    return (novelty >= t.unique_share) & (
        novelty >= t.unique_factor * pl.col("tenant_median_route_novelty")
    )


def _walk(t: RuleThresholds) -> pl.Expr:
    # pages fetched once each, nearly every check a new one, far more of them than the
    # tenant's callers use: a crawl, even when another crawler fetches the same pages
    routes = pl.col("distinct_routes")
    return (routes >= t.walk_share * pl.col("checks")) & (
        routes >= t.unique_factor * pl.col("tenant_median_distinct_routes")
    )


def _fresh_bar(t: RuleThresholds) -> pl.Expr:
    """The new identities an address must bring: the floor, or ``fresh_factor`` times the
    ``fresh_quantile`` of the tenant's addresses, whichever is higher."""
    population = pl.col("fresh_identities").quantile(t.fresh_quantile).over("tenant", "scope")
    return pl.max_horizontal(pl.lit(float(t.fresh_min)), t.fresh_factor * population.fill_null(0))


def _fresh(t: RuleThresholds) -> pl.Expr:
    return (
        (pl.col("fresh_identities") >= pl.col("fresh_bar"))
        & (pl.col("fresh_share") >= t.fresh_share)
        & (pl.col("route_divergence") >= t.fresh_divergence)
    )


def _new_ips() -> pl.Expr:
    """Addresses of the last minute that none of the subject's earlier decisions came from."""
    return pl.col("distinct_ips_long") - pl.col("prior_distinct_ips")


def _grown(t: RuleThresholds) -> pl.Expr:
    own, new = pl.col("prior_distinct_ips"), _new_ips()
    return (
        (own >= 1)
        & (new >= t.growth_new_ips)
        & (new >= t.growth_factor * own)
        # its old addresses go on: in the last minute it came from more than the new ones
        & (pl.col("distinct_ips") > new)
        & (pl.col("prior_checks") >= t.growth_history * own)
    )


def _denied_keys(t: RuleThresholds) -> pl.Expr:
    return (pl.col("distinct_keys") >= t.many_subjects) & (
        pl.col("deny_ratio") > t.many_subjects_deny_ratio
    )


def _walked_keys(t: RuleThresholds) -> pl.Expr:
    # people signing in behind a NAT also bring a new key each at first, but name
    # themselves: a guessed key comes without a user id
    keys = pl.col("distinct_keys")
    return (
        (keys >= t.enumerated_keys)
        & (keys > t.enumeration_churn * pl.col("checks"))
        & (pl.col("distinct_user_ids") < t.enumeration_identified * keys)
    )


def _denied_users(t: RuleThresholds) -> pl.Expr:
    return (pl.col("distinct_user_ids") >= t.many_subjects) & (
        pl.col("deny_ratio") > t.many_subjects_deny_ratio
    )


def _rotating_stuffer(t: RuleThresholds) -> pl.Expr:
    return (
        (pl.col("distinct_user_ids") >= t.stuffing_user_ids)
        & (pl.col("checks") >= t.stuffing_checks)
        & (pl.col("deny_ratio") >= t.stuffing_deny_ratio)
        & (pl.col("distinct_routes") <= 1)
    )


def _hit(rule: str, row: dict[str, float], t: RuleThresholds) -> RuleHit:
    def signal(feature: str, baseline_column: str) -> Signal:
        return Signal(feature, float(row[feature]), float(row[baseline_column]), 1.0)

    deny = signal("deny_ratio", "tenant_median_deny_ratio")
    if rule == "burst":
        rate = signal("rate_active", "tenant_median_rate_active")
        reason = (
            f"{describe('rate_short', rate.value)} while active from one IP with "
            f"{deny.value:.0%} denied "
            f"(rule: > {t.burst_rate:,.0f}/min and > {t.burst_deny_ratio:.0%} denied from "
            "an address new to the tenant; "
            f"tenant median {rate.baseline:.1f}/min)"
        )
        signals: tuple[Signal, ...] = (rate, deny)
    elif rule in ("key_enumeration", "credential_stuffing"):
        feature = "distinct_keys" if rule == "key_enumeration" else "distinct_user_ids"
        many = signal(feature, f"tenant_median_{feature}")
        noun = "keys" if rule == "key_enumeration" else "user ids"
        checks = float(row["checks"])
        denied_rule = many.value >= t.many_subjects and deny.value > t.many_subjects_deny_ratio
        if denied_rule:
            rule_text = f">= {t.many_subjects} and > {t.many_subjects_deny_ratio:.0%} denied"
        elif rule == "key_enumeration":
            rule_text = (
                f">= {t.enumerated_keys} keys, each new in > {t.enumeration_churn:.0%} "
                "of the checks"
            )
        else:
            rule_text = (
                f">= {t.stuffing_user_ids} user ids in >= {t.stuffing_checks} checks on "
                f"one route, >= {t.stuffing_deny_ratio:.0%} denied"
            )
        reason = (
            f"one IP tried {many.value:.0f} distinct {noun} in a minute in {checks:.0f} "
            f"checks, {deny.value:.0%} denied (rule: {rule_text}; tenant median "
            f"{many.baseline:.0f})"
        )
        signals = (many, deny)
    elif rule == "unique_paths":
        unique = signal("route_novelty", "tenant_median_route_novelty")
        paths = signal("distinct_routes", "tenant_median_distinct_routes")
        checks = float(row["checks"])
        reason = (
            f"one IP made {checks:.0f} checks in a minute on {paths.value:.0f} distinct "
            f"routes (the tenant's median caller: {paths.baseline:.0f}), {unique.value:.0%} "
            "of them on routes no other caller used (rule: >= "
            f"{t.unique_checks} checks, and >= {t.unique_share:.0%} on such routes or a "
            f"new route in >= {t.walk_share:.0%} of the checks, >= {t.unique_factor:g} times "
            "the tenant's median)"
        )
        signals = (paths, unique, signal("checks", "tenant_median_checks"))
    elif rule == "new_identities":
        fresh = Signal(
            "fresh_identities", float(row["fresh_identities"]), float(row["fresh_bar"]), 1.0
        )
        share = signal("fresh_share", "tenant_median_fresh_share")
        routes = signal("route_divergence", "tenant_median_route_divergence")
        reason = (
            f"one IP brought {fresh.value:.0f} keys or user ids in a minute that the tenant "
            f"had not seen in the 10 minutes before, {share.value:.0%} of its identities, in "
            f"{float(row['checks']):.0f} checks, on routes {routes.value:.1f} bits away from "
            f"the tenant's mix (rule: >= {fresh.baseline:.0f} new, the larger of "
            f"{t.fresh_min} and {t.fresh_factor:g} times the tenant's addresses' "
            f"{t.fresh_quantile:.0%} quantile; >= {t.fresh_share:.0%} of its identities; "
            f">= {t.fresh_divergence:g} bits)"
        )
        signals = (fresh, share, routes)
    elif rule == "key_growth":
        own = float(row["prior_distinct_ips"])
        new = float(row["distinct_ips_long"]) - own
        old = float(row["distinct_ips"]) - new
        reason = (
            f"key used from {new:.0f} addresses new to it in the last minute, against "
            f"{own:.0f} in its {float(row['prior_checks']):.0f} earlier checks of the 10 "
            f"minutes, {old:.0f} of which go on using it (rule: >= {t.growth_new_ips} new "
            f"addresses, >= {t.growth_factor:g} times its earlier ones, which continue; "
            f">= {t.growth_history:g} earlier checks per earlier address)"
        )
        signals = (
            Signal("new_ips", new, own, 1.0),
            Signal("prior_checks", float(row["prior_checks"]), 0.0, 0.0),
        )
    else:
        spread = Signal(
            "distinct_ips_long", float(row["distinct_ips_long"]), float(row["own_ips"]), 1.0
        )
        reason = (
            f"key used from {spread.value:.0f} distinct IPs in 10 minutes, against its usual "
            f"{spread.baseline:.0f} (rule: >= {t.spread_ips} where the usual is "
            f"<= {t.spread_baseline_max:.0f})"
        )
        signals = (spread, signal("distinct_ips", "tenant_median_distinct_ips"))
    return RuleHit(int(row["row"]), rule, RULE_SCORES[rule], reason, signals)
