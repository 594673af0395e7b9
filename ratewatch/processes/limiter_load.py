"""How busy ``ratewatch up``'s limiter is, as the pipeline worker sees it from ``/proc``.

The supervisor writes the limiter's pid to ``<data-dir>/run/limiter.pid``; with
``--workers N`` that process forks the workers, its children.  ``LimiterLoad.busy`` reads
each one's CPU time (``utime + stime`` in ``/proc/<pid>/stat``) and says whether one of
them used at least ``busy_cores`` of a core since the last look.  A look less than
``window`` seconds after the last one answers as the last one did, so that a consumer
asking at every read costs a few file reads a quarter of a second at most.

The limiter's own CPU time, not the machine's: the checks are busy when the limiter
works, whatever else runs on the box.  At the default of 0.4 a core, paced single checks
at 2,000 a second used about a fifth of a core on the 2-core box of
``docs/performance.md``, a client sending checks back to back on one connection more than
half, and ``wrk`` at 64 connections two thirds to three quarters.

Where there is no ``/proc`` (not Linux), or no limiter runs, the limiter is never busy.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_BUSY_CORES = 0.4
WINDOW_SECONDS = 0.25
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class LimiterLoad:
    """Whether a limiter process whose pid is in ``pid_file`` (or a child of it) used at
    least ``busy_cores`` of a core since the last look, at least ``window`` seconds ago."""

    def __init__(
        self,
        pid_file: Path,
        busy_cores: float = DEFAULT_BUSY_CORES,
        *,
        window: float = WINDOW_SECONDS,
        proc: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < busy_cores <= 64:
            raise ValueError(
                f"a busy limiter's cores must be above 0 and at most 64, not {busy_cores!r}"
            )
        self._pid_file = pid_file
        self._busy_cores = busy_cores
        self._window = window
        self._proc = proc
        self._clock = clock
        self._looked_at: float | None = None
        self._cpu: dict[int, float] = {}  # CPU seconds of each process at the last look
        self._busy = False
        self.cores = 0.0  # the busiest process's share of a core at the last look

    def busy(self) -> bool:
        now = self._clock()
        if self._looked_at is not None and now - self._looked_at < self._window:
            return self._busy
        cpu = self._read()
        elapsed = None if self._looked_at is None else now - self._looked_at
        self._looked_at = now
        shares = [
            (seconds - self._cpu[pid]) / elapsed
            for pid, seconds in cpu.items()
            if elapsed and pid in self._cpu
        ]
        self._cpu = cpu
        self.cores = max(shares, default=0.0)
        self._busy = self.cores >= self._busy_cores
        return self._busy

    def _read(self) -> dict[int, float]:
        """CPU seconds of the limiter process and its children, by pid (empty when none
        runs)."""
        try:
            pid = int(self._pid_file.read_text(encoding="ascii"))
        except (OSError, ValueError):
            return {}
        pids = [pid]
        children = self._proc / str(pid) / "task" / str(pid) / "children"
        with contextlib.suppress(OSError, ValueError):
            pids += [int(child) for child in children.read_text().split()]
        cpu = {}
        for each in pids:
            try:
                stat = (self._proc / str(each) / "stat").read_text()
            except OSError:
                continue  # gone since
            # the command's name, in parentheses, may hold spaces: the fields follow the last ')'
            fields = stat.rpartition(")")[2].split()
            cpu[each] = (int(fields[11]) + int(fields[12])) / TICKS
        return cpu
