"""The robust baseline layer: how far a subject sits from what is normal for its class.

One ``RobustBaseline`` is kept per tenant and subject class (scope).  It learns each
feature's median and median absolute deviation (MAD) from normal history, which a minority
of attackers in that history cannot drag the way they would drag a mean and a standard
deviation, then follows drift with an exponentially weighted moving average (EWMA) of the
centre and scale of each new batch.

Score mapping (``score``): each feature's robust z-score ``(x - median) / (1.4826 * MAD)``
is kept in its suspicious direction only (``directions``) and capped at ``z_cap``; the
features' z-scores are reduced to one per family (``groups``, the largest), and the
``agreement`` largest family values are averaged into ``z``.  The score is
``1 / (1 + exp(-(z - z_threshold) / z_scale))``, 0.5 at ``z_threshold``.  The default
4.5 is what one family at the cap (z = 8) and a second one at an ordinary z = 1 average
to: a subject extreme in one respect only is a coin toss, not a block, however extreme,
while two families beyond the usual 3.5 outlier cut (for example 8 and 5) score 0.88 and
two at the cap 0.97.

It follows scikit-learn's estimator conventions (constructor parameters only, learned
attributes ending in ``_``, ``get_params``) without importing scikit-learn: it runs in the
long-lived detection process, which scores and learns with numpy alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]
MAD_TO_SIGMA = 1.4826  # MAD × this estimates the standard deviation of a normal variable


PARAMETERS = (
    "min_mad",
    "alpha",
    "directions",
    "groups",
    "z_threshold",
    "z_scale",
    "z_cap",
    "agreement",
)


class NotFittedError(ValueError, AttributeError):
    """Scored or updated before ``fit`` (as scikit-learn's error of that name)."""


class RobustBaseline:
    """Median/MAD baseline with EWMA updates, robust z-scores and a [0, 1] anomaly score.

    Parameters
    ----------
    min_mad : float or sequence of float, default=1.0
        Floor for each feature's MAD, in the feature's unit, so that a column that was
        constant in the history (every user had a deny ratio of 0) does not turn the first
        small deviation into an infinite z-score.
    alpha : float, default=0.05
        EWMA weight of a new batch in ``partial_fit``: the centre and scale move this
        fraction of the way toward the batch's median and MAD.
    directions : sequence of {-1, 0, 1}, optional
        Per feature, which deviations count as anomalous: +1 high values, -1 low values,
        0 both.  Default: +1 for every feature.
    groups : sequence of int, optional
        Family of each feature for ``score``.  Default: every feature its own family.
    z_threshold, z_scale : float
        The score mapping described in the module docstring.
    z_cap : float or sequence of float, default=8.0
        Largest z-score a feature can contribute (one per feature, or one for all): beyond
        it a deviation is certain and more of it proves nothing new.
    agreement : int, default=2
        How many of the most deviant families are averaged.
    """

    def __init__(
        self,
        *,
        min_mad: float | Sequence[float] = 1.0,
        alpha: float = 0.05,
        directions: Sequence[int] | None = None,
        groups: Sequence[int] | None = None,
        z_threshold: float = 4.5,
        z_scale: float = 1.0,
        z_cap: float | Sequence[float] = 8.0,
        agreement: int = 2,
    ) -> None:
        self.min_mad = min_mad
        self.alpha = alpha
        self.directions = directions
        self.groups = groups
        self.z_threshold = z_threshold
        self.z_scale = z_scale
        self.z_cap = z_cap
        self.agreement = agreement

    def fit(self, X: Any, y: Any = None) -> RobustBaseline:
        """Learn ``median_`` and ``mad_`` from ``X`` (rows of normal history)."""
        self._check_params()
        matrix = self._rows(X, reset=True)
        self.floor_ = self._per_feature(self.min_mad, "min_mad", matrix.shape[1])
        self.cap_ = self._per_feature(self.z_cap, "z_cap", matrix.shape[1])
        self.directions_ = self._per_feature(
            1.0 if self.directions is None else self.directions, "directions", matrix.shape[1]
        )
        if not np.isin(self.directions_, (-1.0, 0.0, 1.0)).all():
            raise ValueError(f"directions must be -1, 0 or 1, got {self.directions!r}")
        groups = range(matrix.shape[1]) if self.groups is None else self.groups
        self.groups_ = self._per_feature(groups, "groups", matrix.shape[1]).astype(np.int64)
        median, mad = _median_mad(matrix)
        self.median_ = median
        self.mad_ = np.maximum(mad, self.floor_)
        self.n_samples_seen_ = matrix.shape[0]
        self.n_updates_ = 0
        return self

    def partial_fit(self, X: Any, y: Any = None) -> RobustBaseline:
        """Move the centre and scale toward ``X``'s median and MAD by ``alpha`` (EWMA);
        the first call fits."""
        if not hasattr(self, "median_"):
            return self.fit(X, y)
        matrix = self._rows(X, reset=False)
        median, mad = _median_mad(matrix)
        self.median_ = (1.0 - self.alpha) * self.median_ + self.alpha * median
        self.mad_ = np.maximum((1.0 - self.alpha) * self.mad_ + self.alpha * mad, self.floor_)
        self.n_samples_seen_ += matrix.shape[0]
        self.n_updates_ += 1
        return self

    def transform(self, X: Any) -> Matrix:
        """Signed robust z-scores, ``(X - median_) / (1.4826 * mad_)``."""
        self._check_fitted()
        matrix = self._rows(X, reset=False)
        result: Matrix = (matrix - self.median_) / (MAD_TO_SIGMA * self.mad_)
        return result

    def contributions(self, X: Any) -> Matrix:
        """z-scores in each feature's suspicious direction only, in ``[0, cap_]``."""
        z = self.transform(X)
        directed = np.where(self.directions_ == 0, np.abs(z), z * np.sign(self.directions_))
        return np.clip(directed, 0.0, self.cap_)

    def score(self, X: Any, y: Any = None) -> npt.NDArray[np.float64]:
        """Per-row anomaly score in [0, 1] (see the module docstring for the mapping)."""
        return self.score_contributions(self.contributions(X))

    def score_contributions(self, contributions: Matrix) -> npt.NDArray[np.float64]:
        """``score`` from ``contributions(X)`` already at hand."""
        self._check_fitted()
        per_family = np.stack(
            [contributions[:, self.groups_ == family].max(axis=1) for family in self._families],
            axis=1,
        )
        top = min(self.agreement, per_family.shape[1])
        strongest = -np.sort(-per_family, axis=1)[:, :top]
        z = strongest.mean(axis=1)
        result: npt.NDArray[np.float64] = 1.0 / (
            1.0 + np.exp(-(z - self.z_threshold) / self.z_scale)
        )
        return result

    @property
    def _families(self) -> npt.NDArray[np.int64]:
        families: npt.NDArray[np.int64] = np.unique(self.groups_)
        return families

    @property
    def version_(self) -> str:
        """A short content hash of the current centre and scale."""
        self._check_fitted()
        digest = hashlib.sha256(self.median_.tobytes() + self.mad_.tobytes()).hexdigest()
        return f"baseline-{digest[:12]}"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters (``deep`` is for scikit-learn's ``clone``: there
        are no nested estimators)."""
        return {name: getattr(self, name) for name in PARAMETERS}

    def unfitted(self) -> RobustBaseline:
        """A new baseline with the same parameters and nothing learned."""
        return RobustBaseline(**self.get_params())

    def _check_fitted(self) -> None:
        if not hasattr(self, "median_"):
            raise NotFittedError("this RobustBaseline is not fitted yet: call fit first")

    def _rows(self, X: Any, *, reset: bool) -> Matrix:
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2:
            raise ValueError(f"expected a 2-D array of rows, got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError("the rows contain NaN or infinity")
        if reset:
            self.n_features_in_ = matrix.shape[1]
        else:
            self._check_fitted()
            if matrix.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {matrix.shape[1]} features, but RobustBaseline is expecting "
                    f"{self.n_features_in_} features as input"
                )
        return matrix

    def _check_params(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        if self.z_scale <= 0:
            raise ValueError(f"z_scale must be positive, got {self.z_scale!r}")
        if self.agreement < 1:
            raise ValueError(f"agreement must be at least 1, got {self.agreement!r}")

    @staticmethod
    def _per_feature(value: float | Sequence[float] | range, name: str, width: int) -> Matrix:
        array = np.asarray(value, dtype=np.float64)
        if array.ndim == 0:
            array = np.full(width, float(array))
        if array.shape != (width,):
            raise ValueError(
                f"{name} needs one value per feature ({width}), got {array.tolist()!r}"
            )
        if name in ("min_mad", "z_cap") and not (array > 0).all():
            raise ValueError(f"{name} must be positive, got {array.tolist()!r}")
        return array


def _median_mad(matrix: Matrix) -> tuple[Matrix, Matrix]:
    if matrix.shape[0] == 0:
        raise ValueError("need at least one row of history")
    median = np.median(matrix, axis=0)
    mad = np.median(np.abs(matrix - median), axis=0)
    return median, mad
