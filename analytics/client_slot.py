"""A ClickHouse client that is replaced after a failed statement.

A chDB connection may answer the statement after a failed one with that one's leftover
output, so after any failure the client is closed and, when a way to ``reconnect`` was
given, the next statement gets a new one.  One slot belongs to one thread, as chDB's
connections do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from analytics.clickhouse import describe
from analytics.errors import AnalyticsError

T = TypeVar("T")


class ClientSlot:
    """``owner`` names the user of the client in errors ("the event store")."""

    def __init__(
        self, client: Client, owner: str, *, reconnect: Callable[[], Client] | None = None
    ) -> None:
        self._client: Client | None = client
        self._owner = owner
        self._reconnect = reconnect

    @property
    def client(self) -> Client | None:
        """The client the next statement runs on; None after a failure (until reconnected)."""
        return self._client

    def run(
        self,
        call: Callable[[Client], T],
        *,
        failure: str = "",
        passthrough: tuple[type[Exception], ...] = (),
    ) -> T:
        """``call(client)``; a ClickHouse error becomes AnalyticsError, prefixed with
        ``failure``.  ``passthrough`` exceptions are about the data, not the connection:
        raised as they are, and the client kept."""
        client = self._client
        if client is None:
            if self._reconnect is None:
                raise AnalyticsError(f"{self._owner}'s ClickHouse client is closed")
            client = self._client = self._reconnect()
        try:
            return call(client)
        except passthrough:
            raise
        except Exception as exc:
            if self._reconnect is not None:
                self._client = None
                with contextlib.suppress(Exception):
                    client.close()
            if isinstance(exc, ClickHouseError):
                reason = describe(exc)
                raise AnalyticsError(f"{failure}: {reason}" if failure else reason) from exc
            raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
