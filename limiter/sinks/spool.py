"""The disk spool: decision events the broker could not take yet, kept in order.

Records are appended to segment files ``<dir>/<id>.seg``; each record is framed by its
length and CRC-32, so a tail torn by a crash is recognised and skipped (a process never
appends to an earlier process's segment, so a torn record can only end a segment).  The
position of the first unacknowledged record is kept in ``<dir>/cursor``; segments before
it are deleted, and the whole spool once everything in it is acknowledged.

The owner may mark the first records after the cursor *in doubt* (``mark_in_doubt``): sent
once already, perhaps delivered.  Their count is kept in ``<dir>/doubt`` (written by
``flush`` and ``ack``; absent when nothing is in doubt), so that a later process knows too.

Threads: ``append`` is called on the event loop and only queues bytes in memory; the file
work (``open``, ``flush``, ``read``, ``ack``, ``close``) belongs to one worker thread, so
the loop never waits on the disk.  ``flush`` writes and fsyncs everything appended since
the last flush: the caller decides how often (in batches, not per record).

The spool is bounded: ``append`` refuses a record that would take it past ``max_bytes`` and
counts it in ``dropped``.  It is the one place where an event can be lost, so the owner
must make that count loud.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from limiter.errors import ConfigError

log = logging.getLogger("ratewatch.spool")

MAGIC = b"RWSPOOL1"
_FRAME = struct.Struct("<II")  # body length, crc32 of the body
MAX_RECORD = 16 * 1024 * 1024


class Position(NamedTuple):
    """Where the next record starts: a segment id and a byte offset in it."""

    segment: int
    offset: int


class Chunk(NamedTuple):
    """Records read in order, and the position after the last of them."""

    records: list[bytes]
    end: Position


class Spool:
    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 16 * 1024 * 1024):
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(len(MAGIC) + _FRAME.size + 1, min(segment_bytes, max_bytes))
        self.dropped = 0
        self._lock = threading.Lock()  # append (loop) against flush (worker)
        self._io = threading.Lock()  # file work, in case two threads ever share the spool
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pending_count = 0
        # taken from the queue by a flush, not yet on disk: still counted, so that the loop
        # never sees a record vanish (or the bound ignore it) while the worker writes it
        self._flushing = 0
        self._flushing_bytes = 0
        self._sizes: dict[int, int] = {}  # segment id -> durable size on disk
        self._disk_bytes = 0
        self._count = 0  # durable records after the cursor
        self._cursor = Position(1, 0)
        self._writer: int | None = None  # fd of the active segment, this process's own
        self._owner: int | None = None  # fd holding the spool's lock
        self._active = 0  # its id
        self._next_id = 1
        self._doubt = 0  # records after the cursor in doubt
        self._doubt_saved = 0  # what <dir>/doubt says

    @property
    def events(self) -> int:
        """Records appended and not yet acknowledged (including those not yet flushed)."""
        return self._count + self._pending_count + self._flushing

    @property
    def size(self) -> int:
        """Bytes on disk and queued for it."""
        return self._disk_bytes + self._pending_bytes + self._flushing_bytes

    @property
    def in_doubt(self) -> int:
        """How many records after the cursor are in doubt (see ``mark_in_doubt``)."""
        return self._doubt

    def mark_in_doubt(self, count: int) -> None:
        """Mark the first ``count`` records after the cursor (appended already, flushed or
        not) in doubt; memory only until the next ``flush`` or ``ack``."""
        with self._lock:
            self._doubt = max(self._doubt, min(count, self.events))

    @property
    def pending(self) -> int:
        """Records appended but not yet flushed (or being flushed)."""
        return self._pending_count + self._flushing

    def open(self) -> None:
        """Find what an earlier process left (it is replayed first) and count it."""
        with self._io:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._owner = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:  # two processes appending to one spool would garble it
                fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._owner)
                raise ConfigError(
                    f"the spool {self.directory} is in use by another RateWatch process"
                ) from None
            for path in self.directory.glob("*.seg"):
                with contextlib.suppress(ValueError):
                    self._sizes[int(path.stem)] = path.stat().st_size
            self._disk_bytes = sum(self._sizes.values())
            # a cursor naming a deleted segment reads on from the next one (see _read)
            self._cursor = self._load_cursor() or Position(min(self._sizes, default=1), 0)
            self._next_id = max([*self._sizes, self._cursor.segment]) + 1
            self._delete_before(self._cursor.segment)
            position, total = self._cursor, 0
            while True:
                chunk = self._read(position, 1 << 22)
                if not chunk.records:
                    break
                total += len(chunk.records)
                position = chunk.end
            self._count = total
            self._doubt = self._doubt_saved = min(self._load_doubt(), total)
        if total:
            log.warning("spool %s holds %d events from an earlier run", self.directory, total)

    def append(self, payload: bytes) -> bool:
        """Queue one record for the next flush; False (and counted) if the spool is full."""
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self.size + len(frame) > self.max_bytes:
                self.dropped += 1
                return False
            self._pending.append(frame)
            self._pending_bytes += len(frame)
            self._pending_count += 1
        return True

    def flush(self) -> None:
        """Write and fsync what was appended.  On a disk error what could not be written is
        dropped (and counted) rather than kept in memory without bound; the error is raised."""
        with self._io:
            with self._lock:
                frames, count = self._pending, self._pending_count
                self._flushing, self._flushing_bytes = count, self._pending_bytes
                self._pending, self._pending_bytes, self._pending_count = [], 0, 0
            written = 0
            try:
                for done in self._write(frames):
                    written += done
            except OSError:
                with self._lock:
                    self.dropped += count - written
                self._seal(truncate=True)
                raise
            finally:
                with self._lock:
                    self._flushing = self._flushing_bytes = 0
                self._save_doubt()

    def read(self, max_bytes: int) -> Chunk:
        """The durable records after the cursor, in order, up to about ``max_bytes``."""
        with self._io:
            return self._read(self._cursor, max_bytes)

    def ack(self, end: Position, count: int) -> None:
        """Mark the ``count`` records before ``end`` delivered: move the cursor (on disk)
        and delete what is wholly delivered."""
        with self._io:
            self._cursor = end
            self._count -= count
            with self._lock:
                self._doubt = max(0, self._doubt - count)
            if self._count == 0 and self._durable_end() == end:
                self._seal()
                self._delete_before(self._next_id)
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / "cursor").unlink()
                self._cursor = Position(self._next_id, 0)
                self._save_doubt()
                return
            self._delete_before(end.segment)
            tmp = self.directory / "cursor.tmp"
            tmp.write_text(f"{end.segment} {end.offset}\n", encoding="ascii")
            os.replace(tmp, self.directory / "cursor")
            self._save_doubt()  # after the cursor: a crash between them leaves too many

    def close(self) -> None:
        self.flush()
        with self._io:
            self._seal()
            if self._owner is not None:
                os.close(self._owner)  # and with it the lock
                self._owner = None

    # -- file work, under self._io --------------------------------------------------------

    def _write(self, frames: list[bytes]) -> Iterator[int]:
        """Write ``frames`` segment by segment; yields how many each fsync made durable."""
        start = 0
        while start < len(frames):
            if self._writer is None:
                self._open_segment()
            assert self._writer is not None
            room = self.segment_bytes - self._sizes[self._active]
            end, size = start, 0
            while end < len(frames) and (end == start or size + len(frames[end]) <= room):
                size += len(frames[end])
                end += 1
            data = b"".join(frames[start:end])
            written = 0
            while written < len(data):
                written += os.write(self._writer, data[written:])
            os.fsync(self._writer)
            self._sizes[self._active] += len(data)
            with self._lock:  # durable now: moved from the flush's share to the disk's
                self._disk_bytes += len(data)
                self._flushing_bytes -= len(data)
                self._count += end - start
                self._flushing -= end - start
            if self._sizes[self._active] >= self.segment_bytes:
                self._seal()
            yield end - start
            start = end

    def _open_segment(self) -> None:
        self._active, self._next_id = self._next_id, self._next_id + 1
        path = self.directory / f"{self._active:016d}.seg"
        self._writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.write(self._writer, MAGIC)
        self._sizes[self._active] = len(MAGIC)
        self._disk_bytes += len(MAGIC)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:  # the new file's name must survive a crash too
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _seal(self, truncate: bool = False) -> None:
        """Close the active segment; after a failed write, cut it back to what is durable."""
        if self._writer is not None:
            if truncate:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._writer, self._sizes[self._active])
            os.close(self._writer)
            self._writer = None

    def _durable_end(self) -> Position:
        last = max(self._sizes, default=None)
        if last is None:
            return self._cursor
        return Position(last, self._sizes[last])

    def _delete_before(self, segment: int) -> None:
        for sid in sorted(s for s in self._sizes if s < segment):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{sid:016d}.seg").unlink()
            self._disk_bytes -= self._sizes.pop(sid)

    def _save_doubt(self) -> None:
        """Write the in-doubt count if it changed (never, while nothing is in doubt)."""
        doubt = self._doubt
        if doubt == self._doubt_saved:
            return
        path = self.directory / "doubt"
        if doubt:
            tmp = self.directory / "doubt.tmp"
            tmp.write_text(f"{doubt}\n", encoding="ascii")
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._doubt_saved = doubt

    def _load_doubt(self) -> int:
        try:
            return max(0, int((self.directory / "doubt").read_text(encoding="ascii")))
        except FileNotFoundError:
            return 0
        except ValueError:  # unreadable: all of it may have been sent already
            log.error("spool in-doubt count in %s is unreadable; all in doubt", self.directory)
            return 1 << 62

    def _load_cursor(self) -> Position | None:
        try:
            segment, offset = (self.directory / "cursor").read_text(encoding="ascii").split()
            return Position(int(segment), int(offset))
        except FileNotFoundError:
            return None
        except ValueError:  # unreadable: replay everything rather than lose anything
            log.error("spool cursor in %s is unreadable; replaying every segment", self.directory)
            return None

    def _read(self, position: Position, max_bytes: int) -> Chunk:
        records: list[bytes] = []
        taken = 0
        while taken < max_bytes:
            sid, offset = position
            size = self._sizes.get(sid)
            if size is None:  # a gap (deleted or never written): on to the next segment
                later = [s for s in self._sizes if s > sid]
                if not later:
                    break
                position = Position(min(later), 0)
                continue
            if offset < len(MAGIC):
                offset = len(MAGIC)
            active = sid == self._active and self._writer is not None
            if offset >= size:
                if active or sid == max(self._sizes):
                    position = Position(sid, max(offset, position.offset))
                    break
                position = Position(sid + 1, 0)
                continue
            got, offset, torn = self._read_segment(sid, offset, size, max_bytes - taken)
            records.extend(got)
            taken += sum(len(r) for r in got)
            position = Position(sid, offset)
            if torn:
                log.warning(
                    "spool segment %d: torn or corrupt record at byte %d skipped", sid, offset
                )
                position = Position(sid, size)
            elif not got:
                break
        return Chunk(records, position)

    def _read_segment(
        self, sid: int, offset: int, size: int, max_bytes: int
    ) -> tuple[list[bytes], int, bool]:
        """Records of one segment from ``offset``; True when a torn record ends it."""
        records: list[bytes] = []
        with open(self.directory / f"{sid:016d}.seg", "rb") as file:
            if offset == len(MAGIC) and file.read(len(MAGIC)) != MAGIC:
                return records, offset, True
            file.seek(offset)
            data = file.read(min(size - offset, max(max_bytes, 1 << 16)))
        pos = 0
        while pos + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, pos)
            body_end = pos + _FRAME.size + length
            if length > MAX_RECORD or offset + body_end > size:
                return records, offset + pos, True
            if body_end > len(data):  # whole, but beyond this read: the next read takes it
                if not records and pos == 0:
                    return self._read_segment(sid, offset, size, _FRAME.size + length)
                break
            body = data[pos + _FRAME.size : body_end]
            if zlib.crc32(body) != crc:
                return records, offset + pos, True
            records.append(body)
            pos = body_end
            if pos >= max_bytes:
                break
        if pos < len(data) and offset + pos + _FRAME.size > size:
            return records, offset + pos, True  # a partial header ends the segment
        return records, offset + pos, False
