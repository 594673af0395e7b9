"""A fitted isolation model as the detection process holds it: numpy arrays, no estimator.

scikit-learn fits the forest (``detectors/isolation.py``, in a process of its own:
``detectors/fit_process.py``); what scoring needs is the trees' node tables
(``CompiledForest``), the threshold the training history set and the score's scale.
``IsolationModel`` holds those and nothing else, scores with numpy, and is saved as an
``.npz`` file of plain arrays, loaded without pickle, so a model file cannot run code.

Its score is ``IsolationDetector.score``'s, the mapping described in
``detectors/isolation.py``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from detectors.compiled_forest import CompiledForest

Floats = npt.NDArray[np.float64]
FILE_FORMAT = 2  # 1 was a pickled scikit-learn estimator (.joblib), no longer read
ARRAYS = ("feature", "threshold", "left", "right", "leaf_depth")
# IsolationDetector's constructor parameters: what a fit may be asked to use
PARAMETERS = ("n_estimators", "max_samples", "contamination", "score_scale", "random_state")


def anomaly_probability(anomaly: Floats, threshold: float, scale: float) -> Floats:
    """The paper's anomaly score mapped to [0, 1]: 0.5 at ``threshold``, logistic of width
    ``scale`` (``detectors/isolation.py`` describes the mapping)."""
    result: Floats = 1.0 / (1.0 + np.exp(-(anomaly - threshold) / scale))
    return result


class ModelFileError(ValueError):
    """A persisted model that cannot be used: not ours, another format, damaged."""


class IsolationScorer(Protocol):
    """What the policy needs of an isolation model."""

    @property
    def version_(self) -> str: ...

    def score(self, X: Any) -> Floats: ...


@dataclass(frozen=True, slots=True)
class IsolationModel:
    """A fitted forest's scorer: ``score`` maps rows to [0, 1], higher is more anomalous."""

    forest: CompiledForest
    threshold_: float  # the anomaly score the history's most unusual ``contamination`` reach
    score_scale: float
    version_: str
    trained_at_ms_: int
    n_samples_fit_: int
    n_features_in_: int

    def score(self, X: Any) -> Floats:
        """Per-row anomaly score in [0, 1], higher is more anomalous."""
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {matrix.shape}, but the model expects rows of "
                f"{self.n_features_in_} features"
            )
        if matrix.shape[0] == 0:
            return np.zeros(0)
        anomaly = -self.forest.score_samples(matrix)
        return anomaly_probability(anomaly, self.threshold_, self.score_scale)

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
        """The model as JSON-able scalars and named arrays (a file's or a pipe's content)."""
        forest = self.forest
        meta = {
            "format": FILE_FORMAT,
            "trees": forest.trees,
            "width": forest.width,
            "depth": forest.depth,
            "denominator": forest.denominator,
            "threshold": self.threshold_,
            "score_scale": self.score_scale,
            "version": self.version_,
            "trained_at_ms": self.trained_at_ms_,
            "samples": self.n_samples_fit_,
            "features": self.n_features_in_,
        }
        return meta, {name: getattr(forest, name) for name in ARRAYS}

    @classmethod
    def from_arrays(
        cls, meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]
    ) -> IsolationModel:
        """The model ``to_arrays`` described; ModelFileError if they do not make one."""
        try:
            if meta["format"] != FILE_FORMAT:
                raise ModelFileError(f"format {meta['format']!r}, not {FILE_FORMAT}")
            trees, width, depth = int(meta["trees"]), int(meta["width"]), int(meta["depth"])
            size = trees * width
            integers = {
                name: np.ascontiguousarray(arrays[name], dtype=np.intp)
                for name in ("feature", "left", "right")
            }
            reals = {
                name: np.ascontiguousarray(arrays[name], dtype=np.float64)
                for name in ("threshold", "leaf_depth")
            }
            columns: dict[str, npt.NDArray[Any]] = {**integers, **reals}
            if trees < 1 or any(column.shape != (size,) for column in columns.values()):
                raise ModelFileError(f"node tables do not hold {trees} trees of {width} nodes")
            features = int(meta["features"])
            links = np.concatenate([integers["left"], integers["right"]])
            if (links < 0).any() or (links >= size).any() or (integers["feature"] < 0).any():
                raise ModelFileError("a node points outside the forest")
            if (integers["feature"] >= features).any():
                raise ModelFileError(f"a node tests a feature beyond the model's {features}")
            forest = CompiledForest(
                trees,
                width,
                integers["feature"],
                reals["threshold"],
                integers["left"],
                integers["right"],
                reals["leaf_depth"],
                depth,
                float(meta["denominator"]),
            )
            return cls(
                forest,
                float(meta["threshold"]),
                float(meta["score_scale"]),
                str(meta["version"]),
                int(meta["trained_at_ms"]),
                int(meta["samples"]),
                features,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"not an isolation model: {exc!r}") from exc

    def save(self, path: str | Path) -> None:
        """Write the model to ``path`` (an ``.npz`` file of plain arrays)."""
        meta, arrays = self.to_arrays()
        with open(path, "wb") as file:  # a file object: np.savez would append ".npz"
            np.savez(file, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> IsolationModel:
        """The model saved at ``path``; ModelFileError if the file is not one."""
        try:
            with open(path, "rb") as file:
                saved = np.load(file, allow_pickle=False)
                if not isinstance(saved, np.lib.npyio.NpzFile):
                    raise ValueError("one array, not an archive of a model's arrays")
                with saved:
                    meta = json.loads(str(saved["meta"]))
                    arrays = {name: saved[name] for name in ARRAYS}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelFileError(f"cannot read a model from {str(path)!r}: {exc!r}") from exc
        if not isinstance(meta, dict):
            raise ModelFileError(f"{str(path)!r} is not a format-{FILE_FORMAT} detector file")
        try:
            return cls.from_arrays(meta, arrays)
        except ModelFileError as exc:
            raise ModelFileError(f"{str(path)!r}: {exc}") from exc
