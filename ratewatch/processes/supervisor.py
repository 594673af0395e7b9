"""``ratewatch up``'s process tree: children that are restarted when they die and stopped
in order.

The limiter and the pipeline worker run as separate processes (the limiter must stay lean,
and chDB belongs to one process); the supervisor only watches them.  A child that exits on
its own is restarted after a short, growing pause.  On SIGTERM or SIGINT the children are
stopped one by one in the order given (the limiter first, so that every decision it
answered is in the stream before the pipeline drains it).

A child may run at a lower CPU priority than the supervisor (``Child.nice``): the pipeline
worker yields the processors to the limiter whenever both want them.  The child lowers it
itself between fork and exec, so its every thread has it from the start; this process has
no other thread, which makes that safe.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("ratewatch.up")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

MAX_BACKOFF_SECONDS = 10.0


@dataclass
class Child:
    name: str
    args: list[str]
    pid_file: Path | None = None  # where the running child's pid is kept, for operators
    env: Mapping[str, str] | None = None  # None: this process's environment
    stop_timeout: float = 30.0
    nice: int = 0  # how much lower than the supervisor's its CPU priority is (0 to 19)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.nice <= 19:
            raise ValueError(f"nice {self.nice} of {self.name} must be from 0 to 19")

    def start(self) -> None:
        increment = self.nice
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ratewatch", *self.args],
            env=self.env,
            preexec_fn=(lambda: os.nice(increment)) if increment else None,
        )
        self.started_at = time.monotonic()
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(f"{self.process.pid}\n", encoding="ascii")
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def stop(self) -> None:
        process, self.process = self.process, None
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0fs: killing it", self.name, self.stop_timeout)
            process.kill()
            process.wait()


class Supervisor:
    def __init__(self, children: Sequence[Child], poll_interval: float = 0.2):
        self._children = list(children)
        self._poll = poll_interval
        self._stopping = False

    def run(self) -> int:
        """Start the children and keep them running until a signal; the exit status."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        # blocked across the exec of a hand-over (handover.py): a signal that came meanwhile
        # is delivered now, to the handler
        signal.pthread_sigmask(signal.SIG_UNBLOCK, previous)
        try:
            for child in self._children:
                if not self._stopping:
                    child.start()
            while not self._stopping:
                time.sleep(self._poll)
                for child in self._children:
                    self._restart_if_dead(child)
        finally:
            for child in self._children:
                child.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _restart_if_dead(self, child: Child) -> None:
        process = child.process
        if process is None or process.poll() is None or self._stopping:
            return
        ran_for = time.monotonic() - child.started_at
        # a child that keeps dying right away is retried ever more slowly
        child.restarts = 0 if ran_for > 60 else child.restarts + 1
        pause = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** max(0, child.restarts - 1))
        log.warning(
            "%s exited with %s after %.1fs; restarting in %.1fs",
            child.name,
            process.returncode,
            ran_for,
            pause,
        )
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and not self._stopping:
            time.sleep(min(self._poll, pause))
        if not self._stopping:
            child.start()
