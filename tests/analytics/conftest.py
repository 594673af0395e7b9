"""Fixtures of the analytics tests: a chDB directory of the test's own, empty (``bare``) or
migrated (``clickhouse``, the same client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from analytics.migrate import migrate
from tests.support.chdb_directory import chdb_client


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Client]:
    """A client of an empty chDB directory of this test's own."""
    with chdb_client(tmp_path / "clickhouse", migrated=False) as client:
        yield client


@pytest.fixture
def clickhouse(bare: Client) -> Client:
    migrate(bare)
    return bare
