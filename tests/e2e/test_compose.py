"""The compose stack: its RateWatch services run commands the CLI really has, and its
ClickHouse server's read-only analyst account sees one tenant and cannot write.

There is no Docker engine here, so the analyst account (compose/clickhouse/users.d/
analyst.xml) is checked in two ways:

- statically, against the schema the migrations build: every table of ``ratewatch`` with a
  ``tenant`` column (read from chDB's system.columns after ``migrate``, one chDB directory
  for the module as in tests/analytics/test_erasure.py) is filtered for the analyst, the
  analyst may read nothing else and write nothing, and the compose service mounts the
  files;
- on the engine.  chDB is the ClickHouse engine but has no users of its own: it always runs
  as ``default``, and refuses CREATE USER / CREATE ROW POLICY (the ``default`` user has no
  access management and there is no writable access storage), so the SQL form of a row
  policy cannot be run here.  It does load users XML through a config file, though.  A
  subprocess (its own chDB engine, so this process keeps its one directory) loads the
  real analyst.xml beside a full-power ``default`` user, applies the migrations, seeds
  two tenants and reads the policies and grants the engine derived; then it reopens the
  same directory with the analyst's very elements given to ``default`` and queries as
  that user: only 'acme' rows, no ledger tables, no writes.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # the dev extra installs no stubs for it
from clickhouse_connect.driver.client import Client

from analytics.clickhouse import chdb_url, connect
from analytics.migrate import migrate
from analytics.tables import DATABASE
from tests.support.chdb_users import as_default, connect_as, connect_as_admin, run_probe
from tests.support.chdb_users import attempt as attempt_as
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(120)

COMPOSE = REPO / "compose" / "docker-compose.yml"
ANALYST_XML = REPO / "compose" / "clickhouse" / "users.d" / "analyst.xml"
ACCESS_XML = REPO / "compose" / "clickhouse" / "config.d" / "analyst-access.xml"
ANALYST = "analyst"
TENANT = "acme"
PASSWORD_VARIABLE = "RATEWATCH_ANALYST_PASSWORD"
LEDGER_TABLES = {"consumed", "consumer_batches", "schema_migrations"}
# the control plane's durable copy (keys, webhooks with their sealed secrets): RateWatch's
# own records, not analytics data, so neither read-only account may read it
CONTROL_TABLES = {"control_records"}
_GRANT = re.compile(r"^GRANT SELECT ON (\w+)\.(\w+)$")


def test_every_ratewatch_service_command_is_a_valid_invocation() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    commands = {name: spec["command"] for name, spec in services.items() if "build" in spec}
    assert set(commands) == {"migrate", "limiter", "stream", "detect"}
    for name, command in commands.items():
        result = subprocess.run(
            [sys.executable, "-m", "ratewatch", *command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (name, result.stderr)
    environment = services["limiter"]["environment"]
    for variable in ("RATEWATCH_REDIS_URL", "RATEWATCH_KAFKA", "RATEWATCH_CLICKHOUSE_URL"):
        assert variable in environment
    # the stream service drains the limiters' audit outbox, on the Redis they share
    assert "RATEWATCH_REDIS_URL" in services["stream"]["environment"]
    assert "valkey" in services["stream"]["depends_on"]
    # the detector reads Kafka and blocks in the limiters' Redis
    for variable in ("RATEWATCH_REDIS_URL", "RATEWATCH_KAFKA"):
        assert variable in services["detect"]["environment"]


# the analyst account, statically


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A migrated chDB of this module's own."""
    client = connect(chdb_url(tmp_path_factory.mktemp("compose_schema") / "clickhouse"))
    migrate(client)
    yield client
    client.close()


def tenant_relations(schema: Client) -> dict[str, str]:
    """Every table and view of the database with a ``tenant`` column -> its engine."""
    rows = schema.query(
        "SELECT t.name, t.engine FROM system.tables AS t"
        " INNER JOIN system.columns AS c ON c.database = t.database AND c.table = t.name"
        " WHERE t.database = {db:String} AND c.name = 'tenant'",
        parameters={"db": DATABASE},
    ).result_rows
    return {str(name): str(engine) for name, engine in rows}


def analyst_user() -> ET.Element:
    users = ET.parse(ANALYST_XML).getroot().findall(f"users/{ANALYST}")
    assert len(users) == 1
    return users[0]


def analyst_filters() -> dict[str, str]:
    tables = analyst_user().findall(f"databases/{DATABASE}/*")
    filters = {table.tag: (table.findtext("filter") or "").strip() for table in tables}
    assert len(filters) == len(tables), "a table is listed twice"
    # no other database has a section the checks below would miss
    assert [db.tag for db in analyst_user().findall("databases/*")] == [DATABASE]
    return filters


def analyst_grants() -> set[str]:
    """The tables the analyst may SELECT; fails on any grant but SELECT on one table."""
    tables = set()
    for query in analyst_user().findall("grants/query"):
        match = _GRANT.match(" ".join((query.text or "").split()))
        assert match is not None, f"unexpected grant {query.text!r}"
        assert match.group(1) == DATABASE
        tables.add(match.group(2))
    return tables


def test_the_analyst_files_parse_and_the_profile_is_read_only() -> None:
    root = ET.parse(ANALYST_XML).getroot()
    assert root.tag == "clickhouse"
    user = analyst_user()
    profile = user.findtext("profile")
    assert profile == "readonly"
    assert root.findtext(f"profiles/{profile}/readonly") == "1"
    # the password comes from the environment: no secret in the repository, and no
    # passwordless account (compose refuses to start without the variable, see below)
    passwords = [e for e in user if e.tag.startswith("password") or e.tag == "no_password"]
    assert [(e.tag, e.attrib, (e.text or "").strip()) for e in passwords] == [
        ("password", {"from_env": PASSWORD_VARIABLE}, "")
    ]
    # nothing that would widen the account beyond its grants
    for widening in ("access_management", "allow_databases", "allow_dictionaries"):
        assert user.find(widening) is None, widening
    assert user.find("grants") is not None, "without <grants> a users.xml user may read all"

    access = ET.parse(ACCESS_XML).getroot()
    improvements = access.find("access_control_improvements")
    assert improvements is not None
    for setting in (
        "select_from_system_db_requires_grant",
        "select_from_information_schema_requires_grant",
    ):
        assert improvements.findtext(setting) == "true", setting


def test_every_table_with_tenant_data_is_filtered_to_one_tenant_for_the_analyst(
    schema: Client,
) -> None:
    relations = tenant_relations(schema)
    tables = {name for name, engine in relations.items() if "MergeTree" in engine}
    tables -= CONTROL_TABLES
    # the tables the migrations build today; a new one must come with a filter (or stay
    # unreadable): this test derives the list, the assertion only guards the derivation
    assert tables >= {
        "decisions",
        "decisions_per_minute",
        "decisions_per_hour",
        "decisions_per_day",
        "tenant_decisions_per_minute",
        "tenant_decisions_per_hour",
        "tenant_decisions_per_day",
        "audit_log",
        "alerts",
        "incidents",
    }
    filters = analyst_filters()
    grants = analyst_grants()

    missing = tables - set(filters)
    assert not missing, f"tables with tenant data but no filter for the analyst: {missing}"
    # a policy-free table would be read in full: every readable table has a filter
    assert grants <= set(filters), grants - set(filters)
    assert grants == tables, "the analyst reads exactly the tenant tables"
    # the views (decisions_per_*_mv) have tenant columns too: not granted, so unreadable
    assert not grants & {name for name, engine in relations.items() if "View" in engine}
    assert not grants & (LEDGER_TABLES | CONTROL_TABLES)
    for table, expression in filters.items():
        assert " ".join(expression.split()) == f"tenant = '{TENANT}'", table


def test_the_clickhouse_service_mounts_the_analyst_account() -> None:
    service = yaml.safe_load(COMPOSE.read_text())["services"]["clickhouse"]
    mounts = {}
    for volume in service["volumes"]:
        source, target, *options = volume.split(":")
        mounts[target] = (source, options)
    for file, target in (
        (ANALYST_XML, "/etc/clickhouse-server/users.d/analyst.xml"),
        (ACCESS_XML, "/etc/clickhouse-server/config.d/analyst-access.xml"),
    ):
        source, options = mounts[target]
        assert (COMPOSE.parent / source).resolve() == file
        assert options == ["ro"]
    # ${VAR:?message}: compose refuses to start without a password
    password = service["environment"][PASSWORD_VARIABLE]
    assert password.startswith("${" + PASSWORD_VARIABLE + ":?"), password


# the analyst account, on the engine (in a subprocess: see the module's docstring)


def probe_analyst(workdir: str, output: str) -> None:
    """Run in a subprocess by ``test_the_analyst_sees_only_acme_rows_and_cannot_write``;
    writes what the engine said as JSON to ``output``."""
    from analytics.alert_store import AlertLogWriter
    from analytics.audit_store import AuditLogWriter
    from analytics.incident_log import IncidentLogWriter
    from analytics.writer import DecisionWriter
    from stream.alerts import BLOCK_CREATED, new_alert_event
    from stream.audit import new_audit_event
    from tests.support.events import decision, incident_story

    work = Path(workdir)
    data = work / "data"
    result: dict[str, Any] = {}

    # 1. the real file beside a default user who may do everything
    client = connect_as_admin(work, data, {"analyst.xml": ANALYST_XML.read_text()})
    try:
        migrate(client)
        for tenant, count in ((TENANT, 3), ("other", 5)):
            events = [decision(tenant=tenant, key=f"user:{i}") for i in range(count)]
            DecisionWriter(client).write(events, f"probe/{tenant}")
            AuditLogWriter(client).write(
                [new_audit_event(tenant, "cli", "key.created", "key_1")], f"probe-audit/{tenant}"
            )
            alerts = [
                new_alert_event(
                    tenant,
                    BLOCK_CREATED,
                    "ip",
                    f"192.0.2.{i}",
                    explanation={"detector": "rules", "score": 0.95, "threshold": 0.8},
                    block_id=f"blk_{i}",
                    ttl_seconds=900,
                    offence=1,
                )
                for i in range(count - 1)
            ]
            AlertLogWriter(client).write(alerts, f"probe-alerts/{tenant}")
            IncidentLogWriter(client).write(incident_story(tenant), f"probe-incidents/{tenant}")
        result["policies"] = client.query(
            "SELECT table, select_filter FROM system.row_policies"
            " WHERE has(apply_to_list, {user:String}) AND database = {db:String}",
            parameters={"user": ANALYST, "db": DATABASE},
        ).result_rows
        result["grants"] = client.query(
            "SELECT access_type, database, table FROM system.grants WHERE user_name = {u:String}",
            parameters={"u": ANALYST},
        ).result_rows
        result["auth"] = client.query(
            "SELECT toString(auth_type) FROM system.users WHERE name = {u:String}",
            parameters={"u": ANALYST},
        ).result_rows
        result["tables"] = [
            row[0]
            for row in client.query(
                "SELECT name FROM system.tables WHERE database = {db:String}",
                parameters={"db": DATABASE},
            ).result_rows
        ]
    finally:
        client.close()

    # 2. the same directory, as a user made of the analyst's elements (chDB runs as default)
    source = ET.parse(ANALYST_XML).getroot()
    user = as_default(copy.deepcopy(analyst_user()))
    root = ET.Element("clickhouse")
    ET.SubElement(root, "users").append(user)
    profiles = copy.deepcopy(source.find("profiles"))
    assert profiles is not None
    ET.SubElement(profiles, "default")  # the engine's own default profile must exist
    root.append(profiles)
    ET.SubElement(ET.SubElement(root, "quotas"), "default")
    client = connect_as(root, data, work / "as_analyst")

    def attempt(sql: str) -> Any:
        return attempt_as(client, sql)

    try:
        result["readonly"] = attempt("SELECT getSetting('readonly')")
        result["as_analyst"] = {
            table: attempt(f"SELECT tenant, count() FROM {DATABASE}.{table} GROUP BY tenant")
            for table in result["tables"]
        }
        result["writes"] = {
            "insert": attempt(
                f"INSERT INTO {DATABASE}.decisions (tenant, key) SELECT 'x', 'y' FROM numbers(1)"
            ),
            "settings": attempt(f"SELECT count() FROM {DATABASE}.decisions SETTINGS readonly=0"),
            "create": attempt(f"CREATE TABLE {DATABASE}.probe (a UInt8) ENGINE = Memory"),
            "file": attempt("SELECT * FROM file('/etc/hostname', 'LineAsString')"),
        }
        # the tables the doc says to read with FINAL, read so
        result["final"] = {
            table: attempt(f"SELECT tenant, count() FROM {DATABASE}.{table} FINAL GROUP BY tenant")
            for table in ("audit_log", "alerts", "incidents")
        }
        result["merge"] = attempt(
            f"SELECT DISTINCT tenant FROM merge('{DATABASE}', '^(decisions|audit_log|alerts)')"
        )
    finally:
        client.close()
    Path(output).write_text(json.dumps(result))


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("analyst_probe")
    env = {PASSWORD_VARIABLE: uuid.uuid4().hex}
    return run_probe(f"{__name__}:probe_analyst", workdir, env, timeout=90)


def test_the_engine_derives_one_filter_per_tenant_table_and_select_only_grants(
    probe: dict[str, Any],
) -> None:
    filtered = set(analyst_filters())
    assert {(table, f"tenant = '{TENANT}'") for table in filtered} == {
        (table, " ".join(expression.split())) for table, expression in probe["policies"]
    }
    assert {(access, database, table) for access, database, table in probe["grants"]} == {
        ("SELECT", DATABASE, table) for table in analyst_grants()
    }
    # the password was taken from the environment
    assert len(probe["auth"]) == 1
    assert "plaintext_password" in probe["auth"][0][0]


def test_the_analyst_sees_only_acme_rows_and_cannot_write(probe: dict[str, Any]) -> None:
    assert probe["readonly"] == ["ok", [[1]]]
    readable = {}
    for table, (outcome, answer) in probe["as_analyst"].items():
        if outcome == "ok":
            readable[table] = {tenant: count for tenant, count in answer}
        else:
            assert "ACCESS_DENIED" in answer, (table, answer)
    # both tenants were seeded in all of them; the analyst sees acme's rows only
    assert readable == {
        "decisions": {TENANT: 3},
        "decisions_per_minute": {TENANT: 3},
        "decisions_per_hour": {TENANT: 3},
        "decisions_per_day": {TENANT: 3},
        # the tenant rollups sum acme's three keys into one row per bucket
        "tenant_decisions_per_minute": {TENANT: 1},
        "tenant_decisions_per_hour": {TENANT: 1},
        "tenant_decisions_per_day": {TENANT: 1},
        "audit_log": {TENANT: 1},
        "alerts": {TENANT: 2},
        "incidents": {TENANT: 3},
    }
    assert probe["final"] == {
        "audit_log": ["ok", [[TENANT, 1]]],
        "alerts": ["ok", [[TENANT, 2]]],
        "incidents": ["ok", [[TENANT, 3]]],
    }
    assert set(probe["as_analyst"]) - set(readable) >= LEDGER_TABLES | CONTROL_TABLES
    for name, (outcome, answer) in probe["writes"].items():
        assert outcome == "error", (name, answer)
        assert "ACCESS_DENIED" in answer or "READONLY" in answer, (name, answer)
    # a table function over every table goes through the same policies
    assert probe["merge"] == ["ok", [[TENANT]]]


# Grafana: its service, its provisioning and its read-only ClickHouse account
# (the account on the engine, and every dashboard query as that account: test_dashboards.py)

GRAFANA_XML = REPO / "compose" / "clickhouse" / "users.d" / "grafana.xml"
GRAFANA_ACCESS_XML = REPO / "compose" / "clickhouse" / "config.d" / "grafana-access.xml"
GRAFANA_PASSWORD_VARIABLE = "RATEWATCH_GRAFANA_DB_PASSWORD"


def grafana_user() -> ET.Element:
    users = ET.parse(GRAFANA_XML).getroot().findall("users/grafana")
    assert len(users) == 1
    return users[0]


def test_the_grafana_account_is_read_only_on_the_tenant_tables(schema: Client) -> None:
    root = ET.parse(GRAFANA_XML).getroot()
    user = grafana_user()
    profile = user.findtext("profile")
    assert profile == "grafana"
    assert root.findtext(f"profiles/{profile}/readonly") == "1"
    # the plugin's client sets max_execution_time on every query; only that may change
    constraints = root.findall(f"profiles/{profile}/constraints/*")
    assert [c.tag for c in constraints] == ["max_execution_time"]
    assert constraints[0].find("changeable_in_readonly") is not None
    improvements = ET.parse(GRAFANA_ACCESS_XML).getroot().find("access_control_improvements")
    assert improvements is not None
    assert improvements.findtext("settings_constraints_replace_previous") == "true"

    passwords = [e for e in user if e.tag.startswith("password") or e.tag == "no_password"]
    assert [(e.tag, e.attrib) for e in passwords] == [
        ("password", {"from_env": GRAFANA_PASSWORD_VARIABLE})
    ]
    for widening in ("access_management", "allow_databases", "allow_dictionaries"):
        assert user.find(widening) is None, widening
    # SELECT on the tables with tenant data, the analyst's tables; every tenant's rows
    tables = set()
    for query in user.findall("grants/query"):
        match = _GRANT.match(" ".join((query.text or "").split()))
        assert match is not None, f"unexpected grant {query.text!r}"
        assert match.group(1) == DATABASE
        tables.add(match.group(2))
    relations = tenant_relations(schema)
    assert (
        tables
        == {name for name, engine in relations.items() if "MergeTree" in engine} - CONTROL_TABLES
    )
    assert tables == analyst_grants()
    assert user.find("databases") is None


def test_the_grafana_service_is_provisioned_from_the_built_files() -> None:
    from dashboards.provisioning import (
        CLICKHOUSE_HOST,
        CLICKHOUSE_NATIVE_PORT,
        CLICKHOUSE_USER,
        CONTAINER_DASHBOARDS_DIR,
        DASHBOARDS_DIR,
        DATASOURCE_FILE,
        PASSWORD_VARIABLE,
        PROVIDER_FILE,
    )
    from dashboards.render import DATASOURCE_TYPE, PLUGIN_VERSION

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert grafana["environment"]["GF_INSTALL_PLUGINS"] == f"{DATASOURCE_TYPE} {PLUGIN_VERSION}"
    # published on the host's loopback unless RATEWATCH_PUBLISH_ADDRESS says otherwise
    assert grafana["ports"] == ["${RATEWATCH_PUBLISH_ADDRESS:-127.0.0.1}:3000:3000"]
    assert "clickhouse" in grafana["depends_on"]
    assert CLICKHOUSE_HOST in services
    for service in (grafana, services["clickhouse"]):
        password = service["environment"][PASSWORD_VARIABLE]
        assert password.startswith("${" + PASSWORD_VARIABLE + ":?"), password
    assert PASSWORD_VARIABLE == GRAFANA_PASSWORD_VARIABLE
    admin = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert admin.startswith("${RATEWATCH_GRAFANA_ADMIN_PASSWORD:?"), admin

    mounts = {}
    for volume in grafana["volumes"]:
        source, target, *options = volume.split(":")
        if source.startswith("."):  # a bind mount of the repository, read-only
            assert (COMPOSE.parent / source).is_dir(), source
            assert options == ["ro"], volume
            mounts[target] = (COMPOSE.parent / source).resolve()
    built = COMPOSE.parent / "grafana"
    assert mounts == {
        "/etc/grafana/provisioning/datasources": (built / DATASOURCE_FILE).parent.resolve(),
        "/etc/grafana/provisioning/dashboards": (built / PROVIDER_FILE).parent.resolve(),
        CONTAINER_DASHBOARDS_DIR: (built / DASHBOARDS_DIR).resolve(),
    }
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(CONTAINER_DASHBOARDS_DIR + "/")
    assert (built / DASHBOARDS_DIR / home.rsplit("/", 1)[1]).is_file()

    # the provisioning, read as Grafana reads it
    datasource = yaml.safe_load((built / DATASOURCE_FILE).read_text())["datasources"][0]
    assert datasource["type"] == DATASOURCE_TYPE
    assert datasource["jsonData"]["host"] == CLICKHOUSE_HOST
    assert datasource["jsonData"]["port"] == CLICKHOUSE_NATIVE_PORT
    assert datasource["jsonData"]["username"] == CLICKHOUSE_USER == grafana_user().tag
    assert datasource["secureJsonData"]["password"] == "$" + PASSWORD_VARIABLE
    provider = yaml.safe_load((built / PROVIDER_FILE).read_text())["providers"][0]
    assert provider["options"]["path"] == CONTAINER_DASHBOARDS_DIR
    assert provider["type"] == "file"

    # the ClickHouse service mounts the account and the setting it needs
    clickhouse_mounts = {
        v.split(":")[1]: (COMPOSE.parent / v.split(":")[0]).resolve()
        for v in services["clickhouse"]["volumes"]
        if v.startswith(".")
    }
    assert clickhouse_mounts["/etc/clickhouse-server/users.d/grafana.xml"] == GRAFANA_XML
    assert (
        clickhouse_mounts["/etc/clickhouse-server/config.d/grafana-access.xml"]
        == GRAFANA_ACCESS_XML
    )
