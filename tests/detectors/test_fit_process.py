"""Model fits in a process of their own (``detectors/fit_process.py``): the detection
process scores what the fitting process returns, never loads scikit-learn, and survives a
fitting process that dies or is asked the impossible.  Real child processes throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from detectors.fit_process import ProcessFitter
from detectors.fitting import FitError
from detectors.isolation import IsolationDetector
from ratewatch.processes.fit_command import FIT_COMMAND
from tests.support.polling import wait_until
from tests.support.processes import environment_of

pytestmark = pytest.mark.timeout(120)

ROWS = np.random.default_rng(11).normal(loc=[5.0, 0.1, 1.0], scale=[1.0, 0.02, 0.2], size=(600, 3))
PROBE = np.random.default_rng(12).normal(loc=[5.0, 0.1, 1.0], scale=[3.0, 0.2, 1.0], size=(40, 3))


@pytest.fixture
def fitter() -> Iterator[ProcessFitter]:
    fitter = ProcessFitter({"n_estimators": 20}, idle_seconds=60)
    yield fitter
    fitter.close()


def wait_until_gone(pid: int, seconds: float = 20) -> None:
    """Until ``pid`` has exited (a zombie not yet reaped counts as gone)."""
    wait_until(lambda: _state(pid) in ("Z", "gone"), seconds, f"process {pid} to exit", 0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_a_model_fitted_in_the_child_scores_as_one_fitted_here(fitter: ProcessFitter) -> None:
    model = fitter.fit(ROWS, trained_at_ms=1_234)
    here = IsolationDetector(n_estimators=20).fit(ROWS, trained_at_ms=1_234)
    assert model.version_ == here.version_
    assert (model.trained_at_ms_, model.n_samples_fit_, model.n_features_in_) == (1_234, 600, 3)
    np.testing.assert_array_equal(model.score(PROBE), here.score(PROBE))
    assert fitter.child_pid is not None
    assert fitter.child_pid != os.getpid()


def test_the_detection_process_fits_and_scores_without_loading_scikit_learn() -> None:
    # a fresh interpreter with the embedded pipeline's modules, fitting through the
    # registry's default fitter and scoring with the model it gets back
    program = (
        "import sys\n"
        "import numpy as np\n"
        "import ratewatch.processes.pipeline, detectors.service\n"
        "from detectors.registry import ModelRegistry\n"
        "registry = ModelRegistry(min_history=50)\n"
        "rng = np.random.default_rng(1)\n"
        "registry.record('acme', 'ip', rng.normal(size=(300, 9)))\n"
        "model = registry.refresh('acme', 'ip', 1_000)\n"
        "scores = model.score(rng.normal(size=(5, 9)))\n"
        "registry.close()\n"
        "print(model.version_.startswith('iforest-'), scores.shape,"
        " [m for m in ('sklearn', 'scipy') if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True (5,) []"


def test_one_child_serves_a_burst_of_fits_and_exits_when_idle() -> None:
    fitter = ProcessFitter({"n_estimators": 10}, idle_seconds=1.0)
    try:
        first = fitter.fit(ROWS, 1)
        pid = fitter.child_pid
        assert pid is not None
        second = fitter.fit(ROWS[:300], 2)
        assert fitter.child_pid == pid
        assert fitter.children_started == 1
        assert first.version_ != second.version_
        wait_until_gone(pid)  # idle past idle_seconds: gone, its memory given back
        assert fitter.child_pid is None
        fitter.fit(ROWS, 3)
        assert fitter.children_started == 2
    finally:
        fitter.close()


def test_a_fit_that_cannot_be_done_is_an_error_and_the_child_goes_on(
    fitter: ProcessFitter,
) -> None:
    with pytest.raises(FitError, match="minimum of 2 is required"):
        fitter.fit(ROWS[:1], 1)
    with pytest.raises(FitError, match="NaN"):  # refused, not fitted
        fitter.fit(np.full((10, 3), np.nan), 1)
    assert fitter.fit(ROWS, 2).n_samples_fit_ == 600
    assert fitter.children_started == 1


# The first child this command starts reads a little of its first request and dies; the
# ones after it are the real fitting process.
DIES_MID_FIT_ONCE = """
import os, runpy, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    sys.stdin.buffer.read(64)
    os._exit(9)
runpy.run_module("detectors.fit_child", run_name="__main__")
"""


def test_a_child_that_dies_mid_fit_fails_that_fit_and_the_next_one_starts_anew(
    tmp_path: Path,
) -> None:
    command = (sys.executable, "-c", DIES_MID_FIT_ONCE, str(tmp_path / "died-once"))
    fitter = ProcessFitter({"n_estimators": 20}, idle_seconds=60, command=command)
    try:
        with pytest.raises(FitError, match="the fitting process failed"):
            fitter.fit(ROWS, 1)
        model = fitter.fit(ROWS, 2)
        assert model.trained_at_ms_ == 2
        assert fitter.children_started == 2
    finally:
        fitter.close()


def test_a_child_killed_between_fits_is_replaced_by_the_next_fit(fitter: ProcessFitter) -> None:
    fitter.fit(ROWS, 1)
    pid = fitter.child_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # not /proc's zombie state: a killed process's threads may still be exiting then,
    # and the fitter (rightly) sees the child as running until it can be reaped
    wait_until(lambda: fitter.child_pid is None, 20, "the fitter to see its child gone", 0.05)
    model = fitter.fit(ROWS, 2)
    assert model.trained_at_ms_ == 2
    assert fitter.children_started == 2
    assert fitter.child_pid not in (None, pid)


def test_the_child_starts_without_the_workers_optimize_flag(
    monkeypatch: pytest.MonkeyPatch, fitter: ProcessFitter
) -> None:
    # the pipeline worker of `up` runs with PYTHONOPTIMIZE=2; its short-lived fitting
    # process uses the libraries' installed bytecode instead of compiling its own
    monkeypatch.setenv("PYTHONOPTIMIZE", "2")
    monkeypatch.setenv("RATEWATCH_FIT_PROBE", "inherited")
    fitter.fit(ROWS, 1)
    assert fitter.child_pid is not None
    environment = environment_of(fitter.child_pid)
    assert environment.get("RATEWATCH_FIT_PROBE") == "inherited"
    assert "PYTHONOPTIMIZE" not in environment


def test_closing_stops_the_child(fitter: ProcessFitter) -> None:
    fitter.fit(ROWS, 1)
    pid = fitter.child_pid
    assert pid is not None
    fitter.close()
    wait_until_gone(pid, seconds=10)
    assert fitter.child_pid is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"trees": 10}, r"unknown isolation parameters \['trees'\]"),
        ({"n_estimators": "ten"}, "n_estimators must be a number, got 'ten'"),
        ({"contamination": True}, "contamination must be a number, got True"),
    ],
)
def test_parameters_are_checked_before_any_process_starts(
    params: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ProcessFitter(params)  # type: ignore[arg-type]


def test_the_services_fitting_process_leaves_pandas_out() -> None:
    fitter = ProcessFitter({"n_estimators": 10}, command=FIT_COMMAND)
    try:
        assert fitter.fit(ROWS, 1).n_samples_fit_ == 600
        assert fitter.child_pid is not None
        maps = Path(f"/proc/{fitter.child_pid}/maps").read_text()
        assert "/sklearn/" in maps  # the same reading finds what is there
        assert "/pandas/" not in maps
    finally:
        fitter.close()
