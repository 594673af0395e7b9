"""The pipeline worker hands back the start-up pages of its big libraries: which mappings
it advises, and that the kernel takes the advice for a read-only file mapping."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from ratewatch.processes.library_pages import library_ranges, page_out

pytestmark = pytest.mark.timeout(30)

MAPS = """\
7f0000000000-7f0000001000 r--p 00000000 08:01 11 /venv/chdb/_chdb.abi3.so
7f0000001000-7f0000005000 r-xp 00001000 08:01 11 /venv/chdb/_chdb.abi3.so
7f0000005000-7f0000006000 rw-p 00005000 08:01 11 /venv/chdb/_chdb.abi3.so
7f0000006000-7f0000008000 r-xp 00000000 08:01 12 /venv/polars/_polars_runtime.abi3.so
7f0000008000-7f0000009000 r-xp 00000000 08:01 13 /usr/lib/libc.so.6
7f0000009000-7f000000a000 rw-p 00000000 00:00 0
7f000000a000-7f000000b000 r--p 00000000 00:00 0 [vvar]
7f000000c000-7f000000d000 r-xp 00000000 08:01 14 /venv/other/not_chdb_.so
"""


def test_only_the_named_libraries_read_only_mappings_are_chosen() -> None:
    ranges = list(library_ranges(MAPS, ("_chdb.", "_polars_runtime.")))
    assert ranges == [
        (0x7F0000000000, 0x1000),
        (0x7F0000001000, 0x4000),  # the writable mapping (relocated data) is left alone
        (0x7F0000006000, 0x2000),
    ]
    assert list(library_ranges(MAPS, ())) == []


def test_a_read_only_file_mapping_is_advised(tmp_path: Path) -> None:
    library = tmp_path / "_chdb.test-library"
    library.write_bytes(b"\x90" * (64 * mmap.PAGESIZE))
    with library.open("rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert sum(mapped[i * mmap.PAGESIZE] for i in range(64)) == 64 * 0x90  # resident
        assert page_out(["_chdb.test-library"]) == 64 * mmap.PAGESIZE
        # still readable: a dropped page is read back from the file
        assert mapped[: mmap.PAGESIZE] == b"\x90" * mmap.PAGESIZE
    assert page_out(["no-such-library"]) == 0
