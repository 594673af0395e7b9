"""What fits an isolation model: the registry's one dependency for training.

The detection process uses ``detectors.fit_process.ProcessFitter``, which fits in a
process of its own so that scikit-learn never loads into the long-lived one; tools and
tests may use ``detectors.isolation.LocalFitter``, which fits in place.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from detectors.isolation_model import IsolationModel


class FitError(RuntimeError):
    """A fit that did not produce a model (the message says why)."""


class Fitter(Protocol):
    def fit(self, rows: npt.NDArray[np.float64], trained_at_ms: int) -> IsolationModel:
        """A model of ``rows`` (the tenant's normal history), stamped ``trained_at_ms``."""
        ...

    @property
    def gathers(self) -> bool:
        """Whether fits cost less together than apart (each burst starts a process): the
        registry then refits, beside a fit under way, the models past half their
        schedule."""
        ...

    def close(self) -> None:
        """Release what the fitter holds (a process); a later ``fit`` starts again."""
        ...
