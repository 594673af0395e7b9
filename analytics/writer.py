"""Writing consumed batches of decision events to ``ratewatch.decisions``, idempotently.

A consumer commits its offsets only after ClickHouse accepted the batch (at-least-once), so
after a crash it writes the same batch again.  Each insert carries a deduplication token
derived from the batch's topic, partition and offset range: ClickHouse drops an insert whose
token it has seen (within ``non_replicated_deduplication_window`` blocks), and with
``deduplicate_blocks_in_dependent_materialized_views`` the rollups' blocks too, so a replay
is counted once.  The token dedupes only a replay of the *same* range: the consumer must cut
its batches at the same offsets when it replays.  With an ``Origin`` each row also records
its source offset, for the consumers' ledger (``analytics.event_store``).

The batch is shaped column-wise with polars and sent as one Arrow table, which ClickHouse
reads without a per-row conversion on either side.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any, NamedTuple

import polars as pl
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from analytics.clickhouse import DECISIONS_TABLE, describe
from analytics.errors import AnalyticsError, InvalidEvents
from stream.events import DecisionEvent

_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UINT16 = 2**16 - 1
_UINT32 = 2**32 - 1

# Every DecisionEvent field, as polars reads it from Python (ints wide, checked below).
_INPUT_SCHEMA: dict[str, Any] = {
    "v": pl.Int64,
    "event_id": pl.String,
    "ts": pl.Int64,
    "tenant": pl.String,
    "key": pl.String,
    "algorithm": pl.String,
    "limit": pl.Int64,
    "window": pl.Int64,
    "cost": pl.Int64,
    "allowed": pl.Boolean,
    "remaining": pl.Int64,
    "reset_in": pl.Int64,
    "reason": pl.String,
    "ip": pl.String,
    "route": pl.String,
    "user_agent": pl.String,
    "user_id": pl.String,
    "latency_us": pl.Int64,
    "instance": pl.String,
    "segment": pl.String,
    "policy": pl.String,
    "shadow": pl.Boolean,
    "trace_id": pl.String,
}
assert set(_INPUT_SCHEMA) == set(DecisionEvent.__struct_fields__), "schema out of date"

# (column, lowest, highest) for the integer columns narrower than the event's int
_RANGES = (
    ("v", 0, _UINT16),
    ("ts", 0, None),
    ("limit", 0, None),
    ("window", 0, _UINT32),
    ("cost", 0, None),
    ("reset_in", 0, _UINT32),
    ("latency_us", 0, _UINT32),
)
_OPTIONAL_STRINGS = (
    "ip",
    "route",
    "user_agent",
    "user_id",
    "instance",
    "segment",
    "policy",
    "trace_id",
)

_SHAPE = [
    pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC"),
    pl.col("v").cast(pl.UInt16),
    pl.col("limit", "cost").cast(pl.UInt64),
    pl.col("window", "reset_in", "latency_us").cast(pl.UInt32),
    pl.col(*_OPTIONAL_STRINGS).fill_null(""),
]

_GETTERS = [(name, attrgetter(name)) for name in _INPUT_SCHEMA]
_BUILD_ERRORS = (OverflowError, TypeError, pl.exceptions.PolarsError)


def _bad_row_mask() -> pl.Expr:
    mask = ~pl.col("event_id").str.contains(_UUID)
    for column, low, high in _RANGES:
        mask = mask | (pl.col(column) < low)
        if high is not None:
            mask = mask | (pl.col(column) > high)
    required = [name for name in _INPUT_SCHEMA if name not in _OPTIONAL_STRINGS]
    mask = mask | pl.any_horizontal(pl.col(*required).is_null())
    return mask.fill_null(True).alias("bad")


_BAD_ROW = _bad_row_mask()


def dedup_token(
    topic: str, partition: int | str, first_offset: int | str, last_offset: int | str
) -> str:
    """The deduplication token of the batch ``first_offset..last_offset`` (inclusive) of one
    partition; offsets may be Kafka offsets or Redis stream ids."""
    return f"{topic}/{partition}/{first_offset}-{last_offset}"


class Origin(NamedTuple):
    """Where a batch's events came from: one source partition, and each event's offset
    (several events may share one, as in a Redis stream entry)."""

    source: str
    partition: int
    offsets: Sequence[int]

    def columns(self, rows: int) -> list[pl.Series]:
        if len(self.offsets) != rows:
            raise AnalyticsError(f"{len(self.offsets)} offsets for {rows} events")
        return [
            pl.Series("source", [self.source] * rows, pl.String),
            pl.Series("source_partition", [self.partition] * rows, pl.UInt32),
            pl.Series("source_offset", self.offsets, pl.UInt64),
        ]


class DecisionWriter:
    """Inserts batches of DecisionEvents into ``ratewatch.decisions`` (and so the rollups)."""

    def __init__(self, client: Client, table: str = DECISIONS_TABLE) -> None:
        self._client = client
        self._table = table

    def write(
        self,
        events: Sequence[DecisionEvent],
        dedup_token: str,
        origin: Origin | None = None,
    ) -> int:
        """Insert ``events`` as one batch; return how many were handed to ClickHouse.

        A batch whose ``dedup_token`` was written before is accepted and dropped by
        ClickHouse, so the return value is the same for a replay.  With ``origin`` each row
        also records its source, partition and offset (which feed the ledger of stored
        offsets).  InvalidEvents (before anything is written) if some events cannot be
        stored; AnalyticsError if ClickHouse refused the insert, in which case the batch may
        be written again with the same token.
        """
        if not events:
            return 0
        if not dedup_token:
            raise AnalyticsError("a batch needs a non-empty deduplication token")
        frame = shape(events)
        if origin is not None:
            frame = frame.with_columns(origin.columns(len(events)))
        table = frame.to_arrow().combine_chunks()
        try:
            self._client.insert_arrow(
                self._table,
                table,
                settings={
                    "insert_deduplicate": 1,
                    "insert_deduplication_token": dedup_token,
                    "deduplicate_blocks_in_dependent_materialized_views": 1,
                    # an async insert is deduplicated by other rules (async_insert_deduplicate)
                    "async_insert": 0,
                },
            )
        except ClickHouseError as exc:
            raise AnalyticsError(
                f"insert of {len(events)} events into {self._table} failed: {describe(exc)}"
            ) from exc
        return len(events)


def shape(events: Sequence[DecisionEvent]) -> pl.DataFrame:
    """The batch as a DataFrame with the column types of ``ratewatch.decisions``;
    InvalidEvents naming the events that do not fit them."""
    try:
        frame = _frame(events)
    except _BUILD_ERRORS:
        # an int beyond 64 bits, or a value of the wrong type: find them one by one
        raise _invalid(events, [i for i, e in enumerate(events) if not _storable(e)]) from None
    bad = frame.select(_BAD_ROW).to_series()
    if bad.any():
        raise _invalid(events, bad.arg_true().to_list())
    return frame.with_columns(_SHAPE)


def _frame(events: Sequence[DecisionEvent]) -> pl.DataFrame:
    return pl.DataFrame(
        {name: list(map(get, events)) for name, get in _GETTERS}, schema=_INPUT_SCHEMA
    )


def _storable(event: DecisionEvent) -> bool:
    try:
        return not _frame([event]).select(_BAD_ROW).item()
    except _BUILD_ERRORS:
        return False


def _invalid(events: Sequence[DecisionEvent], indices: list[int]) -> InvalidEvents:
    example = f"; the first is event_id={events[indices[0]].event_id!r}" if indices else ""
    return InvalidEvents(
        f"{len(indices)} of {len(events)} events cannot be stored "
        f"(bad UUID, or a number out of range){example}",
        indices,
    )
