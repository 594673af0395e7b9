"""What the consumers make of a shadow policy's would-be denial: analytics stores the policy
and the flag beside the decision (real chDB), the detectors see what was answered."""

from __future__ import annotations

from pathlib import Path

from analytics.clickhouse import chdb_url, connect
from analytics.migrate import migrate
from analytics.writer import DecisionWriter
from detectors.features import decisions_frame
from tests.support.events import decision


def test_the_detectors_see_a_shadow_denial_as_the_allowed_answer_it_was() -> None:
    frame = decisions_frame(
        [
            decision(allowed=False, reason="limit", shadow=True, policy="trial"),
            decision(allowed=False, reason="blocked", shadow=True, policy="trial"),
            decision(allowed=False, reason="limit", policy="paid"),
        ]
    )
    assert frame["allowed"].to_list() == [True, False, False]
    assert frame["reason"].to_list() == ["ok", "blocked", "limit"]


def test_analytics_stores_the_policy_and_its_shadow_flag(tmp_path: Path) -> None:
    client = connect(chdb_url(tmp_path / "clickhouse"))
    try:
        migrate(client)
        DecisionWriter(client).write(
            [
                decision(key="a", policy="trial", shadow=True, allowed=False, reason="limit"),
                decision(key="b", policy="paid", allowed=False, reason="limit"),
                decision(key="c"),
            ],
            "policies/1",
        )
        stored = client.query(
            "SELECT key, policy, shadow, allowed FROM ratewatch.decisions ORDER BY key"
        ).result_rows
        assert [tuple(row) for row in stored] == [
            ("a", "trial", True, False),
            ("b", "paid", False, False),
            ("c", "", False, True),
        ]
        # what enforcing the trial policy would deny, as docs/policies.md says to ask
        would_deny = client.query(
            "SELECT policy, countIf(NOT allowed) FROM ratewatch.decisions WHERE shadow "
            "GROUP BY policy"
        ).result_rows
        assert [tuple(row) for row in would_deny] == [("trial", 1)]
    finally:
        client.close()
