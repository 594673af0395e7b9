"""Handing back the pages of shared libraries that ran once, at start-up.

chDB is one 550 MB shared library, and opening it runs the start-up code of all of
ClickHouse (every function, format and table engine registers itself), which leaves some
240 MB of its code resident in the pipeline worker.  The worker's steady work (inserts, the
queries of the query socket, merges) touches about half of that again.  These are clean,
file-backed pages: the kernel would drop them under memory pressure anyway and read back
whichever runs again, so nothing is lost by asking it to drop them now
(``madvise(MADV_PAGEOUT)``, Linux 5.4 and later), once the worker has started: its
resident memory is then what it uses, not what it ran once.

Only mappings that cannot be written are advised (code and read-only data): a private page
that was written (relocations) would need swap to be paged out, and is left alone.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger("ratewatch.memory")

MADV_PAGEOUT = 21
MAPS = Path("/proc/self/maps")


def library_ranges(maps: str, names: Iterable[str]) -> Iterator[tuple[int, int]]:
    """The (start, length) of each read-only, file-backed mapping in ``maps`` (the text of
    ``/proc/<pid>/maps``) whose file's name contains one of ``names``."""
    wanted = tuple(names)
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "w" in fields[1]:
            continue
        path = fields[5]
        if path.startswith("/") and any(name in Path(path).name for name in wanted):
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            yield start, end - start


def page_out(names: Iterable[str]) -> int:
    """Ask the kernel to drop this process's resident pages of the libraries named by
    ``names`` (see the module's docstring); the bytes of the mappings advised, 0 where the
    kernel cannot (not Linux, older than 5.4)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        maps = MAPS.read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    for start, length in library_ranges(maps, names):
        if libc.madvise(start, length, MADV_PAGEOUT) != 0:
            log.debug("madvise(MADV_PAGEOUT) refused: errno %d", ctypes.get_errno())
            return advised
        advised += length
    return advised
