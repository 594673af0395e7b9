"""RateWatch's own ClickHouse accounts of the compose stack (compose/clickhouse/users.d/
ratewatch.xml) on the ClickHouse engine: ``ratewatch_migrate`` builds the whole schema with
its grants and nothing more, and ``ratewatch`` does everything the limiter and the
consumer do (check the schema, store decisions, audit entries, alerts and the control
plane's records, read them, erase a user) and can change no schema.

As in tests/e2e/test_compose.py, chDB stands in for the server: it loads users XML but
always logs in as ``default``, so a subprocess opens one directory four times: as the
writer on an empty directory (the schema check refuses and says why), as an
administrator that loads the real file (the grants the engine derives from it), and as a
``default`` made of each account's own elements (tests/support/chdb_users.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.support.chdb_users import as_default, connect_as, connect_as_admin, run_probe
from tests.support.chdb_users import attempt as attempt_as
from tests.support.compose import USERS_D

pytestmark = pytest.mark.timeout(180)

ACCOUNTS_XML = USERS_D / "ratewatch.xml"
WRITER = "ratewatch"
MIGRATOR = "ratewatch_migrate"
PASSWORDS = {
    "RATEWATCH_CLICKHOUSE_PASSWORD": "writer-password",
    "RATEWATCH_CLICKHOUSE_MIGRATE_PASSWORD": "migrate-password",
}


def account(name: str) -> ET.Element:
    users = ET.parse(ACCOUNTS_XML).getroot().findall(f"users/{name}")
    assert len(users) == 1, name
    return users[0]


def as_account(name: str, data: Path, directory: Path) -> Any:
    """A client on ``data`` as a ``default`` made of account ``name``'s elements."""
    root = ET.Element("clickhouse")
    ET.SubElement(root, "users").append(as_default(copy.deepcopy(account(name))))
    ET.SubElement(ET.SubElement(root, "profiles"), "default")
    ET.SubElement(ET.SubElement(root, "quotas"), "default")
    return connect_as(root, data, directory)


def probe_accounts(workdir: str, output: str) -> None:
    """Run in a subprocess by the fixture below; writes what the engine said as JSON."""
    from analytics.alert_store import AlertLogWriter
    from analytics.audit_store import AuditLogWriter
    from analytics.erasure import erase_user
    from analytics.errors import MigrationError
    from analytics.event_store import ClickHouseEventStore
    from analytics.migrate import load_migrations, migrate
    from control.durable.clickhouse_journal import ClickHouseJournal
    from control.durable.journal import entry
    from stream.alerts import BLOCK_CREATED, new_alert_event
    from stream.audit import new_audit_event
    from stream.handlers import Located
    from tests.support.events import decision

    work = Path(workdir)
    data = work / "data"
    result: dict[str, Any] = {"available": [m.file_name for m in load_migrations()]}

    # 1. the writer on an empty directory: it may not build the schema, and says so
    client = as_account(WRITER, data, work / "writer-first")
    try:
        migrate(client)
        result["writer_on_empty"] = "migrated"
    except MigrationError as exc:
        result["writer_on_empty"] = str(exc)
    finally:
        client.close()

    # 2. the real file beside a default who may do everything: the engine's grants
    client = connect_as_admin(work, data, {"ratewatch.xml": ACCOUNTS_XML.read_text()})
    try:
        result["grants"] = {
            user: sorted(
                [str(access), str(database), str(table), int(revoke)]
                for access, database, table, revoke in client.query(
                    "SELECT access_type, database, ifNull(table, '*'), is_partial_revoke"
                    " FROM system.grants WHERE user_name = {u:String}",
                    parameters={"u": user},
                ).result_rows
            )
            for user in (WRITER, MIGRATOR)
        }
        result["auth"] = client.query(
            "SELECT name, toString(auth_type) FROM system.users WHERE name IN"
            " ({w:String}, {m:String}) ORDER BY name",
            parameters={"w": WRITER, "m": MIGRATOR},
        ).result_rows
    finally:
        client.close()

    # 3. the schema account builds the schema, and can do no more than that
    client = as_account(MIGRATOR, data, work / "as-migrate")
    try:
        result["migrated"] = migrate(client, retention_days=45)
        result["migrate_refused"] = {
            "drop table": attempt_as(client, "DROP TABLE ratewatch.decisions"),
            "drop database": attempt_as(client, "DROP DATABASE ratewatch"),
            "other database": attempt_as(client, "CREATE DATABASE elsewhere"),
            "file": attempt_as(client, "SELECT * FROM file('/etc/hostname', 'LineAsString')"),
            "create user": attempt_as(client, "CREATE USER intruder"),
        }
    finally:
        client.close()

    # 4. the writer does what the limiter and the consumer do, and changes no schema
    client = as_account(WRITER, data, work / "as-writer")
    try:
        result["writer_migrate"] = migrate(client)
        store = ClickHouseEventStore(client)
        events = [decision(tenant="acme", key="user:1", user_id=f"u{i}") for i in range(4)]
        located = [Located(offset, event) for offset, event in enumerate(events)]
        store.plan_batches([("decisions", 0, 0, 3)])
        result["stored"] = store.write("decisions", 0, located, "probe/0")
        result["written_offsets"] = sorted(store.written_offsets("decisions", 0, [0, 1, 2, 3]))
        AuditLogWriter(client).write(
            [new_audit_event("acme", "cli", "key.created", "key_1")], "probe-audit"
        )
        AlertLogWriter(client).write(
            [
                new_alert_event(
                    "acme",
                    BLOCK_CREATED,
                    "ip",
                    "192.0.2.1",
                    explanation={"detector": "rules", "score": 0.9, "threshold": 0.8},
                    block_id="blk_1",
                    ttl_seconds=900,
                    offence=1,
                )
            ],
            "probe-alerts",
        )
        journal = ClickHouseJournal("http://clickhouse:8123", connector=lambda _url: client)

        async def control_plane() -> str | None:
            await journal.put([entry("key", "acme", "key_1", '{"name": "probe"}')])
            found = await journal.find("key", "key_1")
            return None if found is None else found.payload

        result["journal"] = asyncio.run(control_plane())
        result["rollups"] = client.query(
            "SELECT sum(requests) FROM ratewatch.tenant_decisions_per_minute WHERE tenant = 'acme'"
        ).result_rows
        result["erased"] = erase_user(client, "acme", "u1")
        result["writer_refused"] = {
            "create table": attempt_as(
                client, "CREATE TABLE ratewatch.x (a UInt8) ENGINE = Memory"
            ),
            "drop table": attempt_as(client, "DROP TABLE ratewatch.decisions"),
            "truncate": attempt_as(client, "TRUNCATE TABLE ratewatch.audit_log"),
            "add column": attempt_as(client, "ALTER TABLE ratewatch.decisions ADD COLUMN x UInt8"),
            "ttl": attempt_as(
                client, "ALTER TABLE ratewatch.decisions MODIFY TTL toDateTime(ts) + INTERVAL 1 DAY"
            ),
            "drop view": attempt_as(client, "DROP VIEW ratewatch.decisions_per_minute_mv"),
            "delete audit": attempt_as(client, "DELETE FROM ratewatch.audit_log WHERE 1"),
            "fake migration": attempt_as(
                client,
                "INSERT INTO ratewatch.schema_migrations (version, name, checksum)"
                " SELECT 9999, 'fake', '' FROM numbers(1)",
            ),
            "file": attempt_as(client, "SELECT * FROM file('/etc/hostname', 'LineAsString')"),
            "other database": attempt_as(client, "SELECT count() FROM system.one"),
        }
    finally:
        client.close()
    Path(output).write_text(json.dumps(result, default=str))


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("ratewatch_accounts")
    return run_probe(f"{__name__}:probe_accounts", workdir, PASSWORDS, timeout=150)


def test_the_accounts_have_passwords_from_the_environment(probe: dict[str, Any]) -> None:
    for name, variable in (
        (WRITER, "RATEWATCH_CLICKHOUSE_PASSWORD"),
        (MIGRATOR, "RATEWATCH_CLICKHOUSE_MIGRATE_PASSWORD"),
    ):
        passwords = [
            e for e in account(name) if e.tag.startswith("password") or e.tag == "no_password"
        ]
        assert [(e.tag, e.attrib) for e in passwords] == [("password", {"from_env": variable})]
    # the engine read a password for each (an unset variable would be no_password)
    auth = dict(probe["auth"])
    assert set(auth) == {WRITER, MIGRATOR}
    for name, methods in auth.items():
        assert "plaintext_password" in methods, (name, methods)
        assert "no_password" not in methods, (name, methods)


def test_the_engine_derives_exactly_the_grants_the_services_need(probe: dict[str, Any]) -> None:
    from analytics.erasure import ERASED_TABLES

    writer = {tuple(grant) for grant in probe["grants"][WRITER]}
    assert writer == {
        ("SELECT", "ratewatch", "*", 0),
        ("INSERT", "ratewatch", "*", 0),
        ("INSERT", "ratewatch", "schema_migrations", 1),  # revoked
        *{("ALTER DELETE", "ratewatch", table, 0) for table in ERASED_TABLES},
    }
    migrator = {tuple(grant) for grant in probe["grants"][MIGRATOR]}
    assert {access for access, *_ in migrator} == {
        "CREATE DATABASE",
        "CREATE TABLE",
        "CREATE VIEW",
        "DROP VIEW",
        "ALTER ADD COLUMN",
        "ALTER ADD INDEX",  # 0009: the trace ids' bloom filter
        "ALTER ORDER BY",
        "ALTER TTL",
        "TRUNCATE",
        "SELECT",
        "INSERT",
    }
    assert {(database, table, revoke) for _, database, table, revoke in migrator} == {
        ("ratewatch", "*", 0)
    }


def test_the_schema_account_applies_every_migration_and_nothing_else(probe: dict[str, Any]) -> None:
    assert probe["migrated"] == probe["available"]
    for what, (outcome, answer) in probe["migrate_refused"].items():
        assert outcome == "error", (what, answer)
        assert "ACCESS_DENIED" in answer, (what, answer)


def test_the_writer_cannot_build_the_schema_and_says_to_run_migrate(probe: dict[str, Any]) -> None:
    message = probe["writer_on_empty"]
    assert "ACCESS_DENIED" in message
    assert "run `ratewatch migrate` as one that may" in message


def test_the_writer_does_what_the_limiter_and_the_consumer_do(probe: dict[str, Any]) -> None:
    # the schema check of `stream` at start, on a current schema: no DDL, nothing applied
    assert probe["writer_migrate"] == []
    assert probe["stored"] == 4
    assert probe["written_offsets"] == [0, 1, 2, 3]
    # the materialized views wrote the rollups on the writer's insert
    assert probe["rollups"] == [[4]]
    assert probe["journal"] == '{"name": "probe"}'
    erased = probe["erased"]
    assert erased["decisions"] == 1
    assert erased["alerts"] == 0


def test_the_writer_changes_no_schema_and_reads_nothing_outside_the_database(
    probe: dict[str, Any],
) -> None:
    refused = probe["writer_refused"]
    allowed = refused.pop("other database")  # constant tables are every user's
    assert allowed[0] == "ok", allowed
    for what, (outcome, answer) in refused.items():
        assert outcome == "error", (what, answer)
        assert "ACCESS_DENIED" in answer, (what, answer)
