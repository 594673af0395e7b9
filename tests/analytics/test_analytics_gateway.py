"""The limiter's analytics gateway, and the query socket's erase_user op, on real chDB.

A QueryServer runs in the test's event loop on the module's chDB directory, as the pipeline
worker runs it; SocketAnalytics talks to it over the socket as the limiter would.
ClientAnalytics runs on chDB in this process (clickhouse-connect takes chdb:// URLs too).
Tests are isolated by tenant.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from analytics.clickhouse import DECISIONS_TABLE, chdb_url, query_socket_path
from analytics.erasure import summary_sql
from analytics.errors import AnalyticsError, ConfigError, QueryError
from analytics.gateway import ClientAnalytics, SocketAnalytics, open_analytics
from analytics.query_server import QueryServer
from analytics.sqltext import quote
from tests.support.chdb_directory import chdb_client
from tests.support.personal_data import INCIDENT_ROWS, USER, seed
from tests.support.servers import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

# tests.support.personal_data.seed: 9 decisions of USER, in 5 rows of each rollup, 3 alerts
# and INCIDENT_ROWS rows of incident history
ERASED = {
    "decisions": 9,
    "decisions_per_minute": 5,
    "decisions_per_hour": 5,
    "decisions_per_day": 5,
    "alerts": 3,
    "incidents": INCIDENT_ROWS,
}
NOTHING = dict.fromkeys(ERASED, 0)


@pytest.fixture(scope="module")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway") / "clickhouse"


@pytest.fixture(scope="module")
def owner(chdb_dir: Path) -> Iterator[Client]:
    """The owning process's writer client, on a migrated store."""
    with chdb_client(chdb_dir) as client:
        yield client


@pytest.fixture
async def server(owner: Client, chdb_dir: Path) -> AsyncIterator[QueryServer]:
    async with QueryServer(chdb_url(chdb_dir), query_socket_path(chdb_dir)) as running:
        yield running


def count(owner: Client, tenant: str) -> int:
    sql = f"SELECT count() FROM {DECISIONS_TABLE} WHERE tenant = {quote(tenant)}"
    return int(owner.query(sql).result_rows[0][0])


async def test_the_socket_answers_queries_and_erases_a_user(
    server: QueryServer, owner: Client, tenant: str
) -> None:
    seed(owner, tenant)
    analytics = open_analytics(chdb_url(server.socket_path.parent))
    assert isinstance(analytics, SocketAnalytics)
    assert analytics.description == f"query socket {server.socket_path}"

    before = await analytics.query(summary_sql(tenant, USER))
    assert before.dicts()[0]["total_requests"] == 9

    deleted = await analytics.erase_user(tenant, USER)

    assert deleted == ERASED
    after = (await analytics.query(summary_sql(tenant, USER))).dicts()[0]
    assert after["total_requests"] == after["decisions_per_day_rows"] == 0
    assert after["data_retention_days"] == 30
    assert count(owner, tenant) == 18 - 9
    # the read-only session is untouched by the writable one beside it
    with pytest.raises(QueryError, match="read-only"):
        await analytics.query(f"DELETE FROM {DECISIONS_TABLE} WHERE 1")
    assert await analytics.erase_user(tenant, USER) == NOTHING
    await analytics.close()


async def test_bad_requests_get_one_error_line_and_the_connection_goes_on(
    server: QueryServer, owner: Client, tenant: str
) -> None:
    seed(owner, tenant)
    reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
    requests: list[tuple[dict[str, Any], str]] = [
        ({"op": "drop_everything"}, "unknown op \"drop_everything\"; the one op is 'erase_user'"),
        ({"op": 5}, "unknown op 5; the one op is 'erase_user'"),
        ({"op": "erase_user", "tenant": tenant}, "user_id must be a non-empty string"),
        ({"op": "erase_user", "tenant": 7, "user_id": USER}, "tenant must be a non-empty string"),
        ({"op": "erase_user", "tenant": tenant, "user_id": ""}, "user_id must be a non-empty"),
        ({"op": "erase_user", "tenant": tenant, "user_id": ["x"]}, "user_id must be a non-empty"),
        (
            {"op": "erase_user", "tenant": tenant, "user_id": "u" * 513},
            "user_id is longer than 512 characters",
        ),
        (
            {"op": "erase_user", "tenant": tenant, "user_id": "\ud800"},
            "user_id is not valid Unicode (it holds a lone surrogate)",
        ),
        ({"op": None, "sql": 3}, 'a request needs "sql": a string'),
    ]
    for request, _ in requests:
        writer.write(json.dumps(request).encode() + b"\n")
    writer.write(json.dumps({"sql": "SELECT 1 AS a"}).encode() + b"\n")
    await writer.drain()
    for request, error in requests:
        line = await asyncio.wait_for(reader.readline(), 30)
        assert line.count(b"\n") == 1
        assert line.endswith(b"\n")
        answer = json.loads(line)
        assert answer["ok"] is False, request
        assert answer["error"].startswith(error), (request, answer)
    assert json.loads(await asyncio.wait_for(reader.readline(), 30))["rows"] == [[1]]
    writer.close()
    await writer.wait_closed()

    # nothing was erased, and the server still erases
    assert count(owner, tenant) == 18
    analytics = SocketAnalytics(server.socket_path)
    with pytest.raises(QueryError, match="user_id must be a non-empty string"):
        await analytics.erase_user(tenant, "")
    assert (await analytics.erase_user(tenant, USER))["decisions"] == 9


async def test_a_hostile_user_id_travels_the_socket_intact(
    server: QueryServer, owner: Client, tenant: str
) -> None:
    hostile = "u'\\\"\n\0%_; DROP TABLE ratewatch.decisions --"
    owner.command(
        f"INSERT INTO {DECISIONS_TABLE} (ts, tenant, key, user_id) VALUES"
        f" (now64(3), {quote(tenant)}, {quote(hostile + ':x')}, ''),"
        f" (now64(3), {quote(tenant)}, 'other', {quote(hostile)}),"
        f" (now64(3), {quote(tenant)}, 'other', 'u')"
    )
    analytics = SocketAnalytics(server.socket_path)
    summary = (await analytics.query(summary_sql(tenant, hostile))).dicts()[0]
    assert (summary["total_keys"], summary["total_requests"]) == (2, 2)

    assert (await analytics.erase_user(tenant, hostile))["decisions"] == 2

    rows = owner.query(
        f"SELECT key, user_id FROM {DECISIONS_TABLE} WHERE tenant = {quote(tenant)}"
    ).result_rows
    assert [tuple(row) for row in rows] == [("other", "u")]


async def test_the_client_transport_queries_and_erases(
    owner: Client, chdb_dir: Path, tenant: str
) -> None:
    seed(owner, tenant)
    analytics = ClientAnalytics(chdb_url(chdb_dir))
    try:
        assert analytics.description == f"ClickHouse at {chdb_url(chdb_dir)}"
        summary = await analytics.query(summary_sql(tenant, USER))
        assert summary.dicts()[0]["total_requests"] == 9
        with pytest.raises(QueryError, match="read-only"):
            await analytics.query(f"DROP TABLE {DECISIONS_TABLE}")
        with pytest.raises(QueryError, match="UNKNOWN_IDENTIFIER"):
            await analytics.query("SELECT nope")
        assert (await analytics.query("SELECT 2 AS two")).rows == [[2]]

        assert await analytics.erase_user(tenant, USER) == ERASED

        after = (await analytics.query(summary_sql(tenant, USER))).dicts()[0]
        assert after["total_requests"] == after["decisions_per_minute_rows"] == 0
        assert count(owner, tenant) == 18 - 9
        with pytest.raises(QueryError, match="tenant must be a non-empty string"):
            await analytics.erase_user("", USER)
        assert await analytics.erase_user(tenant, USER) == NOTHING
    finally:
        await analytics.close()


async def test_a_missing_socket_fails_at_once(tmp_path: Path) -> None:
    analytics = SocketAnalytics(tmp_path / "query.sock", timeout=60, erase_timeout=60)
    # far below the transport's own timeouts: the failure must not wait for them
    async with asyncio.timeout(10):
        with pytest.raises(AnalyticsError, match="cannot query through") as raised:
            await analytics.query("SELECT 1")
        assert not isinstance(raised.value, QueryError)
        with pytest.raises(AnalyticsError, match="cannot query through"):
            await analytics.erase_user("t", "u")


async def test_a_slow_answer_is_an_analytics_error(owner: Client, chdb_dir: Path) -> None:
    path = query_socket_path(chdb_dir)
    async with QueryServer(chdb_url(chdb_dir), path, max_execution_seconds=1):
        analytics = SocketAnalytics(path, timeout=0.3)
        with pytest.raises(AnalyticsError, match=r"no answer from query socket .* within 0\.3s"):
            await analytics.query("SELECT count() FROM system.numbers")


def test_open_analytics_picks_the_transport_by_url() -> None:
    socket_analytics = open_analytics("chdb:///var/lib/ratewatch/clickhouse")
    assert isinstance(socket_analytics, SocketAnalytics)
    assert socket_analytics.socket_path == Path("/var/lib/ratewatch/clickhouse/query.sock")

    client_analytics = open_analytics("https://reader:s3cret@ch.example:8443")
    assert isinstance(client_analytics, ClientAnalytics)
    assert client_analytics.description == "ClickHouse at https://reader:***@ch.example:8443"
    asyncio.run(client_analytics.close())  # never connected: nothing to wait for

    for bad in ("ftp://host", "chdb://relative/dir", "http://"):
        with pytest.raises(ConfigError):
            open_analytics(bad)


def test_importing_the_gateway_loads_no_clickhouse_client() -> None:
    check = (
        "import sys, analytics.gateway, analytics.erasure, analytics.query_client;"
        " loaded = {'clickhouse_connect', 'chdb', 'polars'} & set(sys.modules);"
        " assert not loaded, loaded"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


async def test_an_unreachable_server_is_an_analytics_error() -> None:
    analytics = ClientAnalytics(f"http://default:pw@127.0.0.1:{free_port()}")
    try:
        async with asyncio.timeout(60):
            with pytest.raises(AnalyticsError) as refused_query:
                await analytics.query("SELECT 1")
            with pytest.raises(AnalyticsError) as refused_erasure:
                await analytics.erase_user("t", "u")
        for raised in (refused_query, refused_erasure):
            assert not isinstance(raised.value, QueryError)
            assert "pw" not in str(raised.value)
    finally:
        await analytics.close()
    with pytest.raises(AnalyticsError, match="closed"):
        await analytics.query("SELECT 1")
