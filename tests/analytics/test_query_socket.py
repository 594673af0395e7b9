"""The chDB owner's query socket: read-only queries for other processes, on real chDB.

The server runs in the test's event loop with its own chDB client; the blocking client
calls run in a worker thread, as they would in another process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from clickhouse_connect.driver.client import Client

from analytics.clickhouse import DECISIONS_TABLE, chdb_url, query_socket_path
from analytics.errors import AnalyticsError, ConfigError, QueryError
from analytics.query_client import answers, query, query_result
from analytics.query_server import QueryServer
from analytics.sqltext import check_read_only, split_statements
from analytics.writer import DecisionWriter
from stream.events import DecisionEvent
from tests.support.chdb_directory import chdb_client
from tests.support.events import decision

# anyio marked at collection: parametrized async tests lose their parameters otherwise
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def chdb_dir(tmp_path: Path) -> Path:
    return tmp_path / "clickhouse"


@pytest.fixture
def owner(chdb_dir: Path) -> Iterator[Client]:
    """The owning process's writer client, with three decisions written."""
    with chdb_client(chdb_dir) as client:
        DecisionWriter(client).write(
            [decision(key="user:1"), decision(key="user:1"), decision(key="user:2", allowed=False)],
            "seed",
        )
        yield client


@pytest.fixture
async def server(owner: Client, chdb_dir: Path) -> AsyncIterator[QueryServer]:
    async with QueryServer(chdb_url(chdb_dir), query_socket_path(chdb_dir)) as running:
        yield running


async def ask(server: QueryServer, sql: str) -> list[dict[str, Any]]:
    return await anyio.to_thread.run_sync(query, server.socket_path, sql)


async def test_the_owner_answers_select_queries(server: QueryServer) -> None:
    rows = await ask(
        server,
        f"SELECT key, count() AS n, countIf(allowed) AS ok FROM {DECISIONS_TABLE}"
        " GROUP BY key ORDER BY key",
    )
    assert rows == [{"key": "user:1", "n": 2, "ok": 2}, {"key": "user:2", "n": 1, "ok": 0}]

    result = await anyio.to_thread.run_sync(
        query_result,
        server.socket_path,
        "SELECT toUUID('0b7e3f3c-4a57-4a8e-9a7c-1c2d3e4f5a6b') AS u, nan AS f",
    )
    assert result.columns == ["u", "f"]
    assert result.types == ["UUID", "Float64"]
    assert result.rows == [["0b7e3f3c-4a57-4a8e-9a7c-1c2d3e4f5a6b", None]]

    for sql in (
        "SHOW TABLES FROM ratewatch",
        f"DESCRIBE TABLE {DECISIONS_TABLE}",
        "EXPLAIN SELECT 1",
        "WITH 2 AS x SELECT x * 3 AS y -- a comment; not a statement",
    ):
        assert await ask(server, sql)


@pytest.mark.parametrize(
    "sql",
    [
        f"INSERT INTO {DECISIONS_TABLE} SELECT * FROM {DECISIONS_TABLE}",
        f"DROP TABLE {DECISIONS_TABLE}",
        f"TRUNCATE TABLE {DECISIONS_TABLE}",
        f"ALTER TABLE {DECISIONS_TABLE} DELETE WHERE 1",
        "CREATE TABLE ratewatch.x (a UInt8) ENGINE = Memory",
        "SET readonly = 0",
        f"OPTIMIZE TABLE {DECISIONS_TABLE} FINAL",
        f"SELECT 1; DROP TABLE {DECISIONS_TABLE}",
        f"SELECT 1 /* ; */; DROP TABLE {DECISIONS_TABLE} -- ",
        "SELECT 1 INTO OUTFILE 'leak.csv'",
        "",
    ],
)
async def test_statements_that_do_more_than_read_are_refused(
    server: QueryServer, owner: Client, sql: str
) -> None:
    with pytest.raises(QueryError, match=r"^(read-only: |only one statement|empty query)"):
        await ask(server, sql)
    assert owner.query(f"SELECT count() FROM {DECISIONS_TABLE}").result_rows == [(3,)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 SETTINGS readonly = 0",
        "SELECT 1 SETTINGS max_execution_time = 1000",
    ],
)
async def test_the_engine_session_is_read_only_too(server: QueryServer, sql: str) -> None:
    # these pass the statement check; readonly=1 on the server's session stops them
    with pytest.raises(QueryError, match="READONLY"):
        await ask(server, sql)


async def test_a_failing_query_is_a_one_line_error_and_the_server_goes_on(
    server: QueryServer,
) -> None:
    with pytest.raises(QueryError) as raised:
        await ask(server, f"SELECT nope FROM {DECISIONS_TABLE}")
    assert "UNKNOWN_IDENTIFIER" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert await ask(server, "SELECT 1 AS one") == [{"one": 1}]

    # a query that fails after it has output rows: chDB would hand those rows to the next
    # query on the same connection, so the server must not reuse it
    with pytest.raises(QueryError, match="FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"):
        await ask(
            server,
            "SELECT number, throwIf(number = 70000) FROM system.numbers",
        )
    assert await ask(server, "SELECT 2 AS two") == [{"two": 2}]


async def test_the_writer_keeps_writing_beside_the_read_only_session(
    server: QueryServer, owner: Client
) -> None:
    more: list[DecisionEvent] = [decision(key=f"user:{i}") for i in range(10)]
    DecisionWriter(owner).write(more, "more")
    rows = await ask(server, f"SELECT count() AS n FROM {DECISIONS_TABLE}")
    assert rows == [{"n": 13}]


async def test_one_server_per_socket_and_a_leftover_file_is_replaced(
    owner: Client, chdb_dir: Path
) -> None:
    path = query_socket_path(chdb_dir)
    async with QueryServer(chdb_url(chdb_dir), path):
        assert await anyio.to_thread.run_sync(answers, path)
        with pytest.raises(ConfigError, match="already answers"):
            await QueryServer(chdb_url(chdb_dir), path).start()
    assert not path.exists()
    assert not answers(path)

    # a socket file left by a process that died
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(path))
    assert path.exists()
    assert not answers(path)
    async with QueryServer(chdb_url(chdb_dir), path) as restarted:
        assert await ask(restarted, "SELECT 2 AS two") == [{"two": 2}]
        assert path.stat().st_mode & 0o777 == 0o600


async def test_queries_run_off_the_event_loop_and_are_bounded(
    owner: Client, chdb_dir: Path
) -> None:
    path = query_socket_path(chdb_dir)
    async with QueryServer(chdb_url(chdb_dir), path, max_execution_seconds=1):
        slow = asyncio.ensure_future(
            anyio.to_thread.run_sync(
                functools.partial(query, path, "SELECT count() FROM system.numbers", 30)
            )
        )
        # while chDB works on the slow query, the loop still answers a bad request
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"this is not json\n")
        await writer.drain()
        answer = json.loads(await asyncio.wait_for(reader.readline(), 30))
        assert answer == {"ok": False, "error": "a request is one JSON object per line"}
        assert not slow.done()
        with pytest.raises(QueryError, match="TIMEOUT_EXCEEDED"):
            await slow

        # several requests on one connection, answered in order
        for request in (
            {"sql": "SELECT 1 AS a"},
            {"sql": 1},
            {"nosql": "x"},
            {"sql": "SELECT 2 AS a"},
        ):
            writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        answers_ = [json.loads(await reader.readline()) for _ in range(4)]
        assert [a["ok"] for a in answers_] == [True, False, False, True], answers_
        assert answers_[3]["rows"] == [[2]]
        writer.close()
        await writer.wait_closed()

        # a client gives up after its own timeout
        with pytest.raises(AnalyticsError, match="no answer"):
            await anyio.to_thread.run_sync(
                functools.partial(query, path, "SELECT count() FROM system.numbers", 0.3)
            )


def test_nothing_answering_is_an_analytics_error(tmp_path: Path) -> None:
    path = tmp_path / "query.sock"
    assert not answers(path)
    with pytest.raises(AnalyticsError, match="cannot query through"):
        query(path, "SELECT 1")


def test_a_socket_path_too_long_is_refused(owner: Client, chdb_dir: Path) -> None:
    path = chdb_dir / ("x" * 120) / "query.sock"

    async def start() -> None:
        await QueryServer(chdb_url(chdb_dir), path).start()

    with pytest.raises(ConfigError, match="too long"):
        asyncio.run(start())


@pytest.mark.parametrize(
    ("sql", "statement"),
    [
        ("SELECT ';' AS semicolon", "SELECT ';' AS semicolon"),
        ("SELECT 1 -- ; DROP TABLE x", "SELECT 1"),
        ("/* a; b */ SELECT 1;", "SELECT 1"),
        ("SELECT 1 /* in; */ + 2 # end", "SELECT 1 /* in; */ + 2"),
        ("(SELECT 1) UNION ALL (SELECT 2)", "(SELECT 1) UNION ALL (SELECT 2)"),
        ("select 'into outfile', \"format\" FROM t", "select 'into outfile', \"format\" FROM t"),
        ("DESC ratewatch.decisions", "DESC ratewatch.decisions"),
    ],
)
def test_read_only_statements_pass_the_check(sql: str, statement: str) -> None:
    assert check_read_only(sql) == statement


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT 'it''s'; DROP TABLE x", "only one statement"),
        ("SELECT 1 # x\n; DROP TABLE x", "only one statement"),
        ("SELECT 'unterminated", "unterminated '"),
        ("select 1 into   outfile '/tmp/x'", "INTO OUTFILE is refused"),
        ("SELECT 1 FORMAT CSV", "FORMAT clause"),
        ("-- nothing", "empty query"),
        ("KILL QUERY WHERE 1", "KILL is refused"),
    ],
)
def test_other_statements_fail_the_check(sql: str, reason: str) -> None:
    with pytest.raises(QueryError, match=re.escape(reason)):
        check_read_only(sql)


def test_migration_scripts_split_into_statements() -> None:
    script = "-- header; with a semicolon\nCREATE TABLE a (s String DEFAULT ';');\n\n;SELECT 1"
    assert split_statements(script) == [
        "-- header; with a semicolon\nCREATE TABLE a (s String DEFAULT ';')",
        "SELECT 1",
    ]
