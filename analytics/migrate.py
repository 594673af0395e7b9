"""Schema migrations: the versioned SQL files in ``migrations/``, applied once each, in order.

The same files run on chDB and on a ClickHouse server.  Every applied file is recorded in
``ratewatch.schema_migrations`` with its checksum, so running ``migrate`` again applies only
new files, and a file edited after it was applied is refused rather than silently diverging
from the databases it already built.  Statements must be idempotent (``IF NOT EXISTS``):
a migration interrupted half-way is not recorded and runs again in full.

Templates: ``{retention_days}`` and the rollups' retentions are filled in at apply time and
are not part of the checksum; changing ``retention_days`` later alters the tables' TTLs.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from analytics.clickhouse import (
    DATABASE,
    DECISIONS_TABLE,
    MIGRATIONS_TABLE,
    ROLLUP_TABLES,
    TENANT_ROLLUP_TABLES,
    describe,
)
from analytics.errors import ConfigError, MigrationError
from analytics.sqltext import split_statements, strip_comments

logger = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 30
MIN_HOUR_RETENTION_DAYS = 90
MIN_DAY_RETENTION_DAYS = 730

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PARAMETER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_TTL_DAYS = re.compile(r"\bTTL \w+ \+ toIntervalDay\((\d+)\)")

# table -> (TTL column, template parameter); the CREATE statements say the same
_TTLS = {
    DECISIONS_TABLE: ("ts", "retention_days"),
    ROLLUP_TABLES["minute"]: ("bucket", "minute_retention_days"),
    ROLLUP_TABLES["hour"]: ("bucket", "hour_retention_days"),
    ROLLUP_TABLES["day"]: ("bucket", "day_retention_days"),
    TENANT_ROLLUP_TABLES["minute"]: ("bucket", "minute_retention_days"),
    TENANT_ROLLUP_TABLES["hour"]: ("bucket", "hour_retention_days"),
    TENANT_ROLLUP_TABLES["day"]: ("bucket", "day_retention_days"),
    f"{DATABASE}.consumed": ("ts", "retention_days"),
    f"{DATABASE}.consumer_batches": ("toDateTime(planned_at)", "retention_days"),
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    template: str

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()


def migrate(client: Client, retention_days: int | None = None) -> list[str]:
    """Apply the migrations not applied yet; return their file names (empty if none).

    With ``retention_days`` given, also brings the tables' TTLs in line with it; without,
    new tables get the default and existing TTLs are left as an operator set them.
    """
    params = retention_params(DEFAULT_RETENTION_DAYS if retention_days is None else retention_days)
    # a schema that is up to date needs no DDL, so an account without it (the compose
    # stack's writer, which `stream` runs as) can check it; only a new database gets these
    if not _ledger_exists(client):
        _command(client, f"CREATE DATABASE IF NOT EXISTS {DATABASE}", "bootstrap")
        _command(
            client,
            f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                version UInt32, name String, checksum String,
                applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
            ) ENGINE = MergeTree ORDER BY version""",
            "bootstrap",
        )
    available = load_migrations()
    applied = _applied(client)
    _check_unchanged(available, applied)
    done: list[str] = []
    for migration in available:
        if migration.version in applied:
            continue
        for statement in split_statements(render(migration.template, params)):
            _command(client, statement, migration.file_name)
        client.insert(
            MIGRATIONS_TABLE,
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        logger.info("applied migration %s", migration.file_name)
        done.append(migration.file_name)
    if retention_days is not None:
        _apply_retention(client, params)
    return done


def retention_params(retention_days: int) -> dict[str, int]:
    """The template parameters: raw and per-minute data for ``retention_days``, the coarser
    rollups at least as long and at least a quarter (hourly) or two years (daily)."""
    if retention_days < 1:
        raise ConfigError(f"retention must be at least 1 day, not {retention_days}")
    return {
        "retention_days": retention_days,
        "minute_retention_days": retention_days,
        "hour_retention_days": max(retention_days, MIN_HOUR_RETENTION_DAYS),
        "day_retention_days": max(retention_days, MIN_DAY_RETENTION_DAYS),
    }


def load_migrations() -> list[Migration]:
    """The migration files shipped in the package, by version."""
    migrations: dict[int, Migration] = {}
    for entry in resources.files("analytics").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"two migration files have version {version:04d}")
        text = entry.read_text(encoding="utf-8").replace("\r\n", "\n")
        migrations[version] = Migration(version, match.group(2), text)
    return [migrations[v] for v in sorted(migrations)]


def render(template: str, params: dict[str, int]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise MigrationError(f"unknown template parameter {{{name}}} in a migration")
        return str(params[name])

    return _PARAMETER.sub(substitute, template)


def _ledger_exists(client: Client) -> bool:
    # system.tables lists a table to every account with a grant on it
    database, _, table = MIGRATIONS_TABLE.partition(".")
    rows = client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": table},
    ).result_rows
    return bool(rows[0][0])


def _applied(client: Client) -> dict[int, str]:
    rows = client.query(
        f"SELECT version, any(checksum) FROM {MIGRATIONS_TABLE} GROUP BY version"
    ).result_rows
    return {int(version): str(checksum) for version, checksum in rows}


def _check_unchanged(available: list[Migration], applied: dict[int, str]) -> None:
    for migration in available:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.file_name} changed after it was applied "
                f"(checksum {recorded[:12]}… recorded, {migration.checksum[:12]}… now); "
                "restore it and put the change in a new migration file"
            )
    unknown = sorted(set(applied) - {m.version for m in available})
    if unknown:
        # a newer RateWatch migrated this database; its additions are backward compatible
        logger.warning("the database has migrations this version does not know: %s", unknown)


def _apply_retention(client: Client, params: dict[str, int]) -> None:
    rows = client.query(
        "SELECT database || '.' || name, engine_full FROM system.tables"
        " WHERE database = {db:String}",
        parameters={"db": DATABASE},
    ).result_rows
    current = {str(table): _TTL_DAYS.search(str(engine)) for table, engine in rows}
    for table, (column, param) in _TTLS.items():
        found = current.get(table)
        if found is None or int(found.group(1)) == params[param]:
            continue
        days = params[param]
        _command(
            client, f"ALTER TABLE {table} MODIFY TTL {column} + INTERVAL {days} DAY", "retention"
        )
        logger.info("retention of %s changed from %s to %s days", table, found.group(1), days)


def _command(client: Client, statement: str, source: str) -> None:
    try:
        client.command(statement)
    except ClickHouseError as exc:
        first_line = " ".join(strip_comments(statement).split())[:80]
        hint = ""
        if "ACCESS_DENIED" in str(exc):
            hint = (
                "; this account may not change the schema: run `ratewatch migrate` as one that may"
            )
        raise MigrationError(f"{source}: {describe(exc)} (in: {first_line}…){hint}") from exc
