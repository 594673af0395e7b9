"""``ratewatch migrate`` and ``ratewatch sql`` as real processes, on real chDB.

A process can open a chDB directory only while no other process has it, so the tests close
their own clients before a subprocess opens chDB, and keep them open (with a query server)
to show that ``ratewatch sql`` then goes through the socket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from analytics.clickhouse import chdb_url, connect, query_socket_path
from analytics.migrate import migrate
from analytics.query_server import QueryServer
from analytics.writer import DecisionWriter
from tests.support.events import decision
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(120)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEWATCH_")}
    return {**env, **extra}


def ratewatch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratewatch", *args],
        cwd=REPO,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a user error prints, after checking it is the only one."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def seed(data_dir: Path) -> None:
    client = connect(chdb_url(data_dir / "clickhouse"))
    try:
        migrate(client)
        DecisionWriter(client).write(
            [decision(key="user:1"), decision(key="user:1"), decision(key="user:2", allowed=False)],
            "seed",
        )
    finally:
        client.close()


def test_migrate_creates_the_schema_once_and_sets_the_retention(tmp_path: Path) -> None:
    first = ratewatch("migrate", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "0001_decisions.sql, 0002_rollups.sql" in first.stdout
    assert "Retention: 30 days" in first.stdout

    again = ratewatch("migrate", "--retention-days", "45", RATEWATCH_DATA_DIR=str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    assert "Retention: 45 days" in again.stdout

    shown = ratewatch(
        "sql",
        "--data-dir",
        str(tmp_path),
        "--format",
        "json",
        "SHOW CREATE TABLE ratewatch.decisions",
    )
    assert shown.returncode == 0, shown.stderr
    statement = json.loads(shown.stdout)["statement"]
    assert "TTL ts + toIntervalDay(45)" in statement


def test_sql_opens_chdb_itself_when_no_process_owns_it(tmp_path: Path) -> None:
    seed(tmp_path)
    sql = (
        "SELECT key, count() AS n, countIf(NOT allowed) AS denied FROM ratewatch.decisions"
        " GROUP BY key ORDER BY key"
    )

    table = ratewatch("sql", "--data-dir", str(tmp_path), sql)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "key     n  denied",
        "------  -  ------",
        "user:1  2  0",
        "user:2  1  1",
    ]
    assert "(2 rows)" in table.stderr

    as_json = ratewatch("sql", "--format", "json", sql, RATEWATCH_DATA_DIR=str(tmp_path))
    assert as_json.returncode == 0, as_json.stderr
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"key": "user:1", "n": 2, "denied": 0},
        {"key": "user:2", "n": 1, "denied": 1},
    ]


def test_bad_or_writing_sql_is_a_one_line_error(tmp_path: Path) -> None:
    seed(tmp_path)
    unknown = error_line(
        ratewatch("sql", "--data-dir", str(tmp_path), "SELECT nope FROM ratewatch.decisions")
    )
    assert "UNKNOWN_IDENTIFIER" in unknown
    syntax = error_line(ratewatch("sql", "--data-dir", str(tmp_path), "SELECT FROM WHERE"))
    assert "SYNTAX_ERROR" in syntax
    drop = error_line(
        ratewatch("sql", "--data-dir", str(tmp_path), "DROP TABLE ratewatch.decisions")
    )
    assert "read-only: DROP is refused" in drop

    missing = error_line(ratewatch("sql", "--data-dir", str(tmp_path / "nothing"), "SELECT 1"))
    assert "no analytics data" in missing
    relative = error_line(ratewatch("sql", "--clickhouse-url", "chdb://relative/dir", "SELECT 1"))
    assert "chdb:///absolute/path" in relative
    scheme = error_line(ratewatch("migrate", "--clickhouse-url", "mysql://u:secret@db:3306"))
    assert "mysql://u:***@db:3306" in scheme
    assert "secret" not in scheme


async def test_sql_asks_the_process_that_owns_chdb(tmp_path: Path) -> None:
    seed(tmp_path)
    chdb_dir = tmp_path / "clickhouse"
    owner = connect(chdb_url(chdb_dir))
    try:
        async with QueryServer(chdb_url(chdb_dir), query_socket_path(chdb_dir)):
            # this process holds chDB now: a subprocess could not open it, only ask
            DecisionWriter(owner).write([decision(key="user:3")], "while-running")
            result = await anyio.run_process(
                [
                    sys.executable,
                    "-m",
                    "ratewatch",
                    "sql",
                    "--format",
                    "json",
                    "SELECT count() AS n FROM ratewatch.decisions",
                ],
                cwd=REPO,
                env=cli_env(RATEWATCH_DATA_DIR=str(tmp_path)),
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == {"n": 4}

            refused = await anyio.run_process(
                [
                    sys.executable,
                    "-m",
                    "ratewatch",
                    "sql",
                    "--data-dir",
                    str(tmp_path),
                    "INSERT INTO ratewatch.decisions SELECT * FROM ratewatch.decisions",
                ],
                cwd=REPO,
                env=cli_env(),
                check=False,
            )
            assert refused.returncode == 1
            assert refused.stderr.decode().strip().startswith("Error: read-only: INSERT")

            busy = await anyio.run_process(
                [sys.executable, "-m", "ratewatch", "migrate", "--data-dir", str(tmp_path)],
                cwd=REPO,
                env=cli_env(),
                check=False,
            )
            assert busy.returncode == 1
            assert "open in a running RateWatch" in busy.stderr.decode()
    finally:
        owner.close()
