"""chDB sized for a small box: every value of analytics/chdb_config.py is in effect on the
clients ``connect`` opens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from analytics.chdb_config import (
    CONFIG_FILE_NAME,
    ENGINE_SETTINGS,
    MERGE_TREE_SETTINGS,
    SESSION_SETTINGS,
    config_xml,
    write_config,
)
from analytics.clickhouse import chdb_url, connect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def chdb_dir(tmp_path: Path) -> Path:
    return tmp_path / "clickhouse"


@pytest.fixture
def client(chdb_dir: Path) -> Iterator[Client]:
    client = connect(chdb_url(chdb_dir))
    yield client
    client.close()


def settings_of(client: Client, table: str, names: list[str]) -> dict[str, str]:
    rows = client.query(
        f"SELECT name, value FROM {table} WHERE name IN {{names:Array(String)}}",
        parameters={"names": names},
    ).result_rows
    return {name: value for name, value in rows}


def session_settings(client: Client) -> dict[str, str]:
    return {
        name: str(client.query(f"SELECT getSetting('{name}')").result_rows[0][0])
        for name in SESSION_SETTINGS
    }


def as_text(settings: dict[str, int]) -> dict[str, str]:
    return {name: str(value) for name, value in settings.items()}


def test_the_engine_runs_with_the_pools_and_caches_stated(client: Client) -> None:
    assert settings_of(client, "system.server_settings", list(ENGINE_SETTINGS)) == as_text(
        ENGINE_SETTINGS
    )
    assert settings_of(client, "system.merge_tree_settings", list(MERGE_TREE_SETTINGS)) == (
        as_text(MERGE_TREE_SETTINGS)
    )


def test_every_client_has_the_session_settings(client: Client, chdb_dir: Path) -> None:
    assert session_settings(client) == as_text(SESSION_SETTINGS)
    # sessions are per client: a second one on the running engine gets them as well
    second = connect(chdb_url(chdb_dir))
    try:
        assert session_settings(second) == as_text(SESSION_SETTINGS)
    finally:
        second.close()


def test_tables_take_the_merge_tree_defaults(client: Client) -> None:
    client.command("CREATE TABLE default.t (n UInt64) ENGINE = MergeTree ORDER BY n")
    (threshold,) = client.query(
        "SELECT getMergeTreeSetting('concurrent_part_removal_threshold')"
    ).result_rows[0]
    assert threshold == MERGE_TREE_SETTINGS["concurrent_part_removal_threshold"]


def test_the_config_file_is_written_once_and_replaced_when_stale(tmp_path: Path) -> None:
    path = write_config(tmp_path / "new")  # the directory is created
    assert path == tmp_path / "new" / CONFIG_FILE_NAME
    assert path.read_text(encoding="utf-8") == config_xml()
    written = path.stat().st_mtime_ns
    assert write_config(tmp_path / "new").stat().st_mtime_ns == written
    path.write_text("<clickhouse/>", encoding="utf-8")
    assert write_config(tmp_path / "new").read_text(encoding="utf-8") == config_xml()
    assert [p.name for p in path.parent.iterdir()] == [CONFIG_FILE_NAME]  # no leftovers
