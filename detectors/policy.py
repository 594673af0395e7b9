"""How the three layers' scores become one verdict per subject.

For each (tenant, scope), every subject active in the last minute is judged once
(threshold 0.8; the numbers below are the ``PolicySettings`` defaults):

1. **Rules decide alone.**  A subject a rule fires for (``detectors.rules``) gets that
   rule's score (0.95-0.99) and the rule's sentence.
2. **Evidence first.**  The models judge only subjects with at least ``min_checks`` (5)
   decisions in the short window; fewer cannot tell a typo from an attack.
3. **The guard.**  A subject whose deny ratio is at most ``guard_deny_ratio`` (25%) *and*
   whose checks per minute per identity (per key behind an address, per user behind a
   key) are usual (at most ``guard_rate_z`` = 3 robust deviations above the baseline;
   before there is one, ``guard_rate_factor`` = 3 times the tenant's median) is
   *volume-benign*: its ``volume``, ``identity`` and ``spread`` features, which all grow
   with the number of people behind a subject, are set to the baseline before scoring,
   and the isolation forest cannot decide alone.  A NAT address (hundreds of checks, many
   keys, each at a person's pace, nothing denied), a launch-day crowd of new users, and
   an app key those users share are volume-benign: they can only be blocked for being
   denied, machine-regular or on routes nobody else uses, never for how many they are.
   A subject *held by its limit* is spared the same way, and its ``denial`` features
   too: one or two identities (``held_identities``) and user agents (``held_agents``),
   denied at least ``held_min_deny_ratio`` (10%) of the time, and either known to the
   tenant before (``known_before``: a client retrying after each 429, a sync job
   running over its limit) or denied at most ``held_deny_ratio`` (80%), asking for up
   to five times what it may.  The limiter already stops what is over the limit, and
   what it allows is the tenant's contract.  A newcomer pressing harder (a burst, a
   password tried on one account at ten times the login limit), a source with many
   identities or rotating its user agent is not held, it is judged; so is a source the
   limiter allows, however close to its limit (a timer at ``remaining == 0``).
4. **Agreement or one sure layer.**  With ``b`` the baseline score and ``i`` the
   isolation score (both in [0, 1]) the score is the largest of

   - ``sqrt(b * i)``: the two layers agree (0.9 and 0.72 make 0.8);
   - ``b - baseline_margin`` (0.1): the baseline alone, which needs 0.9, that is two
     feature families far out together (``detectors.baseline``);
   - ``i - isolation_margin`` (0.15): the forest alone, which needs 0.95, and only for a
     subject that is not volume-benign and deviates by ``behaviour_z`` (3) or more in some
     family other than volume: volume alone is the limiter's business, not a block.

5. **Cold start.**  No baseline until the tenant has ``min_baseline_rows`` rows of
   history for the scope, no isolation score until the registry's ``min_history``
   (``detectors.registry``); a missing layer drops out of step 4, so in cold start only
   rules and a sure baseline block.
6. **Learning.**  Only rows with enough evidence that were neither flagged nor doubtful
   (baseline score under ``learn_below``, 0.5) are handed back as normal history, so an
   attack the models are not yet sure of cannot teach them that it is ordinary.

A verdict's ``detector`` names the layer that set its score (``rules``, ``baseline``,
``isolation_forest`` or ``baseline+isolation_forest``), ``detector_version`` the versions
involved, and its signals the features that deviated most from the baseline (the strongest
of each family first), with their values and the baseline's medians.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from detectors.baseline import MAD_TO_SIGMA, RobustBaseline
from detectors.features import as_scope
from detectors.isolation_model import IsolationScorer
from detectors.model_features import (
    BEHAVIOUR_COLUMNS,
    GUARDED_COLUMNS,
    HELD_COLUMNS,
    MODEL_FEATURES,
    MODEL_SPECS,
    describe,
    isolation_matrix,
    model_matrix,
)
from detectors.rules import RULES_VERSION, RuleHit, RuleThresholds, apply_rules
from detectors.verdict import Signal, Verdict

POLICY_VERSION = "policy-1"
Matrix = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
_PACE = MODEL_FEATURES.index("rate_per_identity")


@dataclass(frozen=True, slots=True)
class PolicySettings:
    threshold: float = 0.8
    baseline_margin: float = 0.1
    isolation_margin: float = 0.15
    min_checks: int = 5
    guard_deny_ratio: float = 0.25
    guard_rate_z: float = 3.0
    guard_rate_factor: float = 3.0
    held_identities: int = 2
    held_deny_ratio: float = 0.8
    held_min_deny_ratio: float = 0.1
    held_agents: int = 2
    behaviour_z: float = 3.0
    learn_below: float = 0.5
    top_signals: int = 4
    rules: RuleThresholds = field(default_factory=RuleThresholds)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold!r}")
        for name in ("held_deny_ratio", "held_min_deny_ratio"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be a share in [0, 1], got {share!r}")
        for name in ("baseline_margin", "isolation_margin"):
            margin = getattr(self, name)
            if not 0.0 <= margin < self.threshold:
                raise ValueError(f"{name} must be in [0, threshold), got {margin!r}")


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdicts of one (tenant, scope), and what the learners may take from it."""

    verdicts: list[Verdict]
    matrix: Matrix  # model_matrix of every row
    normal: Mask  # rows with enough evidence that nothing flagged or found doubtful


@dataclass(frozen=True, slots=True)
class _Scores:
    score: Matrix
    layer: npt.NDArray[np.str_]
    baseline: Matrix  # NaN where the layer did not score
    isolation: Matrix
    contributions: Matrix | None
    checks: Matrix


class DetectionPolicy:
    """Combines rules, the robust baseline and the isolation forest into verdicts."""

    def __init__(self, settings: PolicySettings | None = None) -> None:
        self.settings = settings if settings is not None else PolicySettings()

    def judge(
        self,
        features: pl.DataFrame,
        baseline: RobustBaseline | None,
        isolation: IsolationScorer | None,
        now_ms: int,
        *,
        include_all: bool = False,
        window_seconds: int = 60,
        long_window_seconds: int = 600,
    ) -> Judgement:
        """Verdicts for the rows of ``features`` (one tenant and scope, ``subject_features``
        columns): the warranted ones, or with ``include_all`` one per row.  The window
        lengths only label the verdicts (rules on IP spread look at the long one)."""
        s = self.settings
        matrix = model_matrix(features)
        evidence = features["checks"].to_numpy() >= s.min_checks
        hits = {hit.row: hit for hit in apply_rules(features, s.rules)}
        scores = self._scores(features, matrix, evidence, baseline, isolation)
        warranted = scores.score >= s.threshold
        ruled = np.zeros(len(features), dtype=bool)
        ruled[np.fromiter(hits, dtype=np.int64, count=len(hits))] = True
        rows = np.arange(len(features)) if include_all else np.flatnonzero(warranted | ruled)
        names = features.select("tenant", "scope", "subject")[rows].iter_rows()
        verdicts = []
        for row, (tenant, scope, subject) in zip(rows.tolist(), names, strict=True):
            base = dict(
                tenant=tenant,
                scope=as_scope(scope),
                subject=subject,
                threshold=s.threshold,
                observed_at_ms=now_ms,
            )
            hit = hits.get(row)
            if hit is not None:
                seconds = long_window_seconds if hit.rule == "key_spread" else window_seconds
                verdicts.append(_rule_verdict(hit, seconds, **base))
            else:
                verdicts.append(
                    self._model_verdict(
                        row, matrix, scores, baseline, isolation, window_seconds, **base
                    )
                )
        # learn only from what looks normal: an attack the models are not yet sure of must
        # not become history that teaches the forest it is ordinary
        doubtful = np.nan_to_num(scores.baseline, nan=0.0) >= s.learn_below
        return Judgement(verdicts, matrix, evidence & ~warranted & ~ruled & ~doubtful)

    def _scores(
        self,
        features: pl.DataFrame,
        matrix: Matrix,
        evidence: Mask,
        baseline: RobustBaseline | None,
        isolation: IsolationScorer | None,
    ) -> _Scores:
        s = self.settings
        n = matrix.shape[0]
        b = np.full(n, np.nan)
        i = np.full(n, np.nan)
        contributions = None
        if baseline is not None:
            k = _PACE
            usual = baseline.median_[k] + s.guard_rate_z * MAD_TO_SIGMA * baseline.mad_[k]
        else:
            median = features["tenant_median_rate_per_identity"].to_numpy()
            usual = s.guard_rate_factor * np.maximum(median, 1.0)
        deny = features["deny_ratio"].to_numpy()
        guarded = (deny <= s.guard_deny_ratio) & (matrix[:, _PACE] <= usual)
        identities = np.maximum(
            features["distinct_keys"].to_numpy(), features["distinct_user_ids"].to_numpy()
        )
        pressed = deny >= s.held_min_deny_ratio
        steady = features["distinct_user_agents"].to_numpy() <= s.held_agents
        known = features["known_before"].to_numpy() > 0
        moderate = known | (deny <= s.held_deny_ratio)
        held = (identities <= s.held_identities) & moderate & pressed & steady
        # the forest may decide alone only on a subject unusual in more than volume
        behaves_oddly = np.zeros(n, dtype=bool)
        if baseline is not None:
            masked = matrix.copy()
            masked[np.ix_(guarded, GUARDED_COLUMNS)] = baseline.median_[GUARDED_COLUMNS]
            masked[np.ix_(held, HELD_COLUMNS)] = baseline.median_[HELD_COLUMNS]
            contributions = baseline.contributions(masked)
            b = np.where(evidence, baseline.score_contributions(contributions), np.nan)
            behaves_oddly = contributions[:, BEHAVIOUR_COLUMNS].max(axis=1) >= s.behaviour_z
        if isolation is not None:
            # the forest is the costly layer: score only rows where it can change the outcome
            candidates = evidence & (behaves_oddly | (np.nan_to_num(b) >= s.threshold**2))
            if candidates.any():
                i[candidates] = isolation.score(isolation_matrix(matrix[candidates]))
        options = np.stack(
            [
                np.sqrt(b * i),
                b - s.baseline_margin,
                np.where(behaves_oddly & ~guarded & ~held, i - s.isolation_margin, np.nan),
            ]
        )
        names = np.array(["baseline+isolation_forest", "baseline", "isolation_forest"])
        filled = np.nan_to_num(options, nan=-np.inf)
        best = filled.argmax(axis=0)
        score = np.clip(filled.max(axis=0), 0.0, 1.0)
        score = np.where(evidence, score, 0.0)
        layer = np.where(np.isfinite(filled.max(axis=0)), names[best], "none")
        checks = features["checks"].to_numpy()
        return _Scores(score, layer, b, i, contributions, checks)

    def _model_verdict(
        self,
        row: int,
        matrix: Matrix,
        scores: _Scores,
        baseline: RobustBaseline | None,
        isolation: IsolationScorer | None,
        window_seconds: int,
        **base: object,
    ) -> Verdict:
        layer = str(scores.layer[row])
        b, i = float(scores.baseline[row]), float(scores.isolation[row])
        versions = [POLICY_VERSION]
        if baseline is not None and "baseline" in layer:
            versions.append(baseline.version_)
        if isolation is not None and "isolation" in layer:
            versions.append(isolation.version_)
        score = float(scores.score[row])
        reasons = [_headline(layer, score, b, i, self.settings, int(scores.checks[row]))]
        signals: tuple[Signal, ...] = ()
        if baseline is not None and scores.contributions is not None:
            signals, sentences = _signals(
                matrix[row], scores.contributions[row], baseline, self.settings.top_signals
            )
            reasons.extend(sentences)
        return Verdict(
            score=score,
            detector=layer,
            detector_version="/".join(versions),
            window_seconds=window_seconds,
            reasons=tuple(reasons),
            signals=signals,
            **base,  # type: ignore[arg-type]
        )


def _rule_verdict(hit: RuleHit, window_seconds: int, **base: object) -> Verdict:
    return Verdict(
        score=hit.score,
        detector="rules",
        detector_version=f"{POLICY_VERSION}/{RULES_VERSION}:{hit.rule}",
        window_seconds=window_seconds,
        reasons=(hit.reason,),
        signals=hit.signals,
        **base,  # type: ignore[arg-type]
    )


def _headline(layer: str, score: float, b: float, i: float, s: PolicySettings, checks: int) -> str:
    if layer == "baseline+isolation_forest":
        how = f"baseline score {b:.2f} and isolation-forest score {i:.2f} agree"
    elif layer == "baseline":
        how = f"baseline score {b:.2f} on its own (less the {s.baseline_margin:.2f} margin)"
    elif layer == "isolation_forest":
        how = (
            f"isolation-forest score {i:.2f} on its own (less the {s.isolation_margin:.2f} margin)"
        )
    elif checks < s.min_checks:
        how = f"{checks} checks in the window, fewer than the {s.min_checks} a model needs"
    else:
        how = "no model has enough history for this tenant yet (cold start)"
    return f"score {score:.2f} against threshold {s.threshold:.2f}: {how}"


def _signals(
    values: Matrix, contributions: Matrix, baseline: RobustBaseline, top: int
) -> tuple[tuple[Signal, ...], list[str]]:
    # the strongest feature of each family first: "fast, regular and on unknown routes"
    # explains more than three ways of saying "fast"
    ranked = [j for j in np.argsort(-contributions, kind="stable") if contributions[j] > 0]
    leaders: list[int] = []
    families: set[str] = set()
    for j in ranked:
        if MODEL_SPECS[j].family not in families:
            families.add(MODEL_SPECS[j].family)
            leaders.append(j)
    order = (leaders + [j for j in ranked if j not in leaders])[:top]
    total = float(sum(contributions[j] for j in order)) or 1.0
    signals, sentences = [], []
    for j in order:
        spec = MODEL_SPECS[j]
        value, centre, z = float(values[j]), float(baseline.median_[j]), float(contributions[j])
        signals.append(Signal(spec.name, value, centre, z / total))
        side = "above" if spec.direction >= 0 else "below"
        sentences.append(
            f"{describe(spec.name, value)} against a baseline of {describe(spec.name, centre)} "
            f"({z:.1f} robust deviations {side}; scale {MAD_TO_SIGMA * baseline.mad_[j]:.3g})"
        )
    return tuple(signals), sentences
