"""The pipeline worker's view of the limiter's load: real processes, read from ``/proc``
through the pid file ``up`` writes.  A process that spins is busy, one that sleeps is not,
a busy worker forked by the limiter counts, and no limiter at all is never busy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratewatch.processes.limiter_load import LimiterLoad
from tests.support.polling import wait_until

pytestmark = pytest.mark.timeout(60)

# spins for a minute at most: a grandchild left behind by a failed test ends by itself
SPIN = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"
SLEEP = "import time; time.sleep(60)"
# a parent that sleeps while the worker it started spins, as `serve --workers` forks them
PARENT_OF_SPINNER = (
    "import subprocess, sys, time; "
    f"child = subprocess.Popen([sys.executable, '-c', {SPIN!r}]); "
    "time.sleep(60)"
)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def limiter(code: str, pid_file: Path, started: list[subprocess.Popen[bytes]]) -> int:
    process = subprocess.Popen([sys.executable, "-c", code])
    started.append(process)
    pid_file.write_text(f"{process.pid}\n", encoding="ascii")
    return process.pid


def busy_within(load: LimiterLoad, seconds: float) -> bool:
    """Whether ``load`` says busy at some look within ``seconds`` (each look a window)."""
    try:
        wait_until(load.busy, seconds, "a busy look", interval=0.05)
    except TimeoutError:
        return False
    return True


def test_a_spinning_limiter_is_busy(tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    pid_file = tmp_path / "limiter.pid"
    limiter(SPIN, pid_file, started)
    load = LimiterLoad(pid_file, 0.3, window=0.2)
    assert busy_within(load, 20)
    assert load.cores >= 0.3


def test_a_sleeping_limiter_is_not_busy(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    pid_file = tmp_path / "limiter.pid"
    limiter(SLEEP, pid_file, started)
    load = LimiterLoad(pid_file, 0.3, window=0.2)
    assert not busy_within(load, 2)
    assert load.cores < 0.3


def test_a_busy_worker_of_the_limiter_counts(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    pid_file = tmp_path / "limiter.pid"
    parent = limiter(PARENT_OF_SPINNER, pid_file, started)
    wait_until(
        lambda: bool(Path(f"/proc/{parent}/task/{parent}/children").read_text().split()),
        20,
        "the spinning worker",
    )
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    try:
        # the parent itself sleeps: the busy process is its child
        assert busy_within(LimiterLoad(pid_file, 0.3, window=0.2), 20)
    finally:
        for child in map(int, children):
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("content", [None, "", "not a pid\n", "999999999\n"])
def test_no_limiter_is_never_busy(tmp_path: Path, content: str | None) -> None:
    pid_file = tmp_path / "limiter.pid"
    if content is not None:
        pid_file.write_text(content, encoding="ascii")
    load = LimiterLoad(pid_file, 0.01, window=0.05)
    assert not busy_within(load, 0.5)


def test_looks_within_the_window_answer_as_the_last_one(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    pid_file = tmp_path / "limiter.pid"
    now = [0.0]
    load = LimiterLoad(pid_file, 0.3, window=1.0, clock=lambda: now[0])
    assert not load.busy()  # no limiter yet
    limiter(SPIN, pid_file, started)
    now[0] = 0.5
    assert not load.busy()  # within the window: the last answer, without reading /proc


@pytest.mark.parametrize("cores", [0, -0.5, 65, float("nan")])
def test_a_busy_threshold_out_of_range_is_refused_naming_it(cores: float) -> None:
    with pytest.raises(ValueError, match=f"not {cores!r}"):
        LimiterLoad(Path("limiter.pid"), cores)
