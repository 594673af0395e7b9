"""The journal in a SQLite file of the data dir (``<data-dir>/control.sqlite3``).

Why SQLite and not chDB: the limiter process never loads chDB (the pipeline worker owns
it), and a control-plane write must not wait on the pipeline worker being up.  SQLite is in
Python's standard library, commits durably (``synchronous=FULL``: a write is on disk before
the API answers), and several processes may use one file at once (WAL mode), as the
limiter's workers and ``ratewatch keys`` do.  Every call runs on one worker thread, so the
event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from control.durable.journal import Entry
from limiter.errors import StoreUnavailable

FILE_NAME = "control.sqlite3"
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS control_records (
    kind    TEXT    NOT NULL,
    tenant  TEXT    NOT NULL,
    id      TEXT    NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    payload TEXT    NOT NULL,
    PRIMARY KEY (kind, tenant, id)
);
CREATE INDEX IF NOT EXISTS control_records_by_id ON control_records (kind, id);
"""

_UPSERT = """
INSERT INTO control_records (kind, tenant, id, version, deleted, payload)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (kind, tenant, id) DO UPDATE SET
    version = excluded.version, deleted = excluded.deleted, payload = excluded.payload
WHERE excluded.version >= control_records.version
"""

_COLUMNS = "kind, tenant, id, version, deleted, payload"


class SqliteJournal:
    def __init__(self, data_dir: Path, *, timeout: float = 5.0):
        self.path = data_dir / FILE_NAME
        self.description = f"SQLite file {self.path}"
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._connection: sqlite3.Connection | None = None  # only on the worker thread

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(_SCHEMA)
            self._connection = connection
        return self._connection

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            return work(self._connect())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"the {self.description} failed: {exc}") from exc

    async def put(self, entries: Sequence[Entry]) -> None:
        rows = [(e.kind, e.tenant, e.id, e.version, int(e.deleted), e.payload) for e in entries]

        def write(connection: sqlite3.Connection) -> None:
            with connection:  # one transaction, committed (and synced) on leaving
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany(_UPSERT, rows)

        await self._run(write)

    async def entries(self) -> list[Entry]:
        def read(connection: sqlite3.Connection) -> list[Entry]:
            rows = connection.execute(f"SELECT {_COLUMNS} FROM control_records").fetchall()
            return [_entry(row) for row in rows]

        return await self._run(read)

    async def find(self, kind: str, record_id: str) -> Entry | None:
        def read(connection: sqlite3.Connection) -> Entry | None:
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM control_records WHERE kind = ? AND id = ? "
                "ORDER BY version DESC LIMIT 1",
                (kind, record_id),
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._run(read)

    async def count(self) -> int:
        def read(connection: sqlite3.Connection) -> int:
            return int(connection.execute("SELECT count(*) FROM control_records").fetchone()[0])

        return await self._run(read)

    async def close(self) -> None:
        def close(connection: sqlite3.Connection) -> None:
            connection.close()
            self._connection = None

        if self._connection is not None:
            await self._run(close)
        self._executor.shutdown(wait=True)


def _entry(row: tuple[str, str, str, int, int, str]) -> Entry:
    kind, tenant, record_id, version, deleted, payload = row
    return Entry(kind, tenant, record_id, int(version), bool(deleted), payload)
