"""The errors of the analytics package: ClickHouse driver errors are wrapped once, here."""

from __future__ import annotations


class AnalyticsError(Exception):
    """Base of everything this package raises on purpose; the message is one line."""


class ConfigError(AnalyticsError):
    """A setting (a ClickHouse URL, a socket path) is unusable; the message quotes it."""


class MigrationError(AnalyticsError):
    """The schema cannot be brought up to date (a changed migration file, a failed statement)."""


class QueryError(AnalyticsError):
    """A query failed or was refused (not read-only, a syntax error, a timeout)."""


class InvalidEvents(AnalyticsError):
    """Events of a batch that no ClickHouse column can hold; ``indices`` says which ones,
    so a consumer can dead-letter them and write the rest."""

    def __init__(self, message: str, indices: list[int]) -> None:
        super().__init__(message)
        self.indices = indices
