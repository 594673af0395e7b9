"""Which durable store keeps the control-plane records, from the limiter's settings."""

from __future__ import annotations

from pathlib import Path

from analytics.clickhouse import chdb_path
from control.durable.journal import Journal


def open_journal(data_dir: Path, clickhouse_url: str | None) -> Journal:
    """A ClickHouse server's table when ``--clickhouse-url`` names a server (shared by every
    limiter instance); otherwise a SQLite file in the data dir (one machine: ``ratewatch
    up``, whose chDB belongs to the pipeline worker, or a lone ``serve``)."""
    url = clickhouse_url
    if url is not None and chdb_path(url) is None:
        from control.durable.clickhouse_journal import ClickHouseJournal

        return ClickHouseJournal(url)
    from control.durable.sqlite_journal import SqliteJournal

    return SqliteJournal(data_dir)
