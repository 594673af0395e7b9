"""The ids of the events a stream entry holds are UUIDs version 5 of "<offset>/<index>":
the same entry read again gives the same ids, and so its events are stored once."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.events import (
    ENTRY_ID_NAMESPACE,
    EntryCheck,
    EntryDecision,
    decode_entry,
    entry_event_ids,
)
from stream.handlers import Record

pytestmark = pytest.mark.timeout(60)


@given(offset=st.integers(min_value=0, max_value=2**63 - 1), count=st.integers(0, 40))
def test_the_ids_are_the_uuid5_of_offset_and_index(offset: int, count: int) -> None:
    expected = [str(uuid.uuid5(ENTRY_ID_NAMESPACE, f"{offset}/{i}")) for i in range(count)]
    assert entry_event_ids(offset, count) == expected


def test_the_ids_are_valid_version_5_uuids_and_distinct() -> None:
    ids = entry_event_ids(1_765_000_000_000 << 20, 1000)
    assert len(set(ids)) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 5
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_an_entry_decoded_without_ids_holds_the_same_decisions() -> None:
    """Detection decodes the stream without the ids, which it never reads."""
    decisions = [
        EntryDecision(
            EntryCheck("t", f"k{i}", "fixed_window", 10, 60, 1, None, "/r", None, None, 9, "i"),
            i % 2 == 0,
            5,
            60_000,
            0 if i % 2 == 0 else 1_500,
            "ok" if i % 2 == 0 else "limit",
        )
        for i in range(5)
    ]
    record = Record(offset=7 << 20, value=b"1765000000000 " + msgspec.json.encode(decisions))
    with_ids = decode_entry(record)
    without = decode_entry(record, with_ids=False)
    assert [event.event_id for event in with_ids] == entry_event_ids(7 << 20, 5)
    assert [event.event_id for event in without] == [""] * 5
    assert [msgspec.structs.replace(event, event_id="") for event in with_ids] == without
