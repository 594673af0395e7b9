"""The short window's numbered decisions: storage that follows what the window holds, and a
bucket's share of the long window kept summed."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from detectors.recent import RecentRows
from detectors.tallies import PriorShare

pytestmark = pytest.mark.timeout(30)


def test_the_storage_of_a_burst_is_given_back_once_it_left() -> None:
    rows = RecentRows({"slot": np.int32})
    ts = np.arange(200_000, dtype=np.int64)
    seqs = rows.append(pl.DataFrame({"ts": ts}), ts)
    rows.set("slot", seqs, seqs % 1000)
    burst = rows.capacity
    assert burst >= 200_000

    gone = rows.expire(199_899)  # the last 100 decisions stay
    assert gone.size == 199_900
    rows.compact()

    assert rows.capacity < burst // 64
    left = rows.live()
    assert left.tolist() == list(range(199_900, 200_000))
    assert rows.get("ts", left).tolist() == list(range(199_900, 200_000))
    assert rows.get("slot", left).tolist() == [seq % 1000 for seq in range(199_900, 200_000)]
    assert rows.raw(left)["ts"].to_list() == list(range(199_900, 200_000))

    more = np.arange(200_000, 200_010, dtype=np.int64)
    assert rows.append(pl.DataFrame({"ts": more}), more).tolist() == more.tolist()
    assert len(rows) == 110


def test_storage_in_use_is_not_shrunk() -> None:
    rows = RecentRows({})
    ts = np.arange(16_000, dtype=np.int64)
    rows.append(pl.DataFrame({"ts": ts}), ts)
    room = rows.capacity
    rows.expire(10_999)  # what left is moved out; what stays needs more than a quarter
    rows.compact()
    assert rows.capacity == room
    assert rows.get("ts", rows.live()).tolist() == list(range(11_000, 16_000))


def test_a_buckets_share_holds_the_sum_of_what_it_absorbed() -> None:
    share = PriorShare()
    share.absorb(PriorShare(subjects=[(np.array([1, 2]), np.array([3, 1]))]))
    share.absorb(
        PriorShare(
            subjects=[(np.array([2, 5]), np.array([2, 2]))],
            addresses=[(np.array([7]), np.array([4]))],
        )
    )
    share.absorb(PriorShare(addresses=[(np.array([7, 8]), np.array([1, 1]))]))

    ((slots, per),) = share.subjects
    assert (slots.tolist(), per.tolist()) == ([1, 2, 5], [3, 3, 2])
    ((slots, per),) = share.addresses
    assert (slots.tolist(), per.tolist()) == ([7, 8], [5, 1])
