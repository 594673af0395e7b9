"""What each process of `ratewatch up` loads: the limiter answers checks without the
analytics engine or the models, which belong to the pipeline worker alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.servers import RatewatchProcess

pytestmark = pytest.mark.timeout(60)

# the native libraries of each package: a package imported anywhere in a process has its
# shared objects mapped into it
HEAVY = {
    "chdb": "/chdb/",
    "polars": "/polars/",
    "pyarrow": "/pyarrow/",
    "scikit-learn": "/sklearn/",
}


def mapped_packages(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name, folder in HEAVY.items() if folder in maps}


def child_pid(stack: RatewatchProcess, name: str) -> int:
    assert stack.data_dir is not None
    return int((stack.data_dir / "run" / f"{name}.pid").read_text())


def test_the_limiter_of_up_loads_no_analytics_engine_or_models(stack: RatewatchProcess) -> None:
    assert mapped_packages(child_pid(stack, "limiter")) == set()


def test_the_pipeline_worker_of_up_holds_them(stack: RatewatchProcess) -> None:
    # the same reading finds them where they are: the check above can fail
    assert {"chdb", "scikit-learn"} <= mapped_packages(child_pid(stack, "pipeline"))
