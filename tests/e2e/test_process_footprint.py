"""What each process of `ratewatch up` loads: the limiter answers checks without the
analytics engine or the models, which belong to the pipeline worker alone, and the worker
scores its models without scikit-learn, which only its short-lived fitting process loads
(tests/detectors/test_fit_process.py); the worker's
chDB runs with the pools, caches and session of analytics/chdb_config.py, and the worker
at a lower CPU priority than the limiter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analytics.chdb_config import ENGINE_SETTINGS, MERGE_TREE_SETTINGS, SESSION_SETTINGS
from analytics.clickhouse import query_socket_path
from analytics.query_client import query
from tests.support.processes import nice_values
from tests.support.servers import RatewatchProcess

pytestmark = pytest.mark.timeout(60)

# the native libraries of each package: a package imported anywhere in a process has its
# shared objects mapped into it
HEAVY = {
    "chdb": "/chdb/",
    "polars": "/polars/",
    "pyarrow": "/pyarrow/",
    "scikit-learn": "/sklearn/",
    "scipy": "/scipy/",
    # installed, imported by no process of the tree: pandas (chDB's dependency, which
    # scikit-learn would import), watchfiles (uvicorn's --reload)
    "pandas": "/pandas/",
    "watchfiles": "/watchfiles/",
}


# a thread of chDB's that wakes a few times a second to read the process's memory
CHDB_MEMORY_WATCHER = "MemoryWorker"


def mapped_packages(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name, folder in HEAVY.items() if folder in maps}


def child_pid(stack: RatewatchProcess, name: str) -> int:
    assert stack.data_dir is not None
    return int((stack.data_dir / "run" / f"{name}.pid").read_text())


def test_the_limiter_of_up_loads_no_analytics_engine_or_models(stack: RatewatchProcess) -> None:
    assert mapped_packages(child_pid(stack, "limiter")) == set()


def test_the_pipeline_worker_of_up_holds_the_engine_but_not_scikit_learn(
    stack: RatewatchProcess,
) -> None:
    loaded = mapped_packages(child_pid(stack, "pipeline"))
    # the same reading finds what is there: the check above can fail
    assert "chdb" in loaded
    assert not {"scikit-learn", "scipy"} & loaded


def test_the_pipeline_worker_leaves_out_what_its_libraries_would_import_unasked(
    stack: RatewatchProcess,
) -> None:
    loaded = mapped_packages(child_pid(stack, "pipeline"))
    assert not {"pandas", "watchfiles"} & loaded


@pytest.mark.parametrize(
    "process",
    [
        ("control.app", "ratewatch.processes.serving"),  # the limiter
        ("ratewatch.processes.pipeline", "webhooks.worker"),  # the pipeline worker
    ],
    ids=["limiter", "pipeline"],
)
def test_cryptography_waits_for_the_first_sealed_secret(process: tuple[str, ...]) -> None:
    # a fresh interpreter: the session's stack may have sealed a webhook's secret already,
    # which loads it there, as it should
    imports = "; ".join(f"import {module}" for module in process)
    probe = (
        f"import sys; {imports}; "
        "print(sorted(m for m in sys.modules if m.startswith('cryptography.hazmat')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=50, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_pipeline_worker_runs_at_a_lower_priority_than_the_limiter(
    stack: RatewatchProcess,
) -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert nice_values(child_pid(stack, "limiter")) == {ours}  # unchanged
    # every thread of the worker (chDB's, the detectors'), since it was lowered before exec;
    # but chDB's memory watcher, which raises its own priority when it may (as root)
    worker = nice_values(child_pid(stack, "pipeline"), but=(CHDB_MEMORY_WATCHER,))
    assert worker == {min(19, ours + 10)}  # the default


def test_the_pipeline_workers_chdb_is_sized_as_stated(stack: RatewatchProcess) -> None:
    # asked on the worker's query socket: the answers are its engine's and its session's
    assert stack.data_dir is not None
    socket = query_socket_path(stack.data_dir / "clickhouse")
    names = ", ".join(f"'{name}'" for name in ENGINE_SETTINGS)
    engine = query(
        socket, f"SELECT name, value FROM system.server_settings WHERE name IN ({names})"
    )
    assert {row["name"]: int(row["value"]) for row in engine} == ENGINE_SETTINGS
    assert single_row(socket, "getMergeTreeSetting", MERGE_TREE_SETTINGS) == MERGE_TREE_SETTINGS
    assert single_row(socket, "getSetting", SESSION_SETTINGS) == SESSION_SETTINGS


def single_row(socket: Path, function: str, settings: dict[str, int]) -> dict[str, int]:
    """``settings``' names read back with ``function``, in one query."""
    columns = ", ".join(f"{function}('{name}') AS {name}" for name in settings)
    (row,) = query(socket, f"SELECT {columns}")
    return {name: int(value) for name, value in row.items()}
