"""Keeping out of a process the optional modules its libraries import only because they
are installed.

Some libraries import an optional dependency at their own import whenever it can be found,
for features the service never uses, and each costs every process that loads the library
for as long as it runs:

- scikit-learn imports pandas (about 24 MB of the pipeline worker's anonymous memory) to
  accept data frames; the detectors give it numpy arrays, and pandas is installed only as
  chDB's dependency (its data-frame results, which RateWatch does not ask for);
- redis-py imports OpenTelemetry's metrics SDK, when installed (``ratewatch[otel]`` for the
  check path's traces), to offer metrics of its own that RateWatch does not turn on;
- uvicorn imports watchfiles, when installed, for ``--reload``, which the limiter never runs.

Each library catches the ImportError and goes on without the feature.  ``keep_out`` puts a
finder first on ``sys.meta_path`` that refuses those names, and must run before the library
is imported; a module already loaded is left alone.  (Not ``None`` in ``sys.modules``, the
other way to refuse an import: scikit-learn looks pandas up there and would take the None
for the module.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

SKLEARN_EXTRAS = ("pandas",)
# the OTLP exporter of the limiter's traces (--tracing) may need it: kept out only without
REDIS_EXTRAS = ("opentelemetry.sdk.metrics",)
UVICORN_EXTRAS = ("watchfiles",)


class _Refused(MetaPathFinder):
    def __init__(self, names: Iterable[str]):
        self.names = frozenset(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname in self.names:
            raise ModuleNotFoundError(f"{fullname} is kept out of this process", name=fullname)
        return None


def keep_out(names: Iterable[str]) -> list[str]:
    """Make ``import name`` raise ModuleNotFoundError in this process for each of ``names``
    not yet imported; the names kept out."""
    kept = [name for name in names if name not in sys.modules]
    if kept:
        sys.meta_path.insert(0, _Refused(kept))
    return kept
