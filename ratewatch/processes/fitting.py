"""The model-fitting process of the detection processes (``python -m
ratewatch.processes.fitting``): ``detectors/fit_child.py`` with the modules scikit-learn
would import unasked kept out, as in the processes that start it (pandas alone is a
quarter of a second of the child's start, which every burst of fits pays).  Started by
the command of ``ratewatch/processes/fit_command.py``."""

from __future__ import annotations

import sys

from ratewatch.processes.optional_imports import SKLEARN_EXTRAS, keep_out


def main() -> int:
    keep_out(SKLEARN_EXTRAS)  # before scikit-learn loads
    from detectors.fit_child import main as serve

    return serve()


if __name__ == "__main__":
    sys.exit(main())
