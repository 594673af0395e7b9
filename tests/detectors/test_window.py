"""The incremental window gives the features computed from scratch over the same decisions:
random decisions, some late and some ahead of the clock, folded in batch by batch while
time moves forward, over windows small enough that decisions leave the short window, the
long window's buckets expire and tenants fall silent within one example."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.features import FEATURE_COLUMNS, FRAME_SCHEMA, ID_COLUMNS, subject_features
from detectors.window import RollingWindow

pytestmark = pytest.mark.timeout(300)

T0 = 1_700_000_000_000


@dataclass(frozen=True)
class Decision:
    offset: int  # from the step's moment: negative is late, positive ahead of the clock
    tenant: str
    ip: str | None
    key: str | None
    user_id: str | None
    route: str | None
    user_agent: str | None
    allowed: bool
    remaining: int | None


def maybe(*values: str) -> st.SearchStrategy[str | None]:
    return st.sampled_from([None, *values])


decisions = st.builds(
    Decision,
    offset=st.one_of(st.integers(-1_500, 0), st.integers(-80, 0), st.integers(1, 400)),
    tenant=st.sampled_from(["acme", "globex"]),
    ip=maybe("10.0.0.1", "10.0.0.2", "10.0.0.3", "203.0.113.9"),
    key=maybe("k1", "k2", "k3"),
    user_id=maybe("alice", "bob"),
    route=maybe("/a", "/b", "/c", "/login"),
    user_agent=maybe("curl", "firefox"),
    allowed=st.booleans(),
    remaining=st.sampled_from([None, 0, 0, 3]),
)
steps = st.lists(
    st.tuples(st.integers(1, 2_500), st.lists(decisions, max_size=25)), min_size=1, max_size=14
)


def frame_of(rows: list[tuple[int, Decision]]) -> pl.DataFrame:
    columns: dict[str, list[object]] = {name: [] for name in FRAME_SCHEMA}
    for ts, d in rows:
        values = {"ts": ts, "reason": None, **d.__dict__}
        for name in FRAME_SCHEMA:
            columns[name].append(values[name])
    return pl.DataFrame(columns, schema=FRAME_SCHEMA)


def assert_same(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    got, expected = got.sort(ID_COLUMNS), expected.sort(ID_COLUMNS)
    assert got.select(ID_COLUMNS).rows() == expected.select(ID_COLUMNS).rows()
    for column in FEATURE_COLUMNS:
        np.testing.assert_allclose(
            got[column], expected[column], rtol=1e-9, atol=1e-12, err_msg=column
        )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    steps=steps,
    windows=st.sampled_from([(1_000, 4_000, 1_000), (800, 3_000, 500), (1_000, 1_000, 700)]),
    blamed_ips=st.lists(st.sampled_from(["10.0.0.1", "203.0.113.9"]), unique=True),
)
def test_incremental_features_equal_features_from_scratch(
    steps: list[tuple[int, list[Decision]]],
    windows: tuple[int, int, int],
    blamed_ips: list[str],
) -> None:
    short_ms, long_ms, bucket_ms = windows
    window = RollingWindow(short_ms=short_ms, long_ms=long_ms, bucket_ms=bucket_ms)
    blamed = pl.DataFrame(
        [(tenant, ip) for tenant in ("acme", "globex") for ip in blamed_ips],
        schema={"tenant": pl.String(), "ip": pl.String()},
        orient="row",
    )
    # the decisions of each tenant since it last fell silent for a whole long window
    remembered: dict[str, list[tuple[int, Decision]]] = {}
    seen: dict[str, int] = {}
    now = T0
    for advance, batch in steps:
        now += advance
        appended = [(now + d.offset, d) for d in batch]
        window.append(frame_of(appended))
        for ts, d in appended:
            remembered.setdefault(d.tenant, []).append((ts, d))
            seen[d.tenant] = max(ts, seen.get(d.tenant, ts))
        horizon = (now - long_ms) // bucket_ms * bucket_ms
        for tenant in [t for t, last in seen.items() if last < horizon]:
            del seen[tenant], remembered[tenant]

        frame = frame_of([row for rows in remembered.values() for row in rows])
        expected = subject_features(frame, now, short_ms, long_ms, bucket_ms=bucket_ms)
        assert_same(window.features(now), expected)
        if blamed_ips:
            others = ("key", "user_id")
            spared = subject_features(frame, now, short_ms, long_ms, bucket_ms, blamed=blamed)
            in_scope = spared.filter(pl.col("scope").is_in(others))
            assert_same(window.features(now, others, blamed), in_scope)
