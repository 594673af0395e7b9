"""Prometheus metrics of abuse detection (``ratewatch detect``, or the embedded detection of
the pipeline worker), on the registry they are given.

``ratewatch_detect_verdicts_total{scope, action}`` counts the warranted verdicts by what the
actions made of them (``detectors.actions``), named as the alerts name them: ``created``
and ``escalated`` (an enforced block, first or repeat offence), ``shadowed``,
``skipped_cap``, ``allowlisted``, and ``already_blocked``, ``lifted_by_hand``,
``detection_off``, ``not_warranted`` (the tenant asks for more evidence).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from detectors.verdict import SCOPES

# the actions an operator watches, shown at 0 from the start so that the first one counts
# in a rate(); the others appear once they happen
ACTIONS = ("created", "escalated", "shadowed", "skipped_cap", "allowlisted")
# outcomes of detectors.actions.BlockActions that the alerts name otherwise
_ACTION_OF = {"cap_reached": "skipped_cap"}
# one evaluation: a few milliseconds when quiet, seconds with many tenants' forests to train
EVALUATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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
            "Time the detector took to judge one round (features, models, retraining), "
            "without the actions",
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
        for scope in SCOPES:
            self.retrains.labels(scope)
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

    def retrained(self, scope: str) -> None:
        self.retrains.labels(scope).inc()
