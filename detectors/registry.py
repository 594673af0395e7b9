"""One isolation model per (tenant, scope), its bounded history, and when to retrain it.

History rows are the feature rows of subjects the policy did not flag, sampled at each
evaluation.  A model is (re)trained when:

- there is none yet and the history holds ``min_history`` rows (before that the tenant is
  in cold start and the policy works without an isolation score);
- it is older than ``retrain_every_ms`` (default ten minutes), so it follows the tenant's
  day; or
- the history has grown by as many rows as the model was trained on (it doubled) while it
  was still filling up, so a young model trained on a thin history is replaced quickly.

Each (tenant, scope) keeps at most ``max_history`` rows, the newest.  With a ``directory``,
every trained model is saved there (joblib, with its version) and a registry started on
the same directory picks them up, so a restart does not re-enter cold start.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.base import clone

from detectors.isolation import IsolationDetector, ModelFileError
from detectors.metrics import DetectionMetrics
from detectors.verdict import Scope

Matrix = npt.NDArray[np.float64]


@dataclass
class _History:
    chunks: list[Matrix] = field(default_factory=list)
    rows: int = 0
    added_since_fit: int = 0

    def add(self, rows: Matrix, limit: int) -> None:
        self.chunks.append(rows)
        self.rows += rows.shape[0]
        self.added_since_fit += rows.shape[0]
        if self.rows > 2 * limit:  # compact rarely: concatenating on every add is quadratic
            self.chunks = [self.matrix()[-limit:]]
            self.rows = self.chunks[0].shape[0]

    def matrix(self) -> Matrix:
        return np.concatenate(self.chunks) if len(self.chunks) != 1 else self.chunks[0]


class ModelRegistry:
    """Isolation models per (tenant, scope), retrained on schedule from bounded history."""

    def __init__(
        self,
        template: IsolationDetector | None = None,
        *,
        min_history: int = 200,
        max_history: int = 10_000,
        retrain_every_ms: int = 600_000,
        directory: Path | None = None,
        metrics: DetectionMetrics | None = None,
    ) -> None:
        if min_history < 2 or max_history < min_history:
            raise ValueError(
                f"need 2 <= min_history <= max_history, got {min_history}, {max_history}"
            )
        self._template = template if template is not None else IsolationDetector()
        self._min_history = min_history
        self._max_history = max_history
        self._retrain_every_ms = retrain_every_ms
        self._directory = directory
        # None counts nothing and keeps the registry deep-copyable (metrics hold locks)
        self._metrics = metrics
        self._history: dict[tuple[str, Scope], _History] = {}
        self._models: dict[tuple[str, Scope], IsolationDetector] = {}

    def record(self, tenant: str, scope: Scope, rows: Matrix) -> None:
        """Add rows of normal history for (tenant, scope)."""
        if rows.shape[0]:
            history = self._history.setdefault((tenant, scope), _History())
            history.add(rows, self._max_history)

    def history_rows(self, tenant: str, scope: Scope) -> int:
        history = self._history.get((tenant, scope))
        return min(history.rows, self._max_history) if history else 0

    def model(self, tenant: str, scope: Scope) -> IsolationDetector | None:
        """The current model, loading a persisted one on first use."""
        found = self._models.get((tenant, scope))
        if found is None and self._directory is not None:
            path = self._path(tenant, scope)
            if path.exists():
                try:
                    found = self._models[(tenant, scope)] = IsolationDetector.load(path)
                except ModelFileError:
                    found = None  # a stale or foreign file: retrain from history instead
        return found

    def due(self, tenant: str, scope: Scope, now_ms: int) -> bool:
        """Whether (tenant, scope) should be (re)trained now (see the module docstring)."""
        history = self._history.get((tenant, scope))
        if history is None or self.history_rows(tenant, scope) < self._min_history:
            return False
        current = self.model(tenant, scope)
        # growth only matters while the history fills up; once full, the schedule rules
        still_filling = current is not None and current.n_samples_fit_ < self._max_history
        return (
            current is None
            or now_ms - current.trained_at_ms_ >= self._retrain_every_ms
            or (still_filling and history.added_since_fit >= current.n_samples_fit_)
        )

    def refresh(self, tenant: str, scope: Scope, now_ms: int) -> IsolationDetector | None:
        """Retrain (tenant, scope) if due, then return its model (None in cold start)."""
        if not self.due(tenant, scope, now_ms):
            return self.model(tenant, scope)
        history = self._history[(tenant, scope)]
        rows = history.matrix()[-self._max_history :]
        model: IsolationDetector = clone(self._template).fit(rows, trained_at_ms=now_ms)
        history.added_since_fit = 0
        self._models[(tenant, scope)] = model
        if self._metrics is not None:
            self._metrics.retrained(scope)
        if self._directory is not None:
            self._directory.mkdir(parents=True, exist_ok=True)
            model.save(self._path(tenant, scope))
        return model

    def forget(self, tenant: str) -> None:
        """Drop a tenant's history and models from memory (its files stay)."""
        for key in [key for key in self._history if key[0] == tenant]:
            del self._history[key]
        for key in [key for key in self._models if key[0] == tenant]:
            del self._models[key]

    def _path(self, tenant: str, scope: Scope) -> Path:
        assert self._directory is not None
        # tenant names are not file names: hash them
        name = hashlib.sha256(tenant.encode()).hexdigest()[:24]
        return self._directory / f"{name}-{scope}.joblib"
