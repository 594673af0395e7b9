"""Fits in a process of their own, so the long-lived detection process never loads
scikit-learn.

Loading scikit-learn (with SciPy, its compiled libraries and the modules both import)
costs a process about 150 MB that it keeps for good, while the detector needs it for a
fit every ten minutes or so per (tenant, scope).  ``ProcessFitter`` starts
``python -m detectors.fit_child`` (or the ``command`` it is given: the processes of
``ratewatch`` use ``ratewatch.processes.fitting``, the same child with pandas kept out)
when a fit is asked for, sends it the history's rows and
gets back the fitted model as plain arrays (``detectors/fit_frames.py``,
``detectors/isolation_model.py``).  The child stays while fits keep coming and exits after
``idle_seconds`` without one, so a burst of fits (every tenant's models coming due
together, or a new tenant's young models refitted as their history doubles) pays the
child's start, about a second of CPU, once; the memory, about 130 MB, is given back
between bursts.

The child inherits the caller's CPU priority (the pipeline worker runs below the
limiter) but not ``PYTHONOPTIMIZE``: it is short-lived, and the bytecode installed with
the libraries is the unoptimized kind, so it starts in about a second instead of
compiling thousands of modules again.

A child that dies or answers garbage fails that fit (``FitError``; the registry counts
it and retries later) and the next fit starts a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from detectors.fit_frames import FrameError, read_frame, write_frame
from detectors.fitting import FitError
from detectors.isolation_model import PARAMETERS, IsolationModel, ModelFileError

log = logging.getLogger("ratewatch.detect")

CHILD_MODULE = "detectors.fit_child"
IDLE_SECONDS = 30.0  # a child with no fit for this long exits
STOP_SECONDS = 5.0  # a child that does not exit on EOF this long after is killed


class ProcessFitter:
    """Fits ``IsolationDetector(**params)`` models in a child process (see the module
    docstring); thread-safe, one fit at a time."""

    def __init__(
        self,
        params: Mapping[str, float] | None = None,
        *,
        idle_seconds: float = IDLE_SECONDS,
        command: Sequence[str] | None = None,
    ) -> None:
        """``command`` starts the child (default: ``python -m detectors.fit_child`` with
        this interpreter); it must serve ``detectors.fit_child``'s protocol."""
        self.params = dict(params or {})
        unknown = sorted(set(self.params) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"unknown isolation parameters {unknown}; known: {list(PARAMETERS)}")
        for name, value in self.params.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"isolation parameter {name} must be a number, got {value!r}")
        if not idle_seconds > 0:
            raise ValueError(f"idle_seconds must be positive, got {idle_seconds!r}")
        self.idle_seconds = idle_seconds
        self.command = tuple(command) if command else (sys.executable, "-m", CHILD_MODULE)
        self._start()

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._idle: threading.Timer | None = None
        self.children_started = 0

    def __getstate__(self) -> dict[str, object]:
        # a copy of a detector (tests, tools) gets a fitter of its own, with no child yet
        return {"params": self.params, "idle_seconds": self.idle_seconds, "command": self.command}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()

    @property
    def child_pid(self) -> int | None:
        """The fitting process's pid while one runs."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    @property
    def gathers(self) -> bool:
        """Yes: fits in one burst share the child's start."""
        return True

    def fit(self, rows: npt.NDArray[np.float64], trained_at_ms: int) -> IsolationModel:
        with self._lock:
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            child = self._running_child()
            try:
                assert child.stdin is not None
                assert child.stdout is not None
                request = {"params": self.params, "trained_at_ms": int(trained_at_ms)}
                write_frame(child.stdin, request, {"rows": np.asarray(rows, dtype=np.float64)})
                answer = read_frame(child.stdout)
                if answer is None:
                    raise FrameError("the fitting process ended without an answer")
            except OSError as exc:  # a broken pipe, or a message cut short
                code = self._stop_child()
                raise FitError(f"the fitting process failed (exit status {code}): {exc}") from exc
            self._idle = threading.Timer(self.idle_seconds, self._expire)
            self._idle.daemon = True
            self._idle.start()
        header, arrays = answer
        if not header.get("ok"):
            raise FitError(f"the fit failed: {header.get('error', 'no reason given')}")
        try:
            return IsolationModel.from_arrays(header["model"], arrays)
        except (KeyError, ModelFileError) as exc:
            raise FitError(f"the fitting process answered no usable model: {exc}") from exc

    def close(self) -> None:
        """Stop the child, if one runs (a fit after this starts another)."""
        with self._lock:
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            self._stop_child()

    def _expire(self) -> None:
        with self._lock:
            self._idle = None
            self._stop_child()

    def _running_child(self) -> subprocess.Popen[bytes]:
        child = self._child
        if child is not None and child.poll() is None:
            return child
        self._stop_child()  # one that died between fits: its pipes are closed here
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONOPTIMIZE"}
        self._child = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
        )
        self.children_started += 1
        log.debug("fitting process %d started", self._child.pid)
        return self._child

    def _stop_child(self) -> int | None:
        child, self._child = self._child, None
        if child is None:
            return None
        for stream in (child.stdin, child.stdout):
            _close_quietly(stream)
        try:
            return child.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()


def _close_quietly(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):  # the child is gone: nothing to flush to
            stream.close()
