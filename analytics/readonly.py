"""Analysts' queries: one read-only statement at a time, on a client that cannot write.

Two guards: ``check_read_only`` refuses anything but a single SELECT/WITH/SHOW/DESCRIBE/
EXPLAIN (and INTO OUTFILE, which chDB executes even in read-only mode), and the client's
session is switched to ``readonly = 1`` after the limits are set, so no query can write,
create, drop, change a setting (``SETTINGS readonly = 0`` included) or call a table
function such as ``file()`` or ``url()``.  On chDB the setting lives on the client's own
connection handle, so a writer on the same engine is not affected; on a server
clickhouse-connect sends it with every request.

After a failed query the client is replaced: chDB 4.4 prepends whatever a failed query had
already output to the next result on the same connection, which would turn the next answer
into garbage or, worse, into plausible wrong rows.
"""

from __future__ import annotations

import json
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from analytics.clickhouse import connect, describe
from analytics.errors import QueryError
from analytics.query_client import QueryResult
from analytics.sqltext import check_read_only

DEFAULT_MAX_EXECUTION_SECONDS = 30
DEFAULT_MAX_RESULT_ROWS = 100_000


class ReadOnlyQueries:
    """Runs read-only queries on a client of ``url`` of its own."""

    def __init__(
        self,
        url: str,
        max_execution_seconds: int = DEFAULT_MAX_EXECUTION_SECONDS,
        max_result_rows: int = DEFAULT_MAX_RESULT_ROWS,
    ) -> None:
        self._url = url
        self._session = {
            "max_execution_time": max_execution_seconds,
            "max_result_rows": max_result_rows,
            "result_overflow_mode": "throw",
            # the JSON the protocol carries: numbers as numbers, always valid UTF-8
            "output_format_json_quote_64bit_integers": 0,
            "output_format_json_validate_utf8": 1,
            # last: from here on the session refuses writes and setting changes
            "readonly": 1,
        }
        self._client: Client | None = self._connect()

    def run(self, sql: str) -> QueryResult:
        """The result of ``sql``; QueryError if it is refused or fails."""
        statement = check_read_only(sql)
        client = self._client or self._connect()
        self._client = client
        try:
            body = client.raw_query(statement, fmt="JSONCompact")
        except ClickHouseError as exc:
            # chDB hands what a failed query had output to the next query on the same
            # connection (as a prefix of its result), so a failure costs the connection
            self.close()
            raise QueryError(describe(exc)) from exc
        try:
            document: dict[str, Any] = json.loads(body)
            meta = document["meta"]
            return QueryResult(
                columns=[column["name"] for column in meta],
                types=[column["type"] for column in meta],
                rows=document["data"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            # a server reports an error that strikes mid-result inside the body
            self.close()
            raise QueryError(f"unreadable result: {body[-300:]!r}") from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connect(self) -> Client:
        client = connect(self._url)
        # a server account may be read-only already: with readonly=1 no setting can be
        # changed (nor need be), with readonly=2 all but readonly itself
        profile = client.server_settings.get("readonly")
        already = profile.value if profile is not None else "0"
        try:
            for name, value in self._session.items():
                if already == "1" or (already != "0" and name == "readonly"):
                    continue
                client.set_client_setting(name, value)
        except ClickHouseError as exc:
            client.close()
            raise QueryError(f"cannot make the session read-only: {describe(exc)}") from exc
        except BaseException:
            client.close()
            raise
        return client
