"""Fixtures of the stream tests: a migrated chDB directory of the test's own for what the
outboxes' drains store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from tests.support.chdb_directory import chdb_client


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[Client]:
    with chdb_client(tmp_path / "ch") as client:
        yield client
