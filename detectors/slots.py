"""Dense slots for 64-bit keys: the hash tables of the incremental window.

The window counts per subject and per (subject, value) pair as decisions arrive and leave
(``detectors.tallies``).  Keys are the 64-bit hashes polars computes for a batch; a slot is
an index into numpy arrays that hold what is counted, so updating a batch costs one
dictionary lookup per distinct key of the batch and numpy arithmetic for the rest, however
much the window holds.  A released slot is reused.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from itertools import repeat
from typing import TypeVar

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]
Keys = npt.NDArray[np.uint64]
Mask = npt.NDArray[np.bool_]
_T = TypeVar("_T", bound=np.generic)


class SlotTable:
    """Slots for keys, with one numpy column per counted quantity (zero when released)."""

    def __init__(self, columns: Mapping[str, npt.DTypeLike]) -> None:
        self._index: dict[int, int] = {}
        self._free: list[int] = []
        self._size = 0  # slots handed out so far; the columns are valid up to here
        self.keys: Keys = np.zeros(16, np.uint64)
        self.columns: dict[str, npt.NDArray[np.generic]] = {
            name: np.zeros(16, dtype) for name, dtype in columns.items()
        }

    def __len__(self) -> int:
        return len(self._index)

    @property
    def size(self) -> int:
        return self._size

    def __getitem__(self, name: str) -> Ints:
        column: Ints = self.columns[name]  # type: ignore[assignment]
        return column

    def find(self, keys: Keys) -> Ints:
        """The slot of each key, -1 for a key without one."""
        return np.fromiter(map(self._index.get, keys.tolist(), repeat(-1)), np.int64, keys.size)

    def claim(self, keys: Keys) -> tuple[Ints, Mask]:
        """The slots of distinct ``keys``, given to those without one; and which were new."""
        slots = self.find(keys)
        new = slots < 0
        count = int(new.sum())
        if count:
            reused = self._free[len(self._free) - min(count, len(self._free)) :]
            del self._free[len(self._free) - len(reused) :]
            fresh = np.arange(self._size, self._size + count - len(reused), dtype=np.int64)
            given = np.concatenate([np.asarray(reused, dtype=np.int64), fresh])
            self._grow(self._size + fresh.size)
            self._size += fresh.size
            self._index.update(zip(keys[new].tolist(), given.tolist(), strict=True))
            self.keys[given] = keys[new]
            slots[new] = given
        return slots, new

    def release(self, slots: Ints) -> None:
        """Give ``slots`` (distinct, in use) back: their keys are forgotten, columns zeroed."""
        if not slots.size:
            return
        deque(map(self._index.pop, self.keys[slots].tolist()), maxlen=0)
        for column in self.columns.values():
            column[slots] = 0
        self._free.extend(slots.tolist())

    def _grow(self, needed: int) -> None:
        capacity = self.keys.size
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        self.keys = _resized(self.keys, capacity)
        self.columns = {name: _resized(column, capacity) for name, column in self.columns.items()}


def _resized(array: npt.NDArray[_T], capacity: int) -> npt.NDArray[_T]:
    grown = np.zeros(capacity, array.dtype)
    grown[: array.size] = array
    return grown
