"""Analysts' queries: one read-only statement at a time, on a client that cannot write.

Three guards, each enough for what it covers:

1. ``check_read_only`` reads the text with ClickHouse's lexing rules and refuses anything
   but a single SELECT/WITH/SHOW/DESCRIBE/EXPLAIN, INTO OUTFILE (which chDB executes even in
   read-only mode) and every function that reads files or reaches the network (the
   ``file()`` function reads any file in a read-only session, ``DESCRIBE file(…)`` too);
2. the engine's own parser: ``formatQuerySingleLine`` gives the statement back as ClickHouse
   understood it (one line, comments gone, every literal in one quoting style), and that
   text must pass the same check, so a difference between the two lexers cannot hide a
   clause;
3. the client's session is switched to ``readonly = 1`` (with ``allow_ddl = 0``) after the
   limits are set, so no query can write, create, drop, change a setting (``SETTINGS
   readonly = 0`` included) or call a table function such as ``file()`` or ``url()``.  On
   chDB the setting lives on the client's own connection handle, so a writer on the same
   engine is not affected; on a server clickhouse-connect sends it with every request.

After a failed query the client is replaced: chDB 4.4 prepends whatever a failed query had
already output to the next result on the same connection, which would turn the next answer
into garbage or, worse, into plausible wrong rows.
"""

from __future__ import annotations

import json
import re
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from analytics.clickhouse import connect, describe
from analytics.errors import QueryError
from analytics.query_client import QueryResult
from analytics.sqltext import check_read_only, quote

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
        self._session = session_settings(max_execution_seconds, max_result_rows)
        self._client: Client | None = connect_read_only(url, self._session)

    def run(self, sql: str) -> QueryResult:
        """The result of ``sql``; QueryError if it is refused or fails."""
        statement = check_read_only(sql)
        client = self._client or connect_read_only(self._url, self._session)
        self._client = client
        try:
            check_read_only(_as_parsed(client, statement))
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


def session_settings(max_execution_seconds: int, max_result_rows: int) -> dict[str, Any]:
    """The settings of a read-only session, in the order they must be set."""
    return {
        "max_execution_time": max_execution_seconds,
        "max_result_rows": max_result_rows,
        "result_overflow_mode": "throw",
        # the JSON the protocol carries: numbers as numbers, always valid UTF-8
        "output_format_json_quote_64bit_integers": 0,
        "output_format_json_validate_utf8": 1,
        "allow_ddl": 0,
        # last: from here on the session refuses writes and setting changes
        "readonly": 1,
    }


def connect_read_only(url: str, session: dict[str, Any]) -> Client:
    """A client of ``url`` whose session has ``session`` set (``session_settings``)."""
    client = connect(url)
    # a server account may be read-only already: with readonly=1 no setting can be
    # changed (nor need be), with readonly=2 all but readonly itself
    profile = client.server_settings.get("readonly")
    already = profile.value if profile is not None else "0"
    try:
        for name, value in session.items():
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


def _as_parsed(client: Client, statement: str) -> str:
    """``statement`` as the engine's parser read it, on one line; its syntax error if none."""
    try:
        body = client.raw_query(
            f"SELECT formatQuerySingleLine({quote(statement)})", fmt="TabSeparatedRaw"
        )
    except ClickHouseError as exc:
        # the error is the statement's own: say so without the wrapping query
        message = re.sub(
            r"\s*In scope SELECT formatQuerySingleLine\(.*?(?=\s*\([A-Z_]+\)$|$)", "", describe(exc)
        )
        raise ClickHouseError(message) from exc
    return body.decode("utf-8", "replace").rstrip("\n")
