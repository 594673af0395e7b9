"""Optional modules kept out of a process: the libraries that would import them go on
without them."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

KEPT = ("pandas", "opentelemetry.sdk.metrics", "watchfiles")
LOADED = f"import sys; print([name for name in {KEPT!r} if name in sys.modules])"


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_scikit_learn_redis_and_uvicorn_load_without_their_optional_extras() -> None:
    kept = run(
        "from ratewatch.processes.optional_imports import *\n"
        "print(keep_out((*SKLEARN_EXTRAS, *REDIS_EXTRAS, *UVICORN_EXTRAS)))\n"
        "import numpy as np, redis.asyncio, uvicorn\n"
        "from sklearn.ensemble import IsolationForest\n"
        "IsolationForest(n_estimators=3, random_state=0).fit(np.zeros((8, 2)))\n" + LOADED
    )
    assert kept.splitlines() == [
        "['pandas', 'opentelemetry.sdk.metrics', 'watchfiles']",
        "[]",
    ]


def test_a_module_already_imported_is_left_alone() -> None:
    out = run(
        "import json\n"
        "from ratewatch.processes.optional_imports import keep_out\n"
        "print(keep_out(['json', 'not_a_module_of_this_test']))\n"
        "import json; print(json.dumps(1))"
    )
    assert out.splitlines() == ["['not_a_module_of_this_test']", "1"]
