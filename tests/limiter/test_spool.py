"""The disk spool on its own: order, torn tails, the size bound, restarts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from limiter.errors import ConfigError
from limiter.sinks.spool import MAGIC, Spool


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [b"event-%06d:" % i + b"x" * (i % 7) for i in range(start, start + n)]


def read_all(spool: Spool) -> list[bytes]:
    """Everything after the cursor, acknowledged as it is read."""
    records: list[bytes] = []
    while True:
        chunk = spool.read(1000)
        if not chunk.records:
            return records
        records.extend(chunk.records)
        spool.ack(chunk.end, len(chunk.records))


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=300)
    spool.open()
    for payload in payloads(50):
        assert spool.append(payload)
    assert spool.pending == 50
    spool.flush()
    spool.append(b"late")
    spool.flush()
    assert len(segments(tmp_path)) > 3
    assert spool.events == 51

    assert read_all(spool) == [*payloads(50), b"late"]
    assert spool.events == 0
    assert segments(tmp_path) == []  # wholly acknowledged: deleted
    assert not (tmp_path / "cursor").exists()
    spool.close()


def test_reading_does_not_acknowledge(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    for payload in payloads(5):
        spool.append(payload)
    spool.flush()
    first = spool.read(1 << 20)
    again = spool.read(1 << 20)
    assert first.records == again.records == payloads(5)
    assert spool.events == 5
    spool.close()


def test_only_flushed_records_are_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    spool.append(b"one")
    assert spool.read(1 << 20).records == []
    assert spool.events == 1
    spool.flush()
    assert spool.read(1 << 20).records == [b"one"]
    spool.close()


def test_a_torn_tail_is_skipped_and_later_records_still_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    for payload in payloads(10):
        spool.append(payload)
    spool.close()
    (segment,) = segments(tmp_path)
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # the last record's write was cut short by a crash

    reopened = Spool(tmp_path, max_bytes=1 << 20)
    reopened.open()
    assert reopened.events == 9
    reopened.append(b"after the crash")
    reopened.flush()
    assert read_all(reopened) == [*payloads(9), b"after the crash"]
    assert segments(tmp_path) == []
    reopened.close()


def test_a_torn_header_and_a_bad_checksum_end_a_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    for payload in payloads(4):
        spool.append(payload)
    spool.close()
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    second = len(MAGIC) + 8 + len(payloads(1)[0])  # where the second record starts
    data[second + 8] ^= 0xFF  # its first payload byte no longer matches its checksum
    segment.write_bytes(bytes(data) + b"\x07\x00")  # and a half-written header at the end

    reopened = Spool(tmp_path, max_bytes=1 << 20)
    reopened.open()
    assert reopened.events == 1
    assert read_all(reopened) == payloads(1)
    reopened.close()


def test_the_size_bound_holds_and_refusals_are_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4096, segment_bytes=1024)
    spool.open()
    accepted = 0
    for i, payload in enumerate(payloads(200)):
        accepted += spool.append(payload)
        if i % 10 == 0:
            spool.flush()
    spool.flush()
    assert 0 < accepted < 200
    assert spool.dropped == 200 - accepted
    assert spool.size <= 4096
    assert sum(p.stat().st_size for p in segments(tmp_path)) <= 4096
    assert read_all(spool) == payloads(accepted)
    # room again once the broker took them
    assert spool.append(b"more")
    spool.close()


def test_a_restart_replays_what_was_not_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=400)
    spool.open()
    for payload in payloads(40):
        spool.append(payload)
    spool.flush()
    chunk = spool.read(200)  # a part of it was delivered before the process stopped
    spool.ack(chunk.end, len(chunk.records))
    delivered = len(chunk.records)
    assert 0 < delivered < 40
    spool.close()

    reopened = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=400)
    reopened.open()
    assert reopened.events == 40 - delivered
    reopened.append(b"new run")
    reopened.flush()
    assert read_all(reopened) == [*payloads(40)[delivered:], b"new run"]
    reopened.close()


def test_an_unreadable_cursor_replays_everything_rather_than_losing_any(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    for payload in payloads(6):
        spool.append(payload)
    spool.flush()
    chunk = spool.read(30)
    spool.ack(chunk.end, len(chunk.records))
    spool.close()
    (tmp_path / "cursor").write_text("garbage")

    reopened = Spool(tmp_path, max_bytes=1 << 20)
    reopened.open()
    assert read_all(reopened) == payloads(6)
    reopened.close()


def test_one_spool_belongs_to_one_process(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    with pytest.raises(ConfigError, match="in use"):
        Spool(tmp_path, max_bytes=1 << 20).open()
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20)
    again.open()
    again.close()


def test_the_in_doubt_count_survives_a_restart_and_shrinks_as_records_are_acknowledged(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    for payload in payloads(10):
        spool.append(payload)
    spool.mark_in_doubt(4)
    spool.mark_in_doubt(2)  # never less than marked
    assert spool.in_doubt == 4
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20)
    again.open()
    assert again.in_doubt == 4
    chunk = again.read(40)  # the first few
    assert 0 < len(chunk.records) < 4
    again.ack(chunk.end, len(chunk.records))
    assert again.in_doubt == 4 - len(chunk.records)
    assert read_all(again) == payloads(10)[len(chunk.records) :]
    assert again.in_doubt == 0
    assert not (tmp_path / "doubt").exists()
    again.close()


def test_nothing_in_doubt_writes_no_in_doubt_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    for payload in payloads(5):
        spool.append(payload)
    spool.close()
    assert not (tmp_path / "doubt").exists()
    again = Spool(tmp_path, max_bytes=1 << 20)
    again.open()
    assert again.in_doubt == 0
    again.close()


def test_records_being_flushed_are_still_counted(tmp_path: Path) -> None:
    """The loop reads the counts while the worker thread writes: a record taken from the
    queue and not yet on disk is neither gone from ``events`` nor from the size bound."""
    spool = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=64 * 1024)
    spool.open()
    records = payloads(20_000)
    for payload in records:
        assert spool.append(payload)
    size = spool.size
    flusher = threading.Thread(target=spool.flush)
    flusher.start()
    seen: set[tuple[int, int, int]] = set()
    while flusher.is_alive():
        seen.add((spool.events, spool.size, spool.pending))
    flusher.join()
    assert {events for events, _, _ in seen} <= {20_000}
    assert min(sizes for _, sizes, _ in seen) >= size  # each new segment adds its header
    assert (spool.events, spool.pending) == (20_000, 0)
    assert {pending for _, _, pending in seen} <= set(range(20_001))
    spool.close()
