"""One isolation model per (tenant, scope), its bounded history, and when to retrain it.

History rows are the feature rows of subjects the policy did not flag, sampled at each
evaluation.  A model is (re)trained when:

- there is none yet and the history holds ``min_history`` rows (before that the tenant is
  in cold start and the policy works without an isolation score);
- it is older than ``retrain_every_ms`` (default ten minutes), so it follows the tenant's
  day, or older than half that while another model's fit is queued or running and the
  fitter gathers fits (``Fitter.gathers``: a burst of fits starts one fitting process),
  so that the fits of many models fall into a few bursts instead of each starting a
  process; or
- the history has grown by as many rows as the model was trained on (it doubled) while it
  was still filling up, so a young model trained on a thin history is replaced quickly.

Each (tenant, scope) keeps at most ``max_history`` rows, the newest.  With a ``directory``,
every trained model is saved there (``IsolationModel``'s ``.npz`` file: plain arrays with
its version, loaded without pickle) and a registry started on the same directory picks
them up, so a restart does not re-enter cold start.  Files of the earlier format
(``.joblib``, a pickled scikit-learn estimator) are not read: those tenants retrain once
their history fills again.

What fits is the ``fitter``: by default a process of its own
(``detectors.fit_process.ProcessFitter``), so the detection process holds numpy arrays
and never scikit-learn.

Fits never run on the evaluation's thread: ``start_fit`` hands a due (tenant, scope) to the
``FitQueue`` (one worker thread) with a snapshot of its history, and the evaluation goes on
with the model it has.  When the fit is done the new model replaces the old one in one
assignment (the next ``model`` call returns it), and only then is it saved.  A (tenant,
scope) with a fit queued or running is not due, so two fits of one model never overlap; a
fit that fails is logged and counted, and the (tenant, scope) is due again
``retry_after_ms`` later.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from detectors.fit_process import ProcessFitter
from detectors.fitting import Fitter
from detectors.isolation_model import IsolationModel, ModelFileError
from detectors.metrics import DetectionMetrics
from detectors.training import FitQueue
from detectors.verdict import Scope

log = logging.getLogger("ratewatch.detect")
EARLY_SHARE = 0.5  # of retrain_every_ms: how old a model refitted early may be
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
    """Isolation models per (tenant, scope), retrained on schedule from bounded history,
    in the background (``start_fit``)."""

    def __init__(
        self,
        fitter: Fitter | None = None,
        *,
        min_history: int = 200,
        max_history: int = 10_000,
        retrain_every_ms: int = 600_000,
        retry_after_ms: int = 60_000,
        directory: Path | None = None,
        metrics: DetectionMetrics | None = None,
        fits: FitQueue | None = None,
    ) -> None:
        if min_history < 2 or max_history < min_history:
            raise ValueError(
                f"need 2 <= min_history <= max_history, got {min_history}, {max_history}"
            )
        if retry_after_ms < 0:
            raise ValueError(f"retry_after_ms must not be negative, got {retry_after_ms}")
        self.fitter: Fitter = fitter if fitter is not None else ProcessFitter()
        self._min_history = min_history
        self._max_history = max_history
        self._retrain_every_ms = retrain_every_ms
        self._retry_after_ms = retry_after_ms
        self._directory = directory
        # None counts nothing and keeps the registry deep-copyable (metrics hold locks)
        self._metrics = metrics
        self.fits = fits if fits is not None else FitQueue(metrics)
        self._history: dict[tuple[str, Scope], _History] = {}
        self._models: dict[tuple[str, Scope], IsolationModel] = {}
        self._on_disk_checked: set[tuple[str, Scope]] = set()
        self._fitting: set[tuple[str, Scope]] = set()  # queued or running
        self._failed_at: dict[tuple[str, Scope], int] = {}
        # guards what the fit thread changes: _models, _fitting, _failed_at, added_since_fit
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_fitting"] = set()  # a copy waits for no fit of the original
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def record(self, tenant: str, scope: Scope, rows: Matrix) -> None:
        """Add rows of normal history for (tenant, scope)."""
        if rows.shape[0]:
            with self._lock:
                history = self._history.setdefault((tenant, scope), _History())
                history.add(rows, self._max_history)

    def history_rows(self, tenant: str, scope: Scope) -> int:
        history = self._history.get((tenant, scope))
        return min(history.rows, self._max_history) if history else 0

    def model(self, tenant: str, scope: Scope) -> IsolationModel | None:
        """The current model, loading a persisted one on first use."""
        key = (tenant, scope)
        found = self._models.get(key)
        if found is None and self._directory is not None and key not in self._on_disk_checked:
            # once per (tenant, scope): after that, every model on disk is one we saved,
            # and it was in memory first
            self._on_disk_checked.add(key)
            path = self._path(tenant, scope)
            if path.exists():
                try:
                    loaded = IsolationModel.load(path)
                except ModelFileError:
                    return None  # a stale or foreign file: retrain from history instead
                with self._lock:
                    found = self._models.setdefault(key, loaded)
        return found

    def fitting(self, tenant: str, scope: Scope) -> bool:
        """Whether a fit of (tenant, scope) is queued or running."""
        return (tenant, scope) in self._fitting

    def due(self, tenant: str, scope: Scope, now_ms: int) -> bool:
        """Whether (tenant, scope) should be (re)trained now (see the module docstring):
        never while a fit of it is queued or running, nor within ``retry_after_ms`` of a
        failed one."""
        key = (tenant, scope)
        history = self._history.get(key)
        if history is None or self.history_rows(tenant, scope) < self._min_history:
            return False
        if key in self._fitting:
            return False
        failed = self._failed_at.get(key)
        if failed is not None and now_ms - failed < self._retry_after_ms:
            return False
        current = self.model(tenant, scope)
        if current is None:
            return True
        # growth only matters while the history fills up; once full, the schedule rules
        still_filling = current.n_samples_fit_ < self._max_history
        age = now_ms - current.trained_at_ms_
        return (
            age >= self._retrain_every_ms
            or (self._gathering() and age >= self._retrain_every_ms * EARLY_SHARE)
            or (still_filling and history.added_since_fit >= current.n_samples_fit_)
        )

    def _gathering(self) -> bool:
        """Whether a fit due now would join a burst: another one is queued or running
        and the fitter gathers fits (only the due model's own fit could keep a burst
        going, so bursts end)."""
        return bool(self._fitting) and self.fitter.gathers

    def start_fit(self, tenant: str, scope: Scope, now_ms: int) -> bool:
        """Queue a fit of (tenant, scope) on its history as it is now, if it is due;
        whether one was queued.  Returns at once: the fit runs on the queue's thread."""
        if not self.due(tenant, scope, now_ms):
            return False
        key = (tenant, scope)
        history = self._history[key]
        # the history's arrays are never written in place: the slice is a stable snapshot
        rows = history.matrix()[-self._max_history :]
        with self._lock:
            self._fitting.add(key)
            counted, history.added_since_fit = history.added_since_fit, 0
        try:
            self.fits.submit(lambda: self._fit(key, rows, now_ms, counted))
        except RuntimeError:  # the queue is closed: the detector is stopping
            with self._lock:
                self._fitting.discard(key)
                history.added_since_fit += counted
            return False
        return True

    def refresh(self, tenant: str, scope: Scope, now_ms: int) -> IsolationModel | None:
        """Retrain (tenant, scope) if due and wait for it, then return its model (None in
        cold start).  For tools and tests: evaluations use ``start_fit``."""
        if self.start_fit(tenant, scope, now_ms):
            self.fits.wait()
        return self.model(tenant, scope)

    def forget(self, tenant: str) -> None:
        """Drop a tenant's history and models from memory (its files stay).  A fit of
        the tenant still running is dropped when it ends."""
        with self._lock:
            for key in [key for key in self._history if key[0] == tenant]:
                del self._history[key]
            for key in [key for key in self._models if key[0] == tenant]:
                del self._models[key]
            for key in [key for key in self._failed_at if key[0] == tenant]:
                del self._failed_at[key]
            self._on_disk_checked = {key for key in self._on_disk_checked if key[0] != tenant}

    def close(self) -> None:
        """Stop fitting: drop queued fits, wait for the one in progress, stop the fitter."""
        self.fits.close()
        self.fitter.close()

    def _fit(self, key: tuple[str, Scope], rows: Matrix, now_ms: int, counted: int) -> None:
        """A fit job, on the queue's thread: fit, swap in, then save."""
        tenant, scope = key
        started = time.perf_counter()
        try:
            model = self.fitter.fit(rows, now_ms)
        except Exception:  # a bad fit must not end detection: counted, retried later
            log.exception("fitting the %s model of tenant %s failed", scope, tenant)
            with self._lock:
                self._fitting.discard(key)
                self._failed_at[key] = now_ms
                history = self._history.get(key)
                if history is not None:
                    history.added_since_fit += counted
            if self._metrics is not None:
                self._metrics.fit_failed(scope)
            return
        seconds = time.perf_counter() - started
        with self._lock:
            self._fitting.discard(key)
            self._failed_at.pop(key, None)
            # a tenant forgotten while its fit ran stays forgotten
            current = key in self._history
            if current:
                self._models[key] = model
        if self._metrics is not None:
            self._metrics.retrained(scope, seconds)
        if current and self._directory is not None:
            self._save(self._directory, key, model)

    def _save(self, directory: Path, key: tuple[str, Scope], model: IsolationModel) -> None:
        path = self._path(*key)
        partial = path.with_name(path.name + ".partial")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            model.save(partial)
            partial.replace(path)  # a crash while saving never leaves half a model
        except OSError:
            log.exception("saving the %s model of tenant %s to %s failed", key[1], key[0], path)
            if self._metrics is not None:
                self._metrics.save_failed(key[1])

    def _path(self, tenant: str, scope: Scope) -> Path:
        assert self._directory is not None
        # tenant names are not file names: hash them
        name = hashlib.sha256(tenant.encode()).hexdigest()[:24]
        return self._directory / f"{name}-{scope}.npz"
