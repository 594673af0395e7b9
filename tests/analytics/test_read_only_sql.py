"""Analysts' SQL stays read-only against quoting tricks, on real chDB.

The attacks run through the chDB owner's query socket (as ``ratewatch sql`` reaches a
running ``ratewatch up``) and through ``ratewatch sql`` opening chDB itself; each must be
refused with one line and leave no file behind, while queries whose strings hold ``;``,
``--`` or ``$$`` keep working.  The lexer is checked against the engine's own parser by a
property test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio.to_thread
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.clickhouse import DECISIONS_TABLE, chdb_url, connect, query_socket_path
from analytics.errors import QueryError
from analytics.query_client import query
from analytics.query_server import QueryServer
from analytics.readonly import connect_read_only, session_settings
from analytics.sqllexer import Kind, tokenize
from analytics.sqltext import OUTSIDE_FUNCTIONS, PURE_TABLE_FUNCTIONS, check_read_only, quote
from analytics.writer import DecisionWriter
from tests.support.chdb_directory import chdb_client
from tests.support.events import decision
from tests.support.paths import REPO

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

OUTFILE = "rw-leak.txt"


def attacks(target: Path) -> list[str]:
    """Queries that would write ``target``, run a second statement or read outside the store."""
    out = quote(str(target))
    return [
        # heredocs hide a quote from a lexer that does not know them
        f"SELECT $$'$$ INTO OUTFILE {out} --'",
        f"SELECT $tag$'$tag$ INTO OUTFILE {out} --'",
        f"SELECT $$'$$; DROP TABLE {DECISIONS_TABLE} --'",
        # comments of every form, nested ones included
        f"SELECT 1 /* a /* nested */ still comment */ INTO OUTFILE {out}",
        f"SELECT 1 // comment\nINTO OUTFILE {out}",
        f"SELECT 1 # comment\nINTO /* x */ OUTFILE {out}",
        f"SELECT 1e--1 INTO OUTFILE {out}",
        # escapes: a backslash or a doubled quote inside a literal
        f"SELECT 'a\\'' INTO OUTFILE {out} --'",
        f"SELECT 'a''b' AS \"x\\\"\" INTO OUTFILE {out}",
        f"SELECT 1 AS `a``b` INTO OUTFILE {out} TRUNCATE",
        f"WITH x AS (SELECT 1) SELECT * FROM x INTO OUTFILE {out} APPEND",
        f"select 1 into\toutfile {out}",
        # a second statement
        f"SELECT ';'; DROP TABLE {DECISIONS_TABLE}",
        f"SELECT 1 -- x\n; DROP TABLE {DECISIONS_TABLE}",
        # files and the network
        "SELECT file('/etc/hostname')",
        "SELECT `file`('/etc/hostname')",
        "SELECT \"file\" ('/etc/hostname')",
        "SELECT FiLe /* */ ('/etc/hostname')",
        "DESCRIBE file('/etc/hostname', 'LineAsString')",
        "DESC TABLE url('http://127.0.0.1:9/', 'CSV', 'a String')",
        "SELECT * FROM s3('http://127.0.0.1:9/b/k', 'CSV', 'a String')",
        "SELECT * FROM remote('127.0.0.1:9', system.one)",
        "SELECT * FROM executable('x.sh', 'TSV', 'a String')",
        "SELECT * FROM mysql('127.0.0.1:9', 'd', 't', 'u', 'p')",
        "SELECT * FROM (SELECT 1) WHERE 1 IN (SELECT * FROM postgresql('h:1', 'd', 't', 'u', 'p'))",
        # quotes the engine reads that an ASCII lexer would not
        f"SELECT ‘'’ INTO OUTFILE {out}",
    ]


LEGITIMATE = [
    ("SELECT ';' AS s", [{"s": ";"}]),
    ("SELECT '--' AS s -- and a comment", [{"s": "--"}]),
    ("SELECT '$$' AS s, $$it's$$ AS h", [{"s": "$$", "h": "it's"}]),
    ("SELECT $q$a;b -- c$q$ AS s;", [{"s": "a;b -- c"}]),
    ("SELECT 'a\\'b' AS s, 'c''d' AS t", [{"s": "a'b", "t": "c'd"}]),
    ("/* leading; */ SELECT 1 /* a /* b */ c */ AS `x;y`", [{"x;y": 1}]),
    ("SELECT 'into outfile' AS s, format('{};{}', 1, 2) AS f", [{"s": "into outfile", "f": "1;2"}]),
    ("SELECT count() AS n FROM numbers(3) # a comment", [{"n": 3}]),
]


@pytest.fixture
def chdb_dir(tmp_path: Path) -> Path:
    return tmp_path / "clickhouse"


@pytest.fixture
def owner(chdb_dir: Path) -> Iterator[Client]:
    with chdb_client(chdb_dir) as client:
        DecisionWriter(client).write([decision(key="user:1")], "seed")
        yield client


@pytest.fixture
async def server(owner: Client, chdb_dir: Path) -> AsyncIterator[QueryServer]:
    async with QueryServer(chdb_url(chdb_dir), query_socket_path(chdb_dir)) as running:
        yield running


def leaks(target: Path) -> list[Path]:
    """Files an INTO OUTFILE of ``target`` (or of its bare name) would have written."""
    places = [target, REPO / target.name, Path.cwd() / target.name]
    return [path for path in places if path.exists()]


async def test_attacks_through_the_query_socket_are_refused(
    server: QueryServer, owner: Client, tmp_path: Path
) -> None:
    target = tmp_path / OUTFILE
    for sql in attacks(target):
        with pytest.raises(QueryError) as refused:
            await anyio.to_thread.run_sync(query, server.socket_path, sql)
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(("read-only: ", "only one statement", "'‘'")), (sql, message)
        assert not leaks(target), sql
    assert owner.query(f"SELECT count() FROM {DECISIONS_TABLE}").result_rows == [(1,)]


@pytest.mark.parametrize(("sql", "rows"), LEGITIMATE)
async def test_strings_with_semicolons_dashes_and_dollars_keep_working(
    server: QueryServer, sql: str, rows: list[dict[str, object]]
) -> None:
    assert await anyio.to_thread.run_sync(query, server.socket_path, sql) == rows


def test_attacks_through_the_cli_are_one_line_errors(owner: Client, tmp_path: Path) -> None:
    owner.close()  # the subprocess opens chDB itself
    target = tmp_path / OUTFILE
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEWATCH_")}
    env["PYTHONPATH"] = str(REPO)
    for sql in [*attacks(target)[:4], attacks(target)[14], attacks(target)[-1]]:
        result = subprocess.run(
            [sys.executable, "-m", "ratewatch", "sql", "--data-dir", str(tmp_path), sql],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 1, (sql, result)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (sql, result.stderr)
        assert lines[0].startswith("Error: "), (sql, result.stderr)
        assert "Traceback" not in result.stderr
        assert not leaks(target), sql

    fine = subprocess.run(
        [sys.executable, "-m", "ratewatch", "sql", "--data-dir", str(tmp_path), LEGITIMATE[2][0]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert fine.returncode == 0, fine.stderr
    assert "it's" in fine.stdout


def test_the_engine_session_refuses_table_functions_by_itself(chdb_dir: Path) -> None:
    # the third guard alone, without the statement check in front of it
    chdb_dir.mkdir(parents=True)
    client = connect_read_only(chdb_url(chdb_dir), session_settings(10, 100))
    try:
        for sql in (
            "SELECT * FROM file('/etc/hostname', 'LineAsString')",
            "SELECT * FROM url('http://127.0.0.1:9/', 'CSV', 'a String')",
            "CREATE TABLE t (a UInt8) ENGINE = Memory",
            "SELECT 1 SETTINGS readonly = 0",
        ):
            with pytest.raises(ClickHouseError, match="READONLY"):
                client.raw_query(sql)
            client.close()
            client = connect_read_only(chdb_url(chdb_dir), session_settings(10, 100))
    finally:
        client.close()


def test_every_table_function_of_the_engine_is_known(chdb_dir: Path) -> None:
    # a new chDB that adds a table function must have it classified before it is allowed
    chdb_dir.mkdir(parents=True)
    client = connect(chdb_url(chdb_dir))
    try:
        names = {
            row[0] for row in client.query("SELECT name FROM system.table_functions").result_rows
        }
    finally:
        client.close()
    assert names <= PURE_TABLE_FUNCTIONS | OUTSIDE_FUNCTIONS, names - PURE_TABLE_FUNCTIONS
    assert not PURE_TABLE_FUNCTIONS & OUTSIDE_FUNCTIONS


# text made of what changes how the rest of a query is read
TRICKY = st.text(alphabet=st.sampled_from(list("'\"`$\\-/*#;!\n ax")), max_size=12)
TAGS = st.sampled_from(["", "t", "a_1"])


@st.composite
def pieces(draw: st.DrawFn, index: int) -> tuple[str, str, Kind, str, object]:
    """One select expression: its text, the token the lexer must find in it (kind, text),
    and the column's name and value the engine must return."""
    text = draw(TRICKY)
    form = draw(st.sampled_from(["string", "doubled", "heredoc", "name", "block", "line"]))
    column = f"c{index}"
    if form == "heredoc":
        tag = f"${draw(TAGS)}$"
        if (text + tag).find(tag) == len(text):  # the first closing tag is the one we add
            literal = f"{tag}{text}{tag}"
            return f"{literal} AS {column}", column, Kind.STRING, literal, text
    if form == "name":
        name = f"{text}#{index}"
        quoted = "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
        return f"{index} AS {quoted}", name, Kind.QUOTED_NAME, quoted, index
    if form == "block" and "/*" not in text and "*/" not in text:
        comment = f"/* {text} */"
        return f"{index} AS {column} {comment}", column, Kind.COMMENT, comment, index
    if form == "line" and "\n" not in text:
        comment = f"-- {text}"
        return f"{index} AS {column} {comment}\n", column, Kind.COMMENT, comment, index
    if form == "doubled":  # a quote inside written twice instead of escaped
        literal = "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    else:
        literal = quote(text)
    return f"{literal} AS {column}", column, Kind.STRING, literal, text


@st.composite
def selects(draw: st.DrawFn) -> list[tuple[str, str, Kind, str, object]]:
    return [draw(pieces(i)) for i in range(draw(st.integers(1, 4)))]


@given(selects())
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_lexer_reads_literals_and_comments_as_the_engine_does(
    engine: Client, parts: list[tuple[str, str, Kind, str, object]]
) -> None:
    sql = "SELECT " + ", ".join(part[0] for part in parts) + ", 0 AS z"
    assert check_read_only(sql) == sql
    found = [(t.kind, t.text) for t in tokenize(sql) if t.kind != Kind.SPACE]
    expected = [(kind, text) for _, _, kind, text, _ in parts]
    assert [token for token in found if token in expected] == expected
    assert sum(kind in (Kind.STRING, Kind.QUOTED_NAME, Kind.COMMENT) for kind, _ in found) == len(
        parts
    )
    result = engine.query(sql)
    assert list(result.column_names) == [part[1] for part in parts] + ["z"]
    assert list(result.result_rows[0]) == [part[4] for part in parts] + [0]


@pytest.fixture
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    path = tmp_path_factory.mktemp("engine") / "clickhouse"
    path.mkdir()
    client = connect_read_only(chdb_url(path), session_settings(10, 100))
    yield client
    client.close()
