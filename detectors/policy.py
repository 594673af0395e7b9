"""How the three layers' scores become one verdict per subject.

For each (tenant, scope), every subject active in the last minute is judged once:

1. **Rules decide alone.**  A subject a rule fires for (``detectors.rules``) gets that
   rule's score (0.95-0.99) and the rule's sentence.
2. **Evidence first.**  The models judge only subjects with at least ``min_checks``
   decisions in the short window; fewer is not enough to tell a typo from an attack.
3. **The guard.**  A subject whose deny ratio is at most ``guard_deny_ratio`` (25%) *and*
   whose checks per minute per key are usual (at most ``guard_rate_z`` = 3 robust
   deviations above the baseline; ``guard_rate_factor`` = 3 times the tenant's median
   before there is a baseline) is *volume-benign*: its ``volume`` features are set to the
   baseline before scoring.  A NAT address
   (hundreds of checks, many keys, each key at a normal pace, nothing denied) and a
   launch-day crowd of new users are volume-benign; they can only be blocked for being
   denied, machine-regular or spread over many IPs.
4. **Agreement or one strong layer.**  With ``b`` the baseline score and ``i`` the
   isolation score (both in [0, 1]), the score is the largest of
   ``sqrt(b * i)`` (the two agree), ``b - single_margin`` and ``i - single_margin`` (one
   layer is sure enough on its own).  With the default threshold 0.8 and margin 0.15, a
   single layer has to reach 0.95; together, for example 0.9 and 0.72.
5. **Cold start.**  No baseline until the tenant has ``min_baseline_rows`` rows of
   history for the scope, no isolation score until it has the registry's ``min_history``
   (``detectors.registry``); a missing layer drops out of step 4, so during cold start
   only rules and a very sure single layer can block.

A verdict's ``detector`` names the layer that set its score (``rules``, ``baseline``,
``isolation_forest`` or ``baseline+isolation_forest``) and its ``detector_version`` the
versions involved; its signals are the features that deviated most from the baseline, with
their values and the baseline's medians.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from detectors.baseline import MAD_TO_SIGMA, RobustBaseline
from detectors.features import as_scope
from detectors.isolation import IsolationDetector
from detectors.model_features import (
    BEHAVIOUR_COLUMNS,
    GUARDED_COLUMNS,
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
_RATE_PER_KEY = MODEL_FEATURES.index("rate_per_key")


@dataclass(frozen=True, slots=True)
class PolicySettings:
    threshold: float = 0.8
    single_margin: float = 0.15
    min_checks: int = 5
    guard_deny_ratio: float = 0.25
    guard_rate_z: float = 3.0
    guard_rate_factor: float = 3.0
    behaviour_z: float = 3.0
    top_signals: int = 4
    rules: RuleThresholds = field(default_factory=RuleThresholds)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold!r}")
        if not 0.0 <= self.single_margin < self.threshold:
            raise ValueError(f"single_margin must be in [0, threshold), got {self.single_margin!r}")


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdicts of one (tenant, scope), and what the learners may take from it."""

    verdicts: list[Verdict]
    matrix: Matrix  # model_matrix of every row
    normal: Mask  # rows with enough evidence that neither a rule nor a model flagged


@dataclass(frozen=True, slots=True)
class _Scores:
    score: Matrix
    layer: npt.NDArray[np.str_]
    baseline: Matrix  # NaN where the layer did not score
    isolation: Matrix
    contributions: Matrix | None


class DetectionPolicy:
    """Combines rules, the robust baseline and the isolation forest into verdicts."""

    def __init__(self, settings: PolicySettings | None = None) -> None:
        self.settings = settings if settings is not None else PolicySettings()

    def judge(
        self,
        features: pl.DataFrame,
        baseline: RobustBaseline | None,
        isolation: IsolationDetector | None,
        now_ms: int,
        *,
        include_all: bool = False,
        window_seconds: int = 60,
    ) -> Judgement:
        """Verdicts for the rows of ``features`` (one tenant and scope, ``subject_features``
        columns): the warranted ones, or with ``include_all`` one per row."""
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
                verdicts.append(_rule_verdict(hit, window_seconds, **base))
            else:
                verdicts.append(
                    self._model_verdict(
                        row, matrix, scores, baseline, isolation, window_seconds, **base
                    )
                )
        return Judgement(verdicts, matrix, evidence & ~warranted & ~ruled)

    def _scores(
        self,
        features: pl.DataFrame,
        matrix: Matrix,
        evidence: Mask,
        baseline: RobustBaseline | None,
        isolation: IsolationDetector | None,
    ) -> _Scores:
        s = self.settings
        n = matrix.shape[0]
        b = np.full(n, np.nan)
        i = np.full(n, np.nan)
        contributions = None
        if baseline is not None:
            k = _RATE_PER_KEY
            usual = baseline.median_[k] + s.guard_rate_z * MAD_TO_SIGMA * baseline.mad_[k]
        else:
            median = features["tenant_median_rate_per_key"].to_numpy()
            usual = s.guard_rate_factor * np.maximum(median, 1.0)
        guarded = (features["deny_ratio"].to_numpy() <= s.guard_deny_ratio) & (
            matrix[:, _RATE_PER_KEY] <= usual
        )
        # the forest may decide alone only on a subject unusual in more than volume
        behaves_oddly = np.zeros(n, dtype=bool)
        if baseline is not None:
            masked = matrix.copy()
            masked[np.ix_(guarded, GUARDED_COLUMNS)] = baseline.median_[GUARDED_COLUMNS]
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
                b - s.single_margin,
                np.where(behaves_oddly, i - s.single_margin, np.nan),
            ]
        )
        names = np.array(["baseline+isolation_forest", "baseline", "isolation_forest"])
        filled = np.nan_to_num(options, nan=-np.inf)
        best = filled.argmax(axis=0)
        score = np.clip(filled.max(axis=0), 0.0, 1.0)
        score = np.where(evidence, score, 0.0)
        layer = np.where(np.isfinite(filled.max(axis=0)), names[best], "none")
        return _Scores(score, layer, b, i, contributions)

    def _model_verdict(
        self,
        row: int,
        matrix: Matrix,
        scores: _Scores,
        baseline: RobustBaseline | None,
        isolation: IsolationDetector | None,
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
        reasons = [_headline(layer, score, b, i, self.settings)]
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
        window_seconds=600 if hit.rule == "key_spread" else window_seconds,
        reasons=(hit.reason,),
        signals=hit.signals,
        **base,  # type: ignore[arg-type]
    )


def _headline(layer: str, score: float, b: float, i: float, s: PolicySettings) -> str:
    if layer == "baseline+isolation_forest":
        how = f"baseline score {b:.2f} and isolation-forest score {i:.2f} agree"
    elif layer == "baseline":
        how = f"baseline score {b:.2f} on its own (less the {s.single_margin:.2f} margin)"
    elif layer == "isolation_forest":
        how = f"isolation-forest score {i:.2f} on its own (less the {s.single_margin:.2f} margin)"
    else:
        how = "no model has enough history or evidence yet"
    return f"score {score:.2f} against threshold {s.threshold:.2f}: {how}"


def _signals(
    values: Matrix, contributions: Matrix, baseline: RobustBaseline, top: int
) -> tuple[tuple[Signal, ...], list[str]]:
    order = [j for j in np.argsort(-contributions, kind="stable")[:top] if contributions[j] > 0]
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
