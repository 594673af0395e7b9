"""Where model fits run: one at a time, on a worker thread of their own, never on the
evaluation's.

An evaluation that finds a model due hands its fit to a ``FitQueue`` and goes on judging
with the model it has (or without one, in cold start); the fit replaces the model when it
is done, so the round after it uses the new one.  One worker thread, so fits never compete
with each other for the machine's cores, and a fit starts only between rounds
(``round``): the seconds between two rounds are idle, while a fit running beside a round
slows it down (the two share the interpreter's lock and, on a small machine, the cores).
A fit still running when the next round begins goes on; the round never waits for it.
What fits cost is counted apart from the evaluation
(``ratewatch_detect_model_fit_duration_seconds``).

The thread is started with the first fit, and ``close`` cancels what is still queued and
waits for the fit in progress, so a process that stops never leaves a model half-saved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from detectors.metrics import DetectionMetrics


class FitQueue:
    """Runs fit jobs one at a time, in submission order, on one worker thread.

    A job is a callable that reports its own outcome (the registry's jobs catch, log and
    count their failures); an exception that escapes one anyway is kept in its future and
    never stops the queue.
    """

    def __init__(self, metrics: DetectionMetrics | None = None) -> None:
        self._metrics = metrics
        self._start()

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._executor: ThreadPoolExecutor | None = None
        self._queued = 0
        self._running = 0
        self._closed = False
        self._between_rounds = threading.Event()
        self._between_rounds.set()

    def __getstate__(self) -> dict[str, object]:
        # a copy of a detector (tests, tools) gets a queue of its own, idle
        return {"_metrics": self._metrics}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._start()

    @property
    def queued(self) -> int:
        """Jobs submitted and not started yet."""
        return self._queued

    @property
    def running(self) -> int:
        """Jobs in progress: 0 or 1."""
        return self._running

    def submit(self, job: Callable[[], None]) -> Future[None]:
        """Queue ``job``; it runs after the jobs queued before it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the fit queue is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="ratewatch-fit")
            self._queued += 1
            self._publish()
            return self._executor.submit(self._run, job)

    @contextmanager
    def round(self) -> Iterator[None]:
        """While an evaluation round runs: no fit starts (one under way goes on)."""
        self._between_rounds.clear()
        try:
            yield
        finally:
            self._between_rounds.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False if ``timeout`` came first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queued and not self._running, timeout)

    def close(self) -> None:
        """Drop the jobs not started yet and wait for the one in progress."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        self._between_rounds.set()  # a job waiting for the round to end is dropped
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._idle:
            self._queued = 0  # the cancelled ones never ran
            self._publish()
            self._idle.notify_all()

    def _run(self, job: Callable[[], None]) -> None:
        self._between_rounds.wait()
        with self._idle:
            self._queued -= 1
            if self._closed:
                self._publish()
                self._idle.notify_all()
                return
            self._running += 1
            self._publish()
        try:
            job()
        finally:
            with self._idle:
                self._running -= 1
                self._publish()
                self._idle.notify_all()

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.fits_queued.set(self._queued)
            self._metrics.fits_in_flight.set(self._running)
