"""The rule layer: the cases no model is needed for.

Each rule is a conjunction of thresholds that honest traffic does not reach, chosen so that
the legitimate look-alikes stay out: a NAT address also sends hundreds of checks a minute
with many keys, but almost none of them are denied; a mobile app's shared key also comes
from many IPs, but it did so before too.  A rule that fires decides alone (see
``detectors.policy``).

=======================  =====  ========================================================
rule                     scope  fires when (defaults in ``RuleThresholds``)
=======================  =====  ========================================================
``burst``                ip     > 600 checks/min and > 50% of them denied
``key_enumeration``      ip     >= 10 distinct keys in a minute and > 60% denied
``credential_stuffing``  ip     >= 10 distinct user ids in a minute and > 60% denied
``key_spread``           key    >= 20 distinct IPs over 10 minutes, where before the
                                last minute the same key came from 1 or 2 IPs
=======================  =====  ========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from detectors.model_features import describe
from detectors.verdict import Signal

RULES_VERSION = "rules-1"


@dataclass(frozen=True, slots=True)
class RuleThresholds:
    burst_rate: float = 600.0  # checks/min from one IP; a browser makes a few dozen
    burst_deny_ratio: float = 0.5
    many_subjects: int = 10  # distinct keys or user ids behind one IP within a minute
    many_subjects_deny_ratio: float = 0.6  # a NAT's users mostly succeed
    spread_ips: int = 20  # distinct IPs of one key over the long window
    spread_baseline_max: float = 2.0  # the key's usual number of IPs

    def __post_init__(self) -> None:
        for name in ("burst_deny_ratio", "many_subjects_deny_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a share in [0, 1], got {value!r}")


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
    "key_spread": 0.95,
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
        "burst": ip & (pl.col("rate_short") > t.burst_rate) & (denied > t.burst_deny_ratio),
        "key_enumeration": ip
        & (pl.col("distinct_keys") >= t.many_subjects)
        & (denied > t.many_subjects_deny_ratio),
        "credential_stuffing": ip
        & (pl.col("distinct_user_ids") >= t.many_subjects)
        & (denied > t.many_subjects_deny_ratio),
        "key_spread": (pl.col("scope") == "key")
        & (pl.col("distinct_ips_long") >= t.spread_ips)
        & (own_ips >= 1)
        & (own_ips <= t.spread_baseline_max),
    }
    flagged = (
        features.with_row_index("row")
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


def _hit(rule: str, row: dict[str, float], t: RuleThresholds) -> RuleHit:
    def signal(feature: str, baseline_column: str) -> Signal:
        return Signal(feature, float(row[feature]), float(row[baseline_column]), 1.0)

    deny = signal("deny_ratio", "tenant_median_deny_ratio")
    if rule == "burst":
        rate = signal("rate_short", "tenant_median_rate_short")
        reason = (
            f"{describe('rate_short', rate.value)} from one IP with {deny.value:.0%} denied "
            f"(rule: > {t.burst_rate:,.0f}/min and > {t.burst_deny_ratio:.0%} denied; "
            f"tenant median {rate.baseline:.1f}/min)"
        )
        signals: tuple[Signal, ...] = (rate, deny)
    elif rule in ("key_enumeration", "credential_stuffing"):
        feature = "distinct_keys" if rule == "key_enumeration" else "distinct_user_ids"
        many = signal(feature, f"tenant_median_{feature}")
        noun = "keys" if rule == "key_enumeration" else "user ids"
        reason = (
            f"one IP tried {many.value:.0f} distinct {noun} in a minute, {deny.value:.0%} "
            f"denied (rule: >= {t.many_subjects} and > {t.many_subjects_deny_ratio:.0%} "
            f"denied; tenant median {many.baseline:.0f})"
        )
        signals = (many, deny)
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
