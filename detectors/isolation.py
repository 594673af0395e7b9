"""The isolation-forest layer: how easily a subject is set apart from the tenant's history.

An isolation forest cuts the feature space at random; rows that take few cuts to isolate
are unlike the history it was trained on.  It needs no labels and no assumption about
which feature will move, which is what the baseline's per-feature view misses (an odd
*combination* of individually plausible values).

Score mapping (``IsolationDetector.score``): scikit-learn's ``score_samples`` is minus the
paper's anomaly score ``s = 2^(-E[h(x)] / c(n))`` (about 0.5 for ordinary rows, toward 1
for isolated ones).  ``contamination`` (default 1%) places ``threshold_`` at the ``s`` that
the top 1% of the training history exceeds, and the score is
``1 / (1 + exp(-(s - threshold_) / score_scale))``: 0.5 for a row as unusual as the
history's most unusual 1%, above 0.95 once ``s`` is three ``score_scale`` (0.12) beyond.

This module is the fitting side and the only one that imports scikit-learn: the detection
process asks a fitting process for its models (``detectors/fit_process.py``) and scores
with what a fit returns, an ``IsolationModel`` of numpy arrays
(``detectors/isolation_model.py``).  ``LocalFitter`` fits in the calling process, for
tools and tests.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import check_is_fitted, validate_data

from detectors.compiled_forest import CompiledForest
from detectors.isolation_model import IsolationModel, anomaly_probability

COMPILED_MAX_ROWS = 1_000


class IsolationDetector(BaseEstimator):  # type: ignore[misc]
    """``IsolationForest`` with a [0, 1] score and a version; ``model_`` is what scoring
    needs, without scikit-learn.

    Parameters
    ----------
    n_estimators : int, default=100
        Trees in the forest.
    max_samples : int, default=256
        Rows drawn per tree (the paper's recommendation; fewer rows isolate outliers
        faster).  Lowered to the history's size when it is smaller.
    contamination : float, default=0.01
        The share of the training history assumed unusual: it sets ``threshold_``, the
        point the score maps to 0.5.  The history is what the tenant did (minus what was
        blocked), so 1% says "the most unusual 1% of normal traffic is as suspicious as a
        coin toss", not that 1% of it is abuse.
    score_scale : float, default=0.04
        Width of the logistic mapping from the anomaly score to [0, 1].
    random_state : int, default=0
        Seed of the forest, so the same history gives the same model and version.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
        contamination: float = 0.01,
        score_scale: float = 0.04,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.contamination = contamination
        self.score_scale = score_scale
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None, *, trained_at_ms: int | None = None) -> IsolationDetector:
        """Train on ``X`` (rows of the tenant's recent history).  ``trained_at_ms``
        (default: now) goes into ``version_``."""
        if not 0.0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination!r}")
        if self.score_scale <= 0:
            raise ValueError(f"score_scale must be positive, got {self.score_scale!r}")
        matrix = validate_data(self, X, reset=True, dtype=np.float64, ensure_min_samples=2)
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, matrix.shape[0]),
            contamination=self.contamination,
            random_state=self.random_state,
        )
        self.forest_ = forest.fit(matrix)
        self.threshold_ = float(-self.forest_.offset_)
        self.n_samples_fit_ = matrix.shape[0]
        now_ms = time.time_ns() // 1_000_000
        self.trained_at_ms_ = now_ms if trained_at_ms is None else trained_at_ms
        digest = hashlib.sha256(matrix.tobytes())
        digest.update(repr(sorted(self.get_params().items())).encode())
        self.version_ = f"iforest-{digest.hexdigest()[:12]}-{self.trained_at_ms_}"
        self.model_ = IsolationModel(
            CompiledForest.of(self.forest_),
            self.threshold_,
            float(self.score_scale),
            self.version_,
            self.trained_at_ms_,
            self.n_samples_fit_,
            self.n_features_in_,
        )
        return self

    def score(self, X: Any, y: Any = None) -> npt.NDArray[np.float64]:
        """Per-row anomaly score in [0, 1], higher is more anomalous."""
        check_is_fitted(self)
        matrix = validate_data(self, X, reset=False, dtype=np.float64)
        if matrix.shape[0] <= COMPILED_MAX_ROWS:  # where numpy beats per-tree calls
            return self.model_.score(matrix)
        anomaly = -self.forest_.score_samples(matrix)
        return anomaly_probability(anomaly, self.threshold_, self.score_scale)


class LocalFitter:
    """Fits in this process: for tools and tests (the detection process uses
    ``detectors.fit_process.ProcessFitter``, which keeps scikit-learn out of it)."""

    def __init__(self, template: IsolationDetector | None = None) -> None:
        self.template = template if template is not None else IsolationDetector()

    def fit(self, rows: npt.NDArray[np.float64], trained_at_ms: int) -> IsolationModel:
        detector: IsolationDetector = clone(self.template)
        return detector.fit(rows, trained_at_ms=trained_at_ms).model_

    @property
    def gathers(self) -> bool:
        """No: a fit here costs the same whenever it runs."""
        return False

    def close(self) -> None:
        """Nothing to release."""
