"""Prometheus metrics of abuse detection (``ratewatch detect``, or the embedded detection of
the pipeline worker), on the registry they are given.

``ratewatch_detect_verdicts_total{scope, action}`` counts the warranted verdicts by what the
actions made of them (``detectors.actions``), named as the alerts name them: ``created``
and ``escalated`` (an enforced block, first or repeat offence), ``shadowed``,
``skipped_cap``, ``allowlisted``, and ``already_blocked``, ``lifted_by_hand``,
``detection_off``, ``not_warranted`` (the tenant asks for more evidence).

What detection costs: ``ratewatch_detect_evaluation_duration_seconds`` times one round on
the evaluation's thread (building the round's decision frame, updating the windows, the
features, judging, learning the baselines); the isolation models are fitted apart, one at
a time on a thread of their own (``detectors/training.py``), and timed by
``ratewatch_detect_model_fit_duration_seconds``.  The two ``_sum`` series, as rates, say
what share of detection's time goes to fitting.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from detectors.verdict import SCOPES

# the actions an operator watches, shown at 0 from the start so that the first one counts
# in a rate(); the others appear once they happen
ACTIONS = ("created", "escalated", "shadowed", "skipped_cap", "allowlisted")
# outcomes of detectors.actions.BlockActions that the alerts name otherwise
_ACTION_OF = {"cap_reached": "skipped_cap"}
# one evaluation: a few milliseconds when quiet, a second or more at tens of thousands of
# decisions a second; one fit: a tenth of a second to a few seconds
EVALUATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# decisions handed in per round: at 5 s a round, 0 to 50,000 a second
DECISION_BUCKETS = (0, 10, 100, 1_000, 10_000, 50_000, 100_000, 250_000)


class DetectionMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "ratewatch_detect_decisions",
            "Decision events handed to the detector",
            registry=self.registry,
        )
        self.evaluations = Counter(
            "ratewatch_detect_evaluations",
            "Evaluation rounds run (every --interval seconds)",
            registry=self.registry,
        )
        self.evaluation_failures = Counter(
            "ratewatch_detect_evaluation_failures",
            "Evaluation rounds that failed (logged; the next round runs as usual)",
            registry=self.registry,
        )
        self.evaluation_seconds = Histogram(
            "ratewatch_detect_evaluation_duration_seconds",
            "Time the detector took to judge one round on the evaluation thread (the round's "
            "decisions into the windows, features, scores, baseline updates), without the "
            "actions; model fits run apart (ratewatch_detect_model_fit_duration_seconds)",
            buckets=EVALUATION_BUCKETS,
            registry=self.registry,
        )
        self.verdicts = Counter(
            "ratewatch_detect_verdicts",
            "Warranted verdicts by scope and by what was done about them",
            ["scope", "action"],
            registry=self.registry,
        )
        self.retrains = Counter(
            "ratewatch_detect_model_retrains",
            "Isolation models trained (first fit or scheduled retrain), by scope",
            ["scope"],
            registry=self.registry,
        )
        self.evaluation_decisions = Histogram(
            "ratewatch_detect_evaluation_decisions",
            "Decision events each round handed to the detector",
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )
        self.subjects = Gauge(
            "ratewatch_detect_subjects_tracked",
            "Subjects (addresses, keys, user ids) with decisions in the detector's long window "
            "after the last round, by scope",
            ["scope"],
            registry=self.registry,
        )
        self.fit_seconds = Histogram(
            "ratewatch_detect_model_fit_duration_seconds",
            "Time one isolation model took to fit, on the fitting thread (off the evaluation), "
            "by scope",
            ["scope"],
            buckets=FIT_BUCKETS,
            registry=self.registry,
        )
        self.fit_failures = Counter(
            "ratewatch_detect_model_fit_failures",
            "Isolation model fits that failed (logged; the model is retried later), by scope",
            ["scope"],
            registry=self.registry,
        )
        self.save_failures = Counter(
            "ratewatch_detect_model_save_failures",
            "Fitted isolation models that could not be saved to the model directory (the model "
            "is used all the same), by scope",
            ["scope"],
            registry=self.registry,
        )
        self.fits_in_flight = Gauge(
            "ratewatch_detect_model_fits_in_flight",
            "Isolation model fits running now (one at a time)",
            registry=self.registry,
        )
        self.fits_queued = Gauge(
            "ratewatch_detect_model_fits_queued",
            "Isolation model fits due and waiting for the fitting thread",
            registry=self.registry,
        )
        for scope in SCOPES:
            self.retrains.labels(scope)
            self.fit_seconds.labels(scope)
            self.fit_failures.labels(scope)
            self.save_failures.labels(scope)
            self.subjects.labels(scope)
            for action in ACTIONS:
                self.verdicts.labels(scope, action)

    def verdict(self, scope: str, outcome: str, offence: int | None = None) -> None:
        """Count a warranted verdict on ``scope`` that the actions answered with
        ``outcome`` (``offence``: the subject's offence number, for a block)."""
        if outcome == "blocked":
            action = "escalated" if offence is not None and offence > 1 else "created"
        else:
            action = _ACTION_OF.get(outcome, outcome)
        self.verdicts.labels(scope, action).inc()

    def retrained(self, scope: str, seconds: float) -> None:
        """An isolation model of ``scope`` fitted in ``seconds``."""
        self.retrains.labels(scope).inc()
        self.fit_seconds.labels(scope).observe(seconds)

    def fit_failed(self, scope: str) -> None:
        self.fit_failures.labels(scope).inc()

    def save_failed(self, scope: str) -> None:
        self.save_failures.labels(scope).inc()

    def evaluated(self, decisions: int, subjects: dict[str, int]) -> None:
        """A round that took in ``decisions`` and left ``subjects`` (per scope) tracked."""
        self.evaluation_decisions.observe(decisions)
        for scope, count in subjects.items():
            self.subjects.labels(scope).set(count)
