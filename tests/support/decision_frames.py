"""Decision frames built row by row for the detectors' tests, and fed to a detector in
rounds as the detection loop reads them.

(``tests.support.scenarios`` builds large labelled traffic, vectorised; these are the few
hand-placed rows a test of one behaviour needs.)"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl

from detectors.coordinated import CoordinatedDetector
from detectors.features import FRAME_SCHEMA
from detectors.verdict import Verdict

T0 = 1_790_000_000_000
TENANT = "acme"
Row = dict[str, Any]


def row(ms: int, ip: str, *, route: str, key: str, user_id: str | None = None,
        agent: str = "Mozilla/5.0 (X11) Gecko/1", allowed: bool = True) -> Row:  # fmt: skip
    return {
        "ts": ms, "tenant": TENANT, "key": key, "ip": ip, "user_id": user_id, "route": route,
        "user_agent": agent, "allowed": allowed, "remaining": 3, "reason": "ok" if allowed
        else "limit",
    }  # fmt: skip


def frame(rows: Iterable[Row]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=FRAME_SCHEMA).sort("ts")


def rounds(
    rows: Iterable[Row], end_ms: int, step_ms: int, start_ms: int = 0
) -> Iterator[tuple[int, pl.DataFrame]]:
    """The rows of (``start_ms``, ``end_ms``] after ``T0`` in rounds of ``step_ms``: each
    round's end (the time it is evaluated at) and the rows that came during it."""
    data = frame(rows)
    for now in range(start_ms + step_ms, end_ms + 1, step_ms):
        yield (
            T0 + now,
            data.filter((pl.col("ts") > T0 + now - step_ms) & (pl.col("ts") <= T0 + now)),
        )


def coordinated_verdicts(
    detector: CoordinatedDetector, rows: Iterable[Row], end_ms: int, step_ms: int
) -> list[Verdict]:
    """Every verdict of ``detector`` fed ``rows`` round by round; it is closed afterwards."""
    verdicts: list[Verdict] = []
    try:
        for now, chunk in rounds(rows, end_ms, step_ms):
            detector.observe(chunk)
            verdicts += detector.evaluate(now)
    finally:
        detector.close()
    return verdicts
