"""Per-source evidence judged against the tenant's population: identities nobody used
before, routes far from the tenant's mix, pages walked one by one, and the client the
limiter already holds at its limit."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from detectors.detector import default_baseline
from detectors.features import FEATURE_COLUMNS, FRAME_SCHEMA, ID_COLUMNS, subject_features
from detectors.model_features import model_matrix
from detectors.policy import DetectionPolicy
from detectors.rules import RuleThresholds, apply_rules
from detectors.window import RollingWindow

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000_000
S = 1_000
TENANT = "acme"
ROUTES = ["/home", "/search", "/items", "/cart", "/login"]


def decision(ts: int, ip: str, key: str, route: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(FRAME_SCHEMA)
    row.update(tenant=TENANT, ts=ts, ip=ip, key=key, route=route, user_agent="firefox")
    row.update(allowed=True, remaining=10, reason="ok", user_id=key)
    row.update(extra)
    return row


def traffic() -> tuple[pl.DataFrame, int]:
    """Three minutes of 30 people browsing (the sign-in route one check in twenty), an
    office of 10 people behind one address who were here two minutes ago too, and in the
    last minute one address trying 40 accounts nobody used before on the sign-in route."""
    rng = np.random.default_rng(5)
    rows = []
    for person in range(30):
        for second in range(0, 180, 6):
            route = str(rng.choice(ROUTES, p=[0.3, 0.25, 0.25, 0.15, 0.05]))
            rows.append(decision(T0 + second * S + person, f"10.0.0.{person}", f"u{person}", route))
    for member in range(10):
        for second in list(range(0, 40, 8)) + list(range(130, 180, 8)):
            route = str(rng.choice(ROUTES, p=[0.3, 0.25, 0.25, 0.15, 0.05]))
            rows.append(decision(T0 + second * S + member, "203.0.113.1", f"o{member}", route))
    for attempt in range(40):
        rows.append(
            decision(T0 + (130 + attempt) * S, "198.51.100.7", f"victim{attempt}", "/login")
        )
    frame = pl.DataFrame(rows, schema=FRAME_SCHEMA).sort("ts")
    return frame, T0 + 180 * S


def by_ip(features: pl.DataFrame, ip: str) -> dict[str, Any]:
    rows = features.filter((pl.col("scope") == "ip") & (pl.col("subject") == ip))
    assert rows.height == 1
    return rows.row(0, named=True)


def test_new_identities_and_route_divergence_from_scratch_and_incrementally() -> None:
    frame, now = traffic()
    window = RollingWindow()
    window.append(frame)
    for features in (subject_features(frame, now), window.features(now)):
        stuffer = by_ip(features, "198.51.100.7")
        office = by_ip(features, "203.0.113.1")
        person = by_ip(features, "10.0.0.3")
        # every account the stuffer tried is new to the tenant; the office's people and a
        # person came back with the keys they used minutes ago
        assert (stuffer["fresh_identities"], stuffer["fresh_share"]) == (40.0, 1.0)
        assert office["fresh_identities"] == person["fresh_identities"] == 0.0
        # only the sign-in route, which one check in twenty of the tenant's is on
        assert stuffer["route_divergence"] > 2.5
        assert office["route_divergence"] < 0.5
        assert stuffer["known_before"] == 0.0
        assert office["known_before"] == person["known_before"] == 1.0


def feature_rows(*rows: dict[str, Any]) -> pl.DataFrame:
    """Address rows at ordinary values unless given, with the population's medians."""
    ordinary = dict.fromkeys(FEATURE_COLUMNS, 1.0)
    ordinary.update(checks=6.0, rate_short=6.0, rate_active=6.0, deny_ratio=0.0)
    ordinary.update(fresh_identities=0.0, fresh_share=0.0, route_divergence=0.3)
    ordinary.update(route_novelty=0.0, distinct_routes=3.0, prior_distinct_ips=1.0)
    frame = pl.DataFrame(
        [
            {"tenant": TENANT, "scope": "ip", "subject": f"s{i}", **ordinary, **row}
            for i, row in enumerate(rows)
        ]
    )
    return frame.with_columns(
        pl.col(name).median().alias(f"tenant_median_{name}")
        for name in FEATURE_COLUMNS
        if not name.startswith("tenant_median_")
    ).select(*ID_COLUMNS, *(pl.col(c).cast(pl.Float64) for c in FEATURE_COLUMNS))


def fired(features: pl.DataFrame) -> dict[str, str]:
    subjects = features["subject"].to_list()
    return {subjects[hit.row]: hit.rule for hit in apply_rules(features, RuleThresholds())}


ORDINARY: list[dict[str, Any]] = [{} for _ in range(8)]


def test_new_identities_fire_for_a_stuffer_not_for_a_new_crowd_nor_a_tenant_of_novelty() -> None:
    stuffer = {"checks": 40.0, "fresh_identities": 40.0, "fresh_share": 1.0}
    stuffer["route_divergence"] = 3.2
    # a NAT's people all arriving at once: all new, but using the application as
    # everybody does
    crowd = {"checks": 300.0, "fresh_identities": 80.0, "fresh_share": 1.0}
    assert fired(feature_rows(*ORDINARY, stuffer, crowd)) == {"s8": "new_identities"}
    # a tenant whose every address brings new identities (a login broker): judged
    # against that population, the same address is ordinary
    busy = {"fresh_identities": 30.0, "fresh_share": 1.0, "route_divergence": 3.0}
    assert fired(feature_rows(*([busy] * 8), stuffer)) == {}


def test_unique_paths_fire_for_a_crawl_and_a_walk_not_for_a_busy_person() -> None:
    crawl = {"checks": 40.0, "route_novelty": 0.95, "distinct_routes": 38.0}
    # a walk through pages another crawler fetches too: not novel, yet each page once
    walk = {"checks": 40.0, "route_novelty": 0.0, "distinct_routes": 39.0}
    person = {"checks": 30.0, "route_novelty": 0.2, "distinct_routes": 9.0}
    found = fired(feature_rows(*ORDINARY, crawl, walk, person))
    assert found == {"s8": "unique_paths", "s9": "unique_paths"}


def test_a_client_held_by_its_limit_is_not_judged_on_its_denials() -> None:
    rng = np.random.default_rng(3)
    normal = [
        {
            "checks": float(n),
            "rate_short": float(n),
            "rate_active": float(n),
            "rate_per_key": float(n),
            "rate_per_identity": float(n),
            "deny_ratio": 0.0,
            "zero_remaining_share": 0.0,
            "interarrival_cv": 1.0,
            "regularity": float(rng.normal()),
            "identity_churn": 0.2,
        }
        for n in rng.integers(5, 15, 200)
    ]
    baseline = default_baseline().fit(model_matrix(feature_rows(*normal)))
    retrying = {
        "checks": 180.0,
        "rate_short": 180.0,
        "rate_active": 180.0,
        "rate_per_key": 180.0,
        "rate_per_identity": 180.0,
        "deny_ratio": 0.6,
        "zero_remaining_share": 0.6,
        "interarrival_cv": 1.0,
        "regularity": 0.0,
        "identity_churn": 0.01,
        "distinct_user_agents": 1.0,
        "known_before": 1.0,
    }
    # the same pace and denials from a newcomer rotating its user agent: not held
    rotating = {**retrying, "distinct_user_agents": 6.0, "known_before": 0.0, "deny_ratio": 0.9}
    judged = DetectionPolicy().judge(
        feature_rows(*normal[:8], retrying, rotating), baseline, None, T0, include_all=True
    )
    scores = {v.subject: v.score for v in judged.verdicts}
    assert scores["s8"] < 0.3
    assert scores["s9"] > scores["s8"] + 0.3
