"""The decisions of the short window, numbered, leaving in time order.

Each decision folded into the window gets a sequence number and keeps, in numpy columns,
what is needed to take it out of the tallies again when it leaves the short window (the
slots it was counted in, the gap to the next decision of each of its subjects); its raw
row is kept too, for the few subjects whose decisions must be looked at one by one
(``detectors.attribution``).  Decisions are folded in batches sorted by time, so each
batch leaves the window from its front: expiring costs what leaves, not what stays.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from detectors.features import empty_frame

Ints = npt.NDArray[np.int64]
_MIN_ROWS = 1024


@dataclass
class _Batch:
    first: int  # sequence number of its first decision
    end: int  # one past its last
    cursor: int  # its first decision still in the window
    raw: pl.DataFrame  # its decisions, in time order


class RecentRows:
    """Numbered decisions with per-decision columns, expiring by time."""

    def __init__(self, columns: Mapping[str, npt.DTypeLike]) -> None:
        self._dtypes = {"ts": np.dtype(np.int64), **{k: np.dtype(v) for k, v in columns.items()}}
        self._base = 0  # sequence number stored at index 0
        self._end = 0  # the next sequence number
        self._columns = {name: np.zeros(_MIN_ROWS, dtype) for name, dtype in self._dtypes.items()}
        self._batches: deque[_Batch] = deque()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    @property
    def capacity(self) -> int:
        """Decisions the columns have room for (what their storage holds)."""
        return int(self._columns["ts"].size)

    def append(self, raw: pl.DataFrame, ts: Ints) -> Ints:
        """Number the decisions ``raw`` (sorted by ``ts``, their times); return the numbers.
        Their other columns are filled in with ``set``."""
        self.compact()
        count = ts.size
        first = self._end
        self._reserve(first + count)
        self._end += count
        seqs = np.arange(first, first + count, dtype=np.int64)
        self._columns["ts"][first - self._base : first - self._base + count] = ts
        self._batches.append(_Batch(first, first + count, first, raw))
        self._live += count
        return seqs

    def get(self, name: str, seqs: Ints) -> Ints:
        values: Ints = self._columns[name][seqs - self._base].astype(np.int64, copy=False)
        return values

    def set(self, name: str, seqs: Ints, values: npt.ArrayLike) -> None:
        self._columns[name][seqs - self._base] = values

    def expire(self, cutoff_ms: int) -> Ints:
        """Take the decisions at or before ``cutoff_ms`` out of the window; return their
        numbers.  Their columns stay readable until the next ``append`` or ``compact``."""
        gone: list[Ints] = []
        ts = self._columns["ts"]
        for batch in self._batches:
            lo, hi = batch.cursor - self._base, batch.end - self._base
            leaving = int(np.searchsorted(ts[lo:hi], cutoff_ms, side="right"))
            if leaving:
                gone.append(np.arange(batch.cursor, batch.cursor + leaving, dtype=np.int64))
                batch.cursor += leaving
        self._batches = deque(b for b in self._batches if b.cursor < b.end)
        seqs = np.concatenate(gone) if gone else np.zeros(0, np.int64)
        self._live -= seqs.size
        return seqs

    def live(self) -> Ints:
        """The numbers of every decision in the window."""
        ranges = [np.arange(b.cursor, b.end, dtype=np.int64) for b in self._batches]
        return np.concatenate(ranges) if ranges else np.zeros(0, np.int64)

    def raw(self, seqs: Ints) -> pl.DataFrame:
        """The raw rows of the decisions ``seqs`` (in the window, ascending)."""
        parts = []
        for batch in self._batches:
            lo, hi = np.searchsorted(seqs, [batch.first, batch.end])
            if hi > lo:
                parts.append(batch.raw[seqs[lo:hi] - batch.first])
        return pl.concat(parts) if parts else empty_frame()

    def _reserve(self, end: int) -> None:
        needed = end - self._base
        capacity = self._columns["ts"].size
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        for name, column in self._columns.items():
            grown = np.zeros(capacity, column.dtype)
            grown[: column.size] = column
            self._columns[name] = grown

    def compact(self) -> None:
        """Drop the columns of decisions that left, once they are half the storage; and
        once the window holds less than a quarter of it (after a burst), shrink it to
        twice what it holds: a minute of 2,000 decisions a second is some 30 MB."""
        start = self._batches[0].cursor if self._batches else self._end
        dead = start - self._base
        capacity = self._columns["ts"].size
        if dead and dead * 2 >= capacity:
            used = self._end - start
            shrunk = capacity
            while shrunk > _MIN_ROWS and used * 4 <= shrunk:
                shrunk //= 2
            for name, column in self._columns.items():
                if shrunk < capacity:
                    kept = np.zeros(shrunk, column.dtype)
                    kept[:used] = column[dead : dead + used]
                    self._columns[name] = kept
                else:
                    column[:used] = column[dead : dead + used]
            self._base = start
