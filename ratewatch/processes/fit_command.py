"""How the pipeline worker and ``ratewatch detect`` start their model-fitting process
(``ratewatch/processes/fitting.py``).  A module of its own: the processes that start it
must not import it, since it imports scikit-learn."""

from __future__ import annotations

import sys

FIT_COMMAND = (sys.executable, "-m", "ratewatch.processes.fitting")
