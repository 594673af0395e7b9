"""The journal in ClickHouse (``ratewatch.control_records``, migration 0008): the store the
distributed deployment already runs, shared by every limiter instance, replicated and
backed up with the rest of ClickHouse.

One clickhouse-connect client, created when first needed and used on one worker thread
(clients are not shared across threads).  An insert returns once ClickHouse has written it,
so a record is durable before the API answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from analytics.clickhouse import connect, describe, redact
from analytics.errors import AnalyticsError
from analytics.tables import CONTROL_RECORDS_TABLE
from control.durable.journal import Entry
from limiter.errors import StoreUnavailable

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

_T = TypeVar("_T")
_COLUMNS = ["kind", "tenant", "id", "version", "deleted", "payload"]
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM {CONTROL_RECORDS_TABLE} FINAL"


class ClickHouseJournal:
    def __init__(self, url: str, *, connector: Callable[[str], Client] = connect):
        self.description = f"ClickHouse at {redact(url)}"
        self._url = url
        self._connector = connector
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._client: Client | None = None  # only on the worker thread

    async def _run(self, work: Callable[[Client], _T]) -> _T:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        def call() -> _T:
            if self._client is None:
                self._client = self._connector(self._url)
            try:
                return work(self._client)
            except (ClickHouseError, OSError):
                self._client = None  # a fresh connection next time
                raise

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (ClickHouseError, AnalyticsError, OSError) as exc:
            raise StoreUnavailable(f"the {self.description} failed: {describe(exc)}") from exc

    async def put(self, entries: Sequence[Entry]) -> None:
        rows = [[e.kind, e.tenant, e.id, e.version, int(e.deleted), e.payload] for e in entries]

        def write(client: Client) -> None:
            client.insert(CONTROL_RECORDS_TABLE, rows, column_names=_COLUMNS)

        await self._run(write)

    async def entries(self) -> list[Entry]:
        def read(client: Client) -> list[Entry]:
            return [_entry(row) for row in client.query(_SELECT).result_rows]

        return await self._run(read)

    async def find(self, kind: str, record_id: str) -> Entry | None:
        def read(client: Client) -> Entry | None:
            rows = client.query(
                f"{_SELECT} WHERE kind = {{kind:String}} AND id = {{id:String}} "
                "ORDER BY version DESC LIMIT 1",
                parameters={"kind": kind, "id": record_id},
            ).result_rows
            return _entry(rows[0]) if rows else None

        return await self._run(read)

    async def count(self) -> int:
        def read(client: Client) -> int:
            sql = f"SELECT count() FROM {CONTROL_RECORDS_TABLE} FINAL"
            return int(client.query(sql).result_rows[0][0])

        return await self._run(read)

    async def close(self) -> None:
        def close(client: Client) -> None:
            client.close()
            self._client = None

        if self._client is not None:
            await self._run(close)
        self._executor.shutdown(wait=True)


def _entry(row: Sequence[Any]) -> Entry:
    kind, tenant, record_id, version, deleted, payload = row
    return Entry(str(kind), str(tenant), str(record_id), int(version), bool(deleted), str(payload))
