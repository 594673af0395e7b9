"""Abuse detection without servers: features, estimators, rules, policy, scenarios.

The scenario tests replay labelled synthetic traffic (``tests.support.scenarios``) through an
``AbuseDetector`` the way the detection loop does: decisions observed in slices, evaluated
every few seconds.  Ten minutes of steady users (plus the pre-attack history of the
scenarios that have one) warm a detector once per module; each scenario then continues a
copy of it from the onset.
"""

from __future__ import annotations

import copy
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from detectors.baseline import NotFittedError as BaselineNotFitted
from detectors.baseline import RobustBaseline
from detectors.compiled_forest import CompiledForest
from detectors.detector import AbuseDetector, default_baseline
from detectors.features import (
    FEATURE_COLUMNS,
    ID_COLUMNS,
    decisions_frame,
    subject_features,
)
from detectors.isolation import IsolationDetector, LocalFitter
from detectors.isolation_model import IsolationModel, ModelFileError
from detectors.model_features import MODEL_FEATURES, isolation_matrix, model_matrix
from detectors.policy import DetectionPolicy
from detectors.registry import ModelRegistry
from detectors.rules import RuleThresholds, apply_rules
from detectors.verdict import MAX_IPS, Verdict
from detectors.window import RollingWindow
from stream.events import DecisionEvent
from tests.support import scenarios

M = 60_000
T0 = 1_760_000_000_000
ONSET = T0 + 10 * M
END = ONSET + 3 * M
TENANT = "acme"
Subject = tuple[str, str]


# --- scenario fixtures ---------------------------------------------------------------------


@dataclass
class World:
    background: scenarios.Traffic
    attacks: dict[str, scenarios.Traffic]
    legit_patterns: dict[str, scenarios.Traffic]
    detector: AbuseDetector  # warmed on ten minutes before the onset
    warmup_flags: dict[Subject, Verdict]

    def legit(self) -> set[Subject]:
        found = set(self.background.legit)
        for traffic in [*self.attacks.values(), *self.legit_patterns.values()]:
            found |= traffic.legit
        return found


def replay(
    detector: AbuseDetector, frame: pl.DataFrame, start: int, end: int, every: int
) -> dict[Subject, Verdict]:
    """Observe ``frame`` in slices of ``every`` ms over (start, end], evaluating after each;
    the first warranted verdict per subject.  The fits queued by a round end before the
    next one, as they do in the seconds between real rounds (``test_training`` tests the
    rounds that do not wait)."""
    flagged: dict[Subject, Verdict] = {}
    for now in range(start + every, end + 1, every):
        detector.observe(frame.filter((pl.col("ts") > now - every) & (pl.col("ts") <= now)))
        assert detector.registry.fits.wait(30)
        for verdict in detector.evaluate(now):
            assert verdict.warranted
            flagged.setdefault((verdict.scope, verdict.subject), verdict)
    return flagged


@pytest.fixture(scope="module")
def world() -> World:
    rng = np.random.default_rng(20)
    background = scenarios.steady_users(rng, TENANT, T0, END, users=400)
    users = background.frame["user_id"].unique().sort().to_list()
    keys = background.frame["key"].unique().sort().to_list()
    attacks = {
        "credential_stuffing": scenarios.credential_stuffing(rng, TENANT, ONSET, victims=users),
        "leaked_key": scenarios.leaked_key(rng, TENANT, T0, ONSET),
        "distributed_scraping": scenarios.distributed_scraping(rng, TENANT, ONSET),
        "single_ip_burst": scenarios.single_ip_burst(rng, TENANT, ONSET),
        "key_enumeration": scenarios.key_enumeration(rng, TENANT, ONSET, real_keys=keys),
        "sequential_key_enumeration": scenarios.sequential_key_enumeration(rng, TENANT, ONSET),
        "rotating_credential_stuffing": scenarios.rotating_credential_stuffing(rng, TENANT, ONSET),
        "low_and_slow": scenarios.low_and_slow(rng, TENANT, T0, ONSET),
    }
    crowd = scenarios.flash_crowd(rng, TENANT, ONSET)
    # the same launch through a mobile app whose one (brand-new) key all users share
    shared = crowd.frame.with_columns(key=pl.lit("launch-app-key"))
    patterns = {
        "flash_crowd": crowd,
        "flash_crowd_on_one_app_key": scenarios.Traffic(
            "flash_crowd_on_one_app_key", shared, ONSET, legit=scenarios.subjects_of(shared)
        ),
        "nat_customer": scenarios.nat_customer(rng, TENANT, ONSET),
        # the same, partly on the customer's own pages and records, used by nobody else
        "nat_customer_own_app": scenarios.nat_customer(
            rng, TENANT, ONSET, ip="203.0.113.20", own_routes=0.4
        ),
    }
    history = scenarios.merge(background, *attacks.values()).filter(pl.col("ts") <= ONSET)
    detector = AbuseDetector()
    flags = replay(detector, history, T0, ONSET, 30_000)
    return World(background, attacks, patterns, detector, flags)


def after_onset(world: World, *traffics: scenarios.Traffic, minutes: int) -> dict[Subject, Verdict]:
    frame = scenarios.merge(world.background, *traffics).filter(pl.col("ts") > ONSET)
    return replay(copy.deepcopy(world.detector), frame, ONSET, ONSET + minutes * M, 10_000)


def recall(attack: scenarios.Traffic, flagged: dict[Subject, Verdict]) -> float:
    return sum(1 for subject in attack.attackers if subject in flagged) / len(attack.attackers)


# --- scenarios -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_ten_minutes_of_steady_users_are_never_blocked(world: World) -> None:
    assert world.detector.baseline(TENANT, "ip") is not None
    assert world.detector.registry.model(TENANT, "ip") is not None  # out of cold start
    assert world.warmup_flags.keys() & world.legit() == set()
    flagged = after_onset(world, minutes=2)
    assert flagged.keys() & world.legit() == set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "name",
    [
        "credential_stuffing",
        "leaked_key",
        "distributed_scraping",
        "single_ip_burst",
        "key_enumeration",
        "sequential_key_enumeration",
        "rotating_credential_stuffing",
        "low_and_slow",
    ],
)
def test_each_attack_is_blocked_within_a_minute_of_its_onset(world: World, name: str) -> None:
    attack = world.attacks[name]
    flagged = after_onset(world, attack, minutes=1)  # the last evaluation is at onset + 60 s
    assert recall(attack, flagged) >= 0.95, sorted(attack.attackers - flagged.keys())[:5]
    assert flagged.keys() & world.legit() == set()
    for subject in attack.attackers & flagged.keys():
        verdict = flagged[subject]
        assert verdict.observed_at_ms <= attack.onset_ms + M
        assert verdict.reasons
        assert verdict.signals
        assert verdict.detector_version


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "name", ["flash_crowd", "flash_crowd_on_one_app_key", "nat_customer", "nat_customer_own_app"]
)
def test_flash_crowd_and_nat_customer_are_never_blocked(world: World, name: str) -> None:
    pattern = world.legit_patterns[name]
    flagged = after_onset(world, pattern, minutes=3)
    assert flagged.keys() & world.legit() == set(), [flagged[s].reasons for s in flagged][:3]


@pytest.mark.timeout(60)
def test_everything_at_once_blocks_every_attack_and_no_one_else(world: World) -> None:
    patterns = [world.legit_patterns["flash_crowd"], world.legit_patterns["nat_customer"]]
    everything = [*world.attacks.values(), *patterns]
    flagged = after_onset(world, *everything, minutes=1)
    for name, attack in world.attacks.items():
        assert recall(attack, flagged) >= 0.95, name
    assert flagged.keys() & world.legit() == set()
    # the accounts the stuffer tried are its victims: none of them is blocked
    tried = world.attacks["credential_stuffing"].frame["user_id"].unique().to_list()
    assert {("user_id", user) for user in tried} & world.background.legit
    assert not {("user_id", user) for user in tried} & flagged.keys() & world.legit()


@pytest.mark.timeout(60)
def test_a_morning_ramp_with_users_arriving_is_never_blocked() -> None:
    rng = np.random.default_rng(21)
    ramp = scenarios.diurnal_ramp(rng, TENANT, T0, T0 + 12 * M, users=400)
    flagged = replay(AbuseDetector(), ramp.frame, T0, T0 + 12 * M, 20_000)
    assert flagged.keys() & ramp.legit == set()


def test_explanations_name_features_with_values_and_baselines(world: World) -> None:
    flagged = after_onset(world, world.attacks["distributed_scraping"], minutes=1)
    verdict = next(v for v in flagged.values() if v.scope == "ip")
    assert verdict.detector in ("baseline", "baseline+isolation_forest", "isolation_forest")
    assert verdict.threshold == 0.8
    assert verdict.score >= verdict.threshold
    assert "against threshold 0.80" in verdict.reasons[0]
    features = {signal.feature for signal in verdict.signals}
    assert features & {"route_novelty", "regularity", "rate_short"}
    for signal in verdict.signals:
        assert signal.value != signal.baseline
        assert 0 < signal.weight <= 1
    sentence = next(r for r in verdict.reasons if "regularity" in r)
    assert "against a baseline of" in sentence
    assert "robust deviations above" in sentence
    explained = verdict.explanation()
    assert explained["signals"][0]["baseline"] == verdict.signals[0].baseline
    assert explained["detector_version"].startswith("policy-1/baseline-")


# --- features ------------------------------------------------------------------------------


def event(ts: int, **fields: Any) -> DecisionEvent:
    base: dict[str, Any] = {
        "event_id": f"e{ts}",
        "ts": ts,
        "tenant": TENANT,
        "key": "k1",
        "algorithm": "fixed_window",
        "limit": 10,
        "window": 60,
        "cost": 1,
        "allowed": True,
        "remaining": 5,
        "reset_in": 30,
        "reason": "ok",
        "ip": "1.1.1.1",
        "route": "/a",
        "user_agent": "ua",
        "user_id": "u1",
    }
    return DecisionEvent(**{**base, **fields})


def test_decisions_frame_types_and_nulls() -> None:
    frame = decisions_frame([event(1, ip=None, user_id=""), event(2)])
    assert frame.schema["ts"] == pl.Int64
    assert frame.schema["allowed"] == pl.Boolean
    assert frame["ip"].to_list() == [None, "1.1.1.1"]
    assert frame["user_id"].to_list() == [None, "u1"]
    assert decisions_frame([]).height == 0


def row(features: pl.DataFrame, scope: str, subject: str) -> dict[str, Any]:
    rows = features.filter((pl.col("scope") == scope) & (pl.col("subject") == subject))
    assert rows.height == 1, (scope, subject)
    return rows.row(0, named=True)


def test_subject_features_measure_what_they_say() -> None:
    now = T0 + 10 * M
    events = [  # an old, slow subject that speeds up and turns regular
        event(T0 + 1 + i * 30_000, ip="9.9.9.9", key="slow", user_id="s") for i in range(18)
    ]
    events += [
        event(now - M + 1 + i * 2_000, ip="9.9.9.9", key="slow", user_id="s", route=f"/p{i % 2}")
        for i in range(30)
    ]
    events += [  # one address, many keys, mostly denied
        event(now - 30_000 + i, ip="6.6.6.6", key=f"g{i}", allowed=i % 5 == 0, remaining=0)
        for i in range(20)
    ]
    events.append(event(now - 10, ip=None, key="anon", user_id=None))
    features = subject_features(decisions_frame(events), now)
    assert features.columns == [*ID_COLUMNS, *FEATURE_COLUMNS]

    slow = row(features, "ip", "9.9.9.9")
    assert slow["checks"] == 30
    assert slow["rate_short"] == 30
    assert slow["interarrival_cv"] < 0.01  # a timer
    assert slow["regularity"] == pytest.approx((1 - slow["interarrival_cv"]) * 29**0.5)
    assert slow["route_entropy"] == pytest.approx(1.0)  # two routes, equally used
    # 30/min now against 2/min before, both shrunk toward the tenant's median rate (25/min)
    assert slow["growth"] == pytest.approx((30 + 25) / (2 + 25))
    assert slow["deny_ratio"] == 0
    assert slow["distinct_keys"] == 1

    guesser = row(features, "ip", "6.6.6.6")
    assert guesser["distinct_keys"] == 20
    assert guesser["deny_ratio"] == pytest.approx(0.8)
    assert guesser["zero_remaining_share"] == 1.0
    assert guesser["identity_churn"] == 1.0
    assert guesser["rate_per_key"] == pytest.approx(1.0)
    assert guesser["interarrival_cv"] == 0.0  # one check every millisecond: a machine

    anonymous = features.filter(pl.col("subject") == "anon")
    assert anonymous["scope"].to_list() == ["key"]  # no ip, no user id: only the key scope
    assert row(features, "key", "anon")["distinct_ips"] == 0
    assert slow["tenant_median_checks"] == pytest.approx(
        features.filter(pl.col("scope") == "ip")["checks"].median()
    )


def test_the_rolling_window_gives_the_same_features_as_the_raw_frame() -> None:
    rng = np.random.default_rng(3)
    traffic = scenarios.steady_users(rng, TENANT, T0, T0 + 7 * M, users=60)
    leak = scenarios.leaked_key(rng, TENANT, T0, T0 + 5 * M, ips=25)
    frame = scenarios.merge(traffic, leak)
    window = RollingWindow()
    for step, now in enumerate(range(T0 + 15_000, T0 + 7 * M + 1, 15_000)):
        window.append(frame.filter((pl.col("ts") > now - 15_000) & (pl.col("ts") <= now)))
        if step % 3 == 2:
            expected = subject_features(frame, now).sort(ID_COLUMNS)
            got = window.features(now).sort(ID_COLUMNS)
            assert got.select(ID_COLUMNS).equals(expected.select(ID_COLUMNS))
            for column in FEATURE_COLUMNS:
                np.testing.assert_allclose(got[column], expected[column], rtol=1e-9, err_msg=column)
    assert window.rows < frame.height  # older minutes were rolled up


def test_the_window_holds_about_two_minutes_of_rows() -> None:
    rng = np.random.default_rng(4)
    frame = scenarios.steady_users(rng, TENANT, T0, T0 + 12 * M, users=200).frame
    window = RollingWindow()
    for now in range(T0 + 10_000, T0 + 12 * M + 1, 10_000):
        window.append(frame.filter((pl.col("ts") > now - 10_000) & (pl.col("ts") <= now)))
        window.prune(now)
    per_minute = frame.height / 12
    assert window.rows <= 2.2 * per_minute


# --- estimators ----------------------------------------------------------------------------


def normal_rows(rng: np.random.Generator, n: int = 500) -> np.ndarray[Any, Any]:
    return rng.normal(loc=[5.0, 0.1, 1.0], scale=[1.0, 0.02, 0.2], size=(n, 3))


ESTIMATORS = [
    RobustBaseline(min_mad=[0.5, 0.01, 0.1]),
    IsolationDetector(n_estimators=50, max_samples=128),
]


def fresh_copy(estimator: Any) -> Any:
    """A copy with the same parameters and nothing learned: scikit-learn's ``clone`` for
    the fitting side, ``unfitted`` for the baseline, which the detection process uses
    without scikit-learn."""
    if isinstance(estimator, BaseEstimator):
        return clone(estimator)
    return estimator.unfitted()


def learned_attributes(estimator: Any) -> set[str]:
    return {name for name in vars(estimator) if name.endswith("_") and not name.startswith("__")}


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_estimators_follow_the_scikit_learn_conventions(estimator: Any) -> None:
    fresh = fresh_copy(estimator)
    # __init__ only stores its arguments
    assert vars(fresh) == fresh.get_params(deep=False)
    assert not learned_attributes(fresh)
    with pytest.raises((NotFittedError, BaselineNotFitted), match="not fitted"):
        fresh.score(np.zeros((1, 3)))
    X = normal_rows(np.random.default_rng(5))
    assert fresh.fit(X) is fresh
    learned = set(vars(fresh)) - set(fresh.get_params(deep=False))
    assert learned
    assert learned == learned_attributes(fresh)  # what fit learned ends in "_"
    if isinstance(fresh, BaseEstimator):
        check_is_fitted(fresh)
    assert fresh.n_features_in_ == 3
    scores = fresh.score(X)
    assert scores.shape == (500,)
    assert ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(ValueError, match="features"):
        fresh.score(np.zeros((2, 4)))
    assert fresh_copy(fresh).get_params() == fresh.get_params()
    assert not hasattr(fresh_copy(fresh), "n_features_in_")


def test_robust_baseline_centre_scale_and_ewma() -> None:
    X = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [100.0, 0.0]])
    baseline = RobustBaseline(min_mad=[0.5, 0.05], alpha=0.1).fit(X)
    np.testing.assert_allclose(baseline.median_, [3.0, 0.0])
    np.testing.assert_allclose(baseline.mad_, [1.0, 0.05])  # the constant column is floored
    z = baseline.transform(np.array([[3.0 + 1.4826, 0.05 * 1.4826]]))
    np.testing.assert_allclose(z, [[1.0, 1.0]])
    baseline.partial_fit(np.array([[13.0, 0.0], [13.0, 0.0]]))
    np.testing.assert_allclose(baseline.median_, [4.0, 0.0])  # a tenth of the way to 13
    with pytest.raises(ValueError, match="one value per feature"):
        RobustBaseline(min_mad=[1.0]).fit(X)


def test_robust_baseline_score_needs_two_families_to_be_sure() -> None:
    X = np.random.default_rng(6).normal(size=(400, 3))
    baseline = RobustBaseline(directions=[1, 1, -1], min_mad=0.1).fit(X)
    centre = baseline.median_
    scale = 1.4826 * baseline.mad_
    one = centre + np.array([20.0, 0.0, 0.0]) * scale
    two = centre + np.array([20.0, 20.0, 0.0]) * scale
    low = centre + np.array([0.0, 0.0, -20.0]) * scale
    high_is_fine = centre + np.array([0.0, 0.0, 20.0]) * scale  # only low values count here
    s_one, s_two, s_low, s_fine = baseline.score(np.stack([one, two, low, high_is_fine]))
    assert 0.3 < s_one < 0.5  # capped at 8 and averaged with ~0: not sure on its own
    assert s_two > 0.95
    assert s_low == pytest.approx(s_one, abs=0.02)
    assert s_fine < 0.05


def test_isolation_detector_scores_outliers_higher_and_is_reproducible() -> None:
    X = normal_rows(np.random.default_rng(7), 2000)
    # a forest cannot extrapolate: a row beyond the history in one column only is as
    # isolated as the history's extremes, so these are unusual in every column
    outliers = np.array([[50.0, 0.9, 0.0], [0.0, 0.5, 9.0]])
    a = IsolationDetector().fit(X, trained_at_ms=1)
    b = IsolationDetector().fit(X, trained_at_ms=1)
    assert a.version_ == b.version_
    assert a.version_.startswith("iforest-")
    assert a.version_.endswith("-1")
    inliers = a.score(X[:200])
    assert (a.score(outliers) > 0.95).all()
    assert np.median(inliers) < 0.1
    np.testing.assert_array_equal(inliers, b.score(X[:200]))
    assert IsolationDetector().fit(X * 2, trained_at_ms=1).version_ != a.version_


@pytest.mark.parametrize("rows", [10, 5_000])
def test_compiled_forest_equals_scikit_learn(rows: int) -> None:
    rng = np.random.default_rng(8)
    X = rng.lognormal(size=(3000, 6))
    forest = IsolationForest(random_state=0, max_samples=200, max_features=0.7).fit(X)
    Y = rng.lognormal(size=(rows, 6)) * rng.choice([1.0, 4.0], size=(rows, 6))
    np.testing.assert_allclose(
        CompiledForest.of(forest).score_samples(Y), forest.score_samples(Y), rtol=0, atol=1e-12
    )


def test_save_and_load_keep_version_and_scores(tmp_path: Path) -> None:
    X = normal_rows(np.random.default_rng(9))
    fitted = IsolationDetector(n_estimators=30).fit(X, trained_at_ms=42)
    path = tmp_path / "model.npz"
    fitted.model_.save(path)
    loaded = IsolationModel.load(path)
    assert loaded.version_ == fitted.version_
    assert loaded.trained_at_ms_ == 42
    assert loaded.n_samples_fit_ == 500
    np.testing.assert_array_equal(loaded.score(X), fitted.score(X))
    with pytest.raises(ValueError, match="expects rows of 3 features"):
        loaded.score(np.zeros((2, 4)))


def test_a_model_file_that_is_not_one_is_refused_without_running_it(tmp_path: Path) -> None:
    fitted = IsolationDetector(n_estimators=5).fit(normal_rows(np.random.default_rng(9), 50))
    whole = tmp_path / "model.npz"
    fitted.model_.save(whole)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a model")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[:-200])
    pickled = tmp_path / "pickled.npz"  # the earlier format: a pickle, never loaded again
    pickled.write_bytes(pickle.dumps({"format": 1, "model": "anything"}))
    meta, arrays = fitted.model_.to_arrays()
    arrays["left"] = arrays["left"] + 10**9
    wild = tmp_path / "wild.npz"
    np.savez(wild, meta=np.array(json.dumps(meta)), **arrays)
    for bad in (junk, cut, pickled, wild, tmp_path / "missing.npz"):
        with pytest.raises(ModelFileError, match=bad.name):
            IsolationModel.load(bad)


def test_registry_cold_start_schedule_bounds_and_persistence(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    template = LocalFitter(IsolationDetector(n_estimators=20))
    registry = ModelRegistry(
        template, min_history=100, max_history=400, retrain_every_ms=600_000, directory=tmp_path
    )
    registry.record(TENANT, "ip", normal_rows(rng, 60))
    assert registry.refresh(TENANT, "ip", 0) is None  # cold start
    registry.record(TENANT, "ip", normal_rows(rng, 60))
    first = registry.refresh(TENANT, "ip", 1_000)
    assert first is not None
    assert first.n_samples_fit_ == 120
    assert registry.refresh(TENANT, "ip", 2_000) is first  # not due yet
    registry.record(TENANT, "ip", normal_rows(rng, 130))  # history more than doubled
    second = registry.refresh(TENANT, "ip", 3_000)
    assert second is not None
    assert second is not first
    assert registry.refresh(TENANT, "ip", 3_000 + 600_000) is not second  # schedule
    for _ in range(10):
        registry.record(TENANT, "ip", normal_rows(rng, 100))
    assert registry.history_rows(TENANT, "ip") == 400
    newest = registry.refresh(TENANT, "ip", 10**7)
    assert newest is not None
    assert newest.n_samples_fit_ == 400
    restarted = ModelRegistry(template, directory=tmp_path)
    reloaded = restarted.model(TENANT, "ip")
    assert reloaded is not None
    assert reloaded.version_ == newest.version_
    restarted.forget(TENANT)


# --- rules and policy ----------------------------------------------------------------------


def feature_rows(*rows: dict[str, Any]) -> pl.DataFrame:
    """Feature rows with every column at an ordinary value unless given."""
    ordinary = {name: 1.0 for name in FEATURE_COLUMNS}
    ordinary.update(checks=6.0, rate_short=6.0, rate_per_key=6.0, interarrival_cv=1.0)
    ordinary.update(regularity=0.0)
    ordinary.update(deny_ratio=0.0, zero_remaining_share=0.0, route_novelty=0.0)
    ordinary.update(identity_churn=0.2, prior_distinct_ips=1.0, route_entropy=2.0)
    ordinary.update({f"tenant_median_{n}": ordinary[n] for n in ordinary if not n.startswith("t")})
    return pl.DataFrame(
        [
            {"tenant": TENANT, "scope": "ip", "subject": f"s{i}", **ordinary, **r}
            for i, r in enumerate(rows)
        ]
    ).select(*ID_COLUMNS, *(pl.col(c).cast(pl.Float64) for c in FEATURE_COLUMNS))


def test_rules_fire_for_the_unmistakable_and_spare_the_nat() -> None:
    features = feature_rows(
        # a new address firing as fast as it can, mostly denied
        {"rate_active": 3000.0, "checks": 3000.0, "deny_ratio": 0.8, "prior_distinct_ips": 0.0},
        {"distinct_keys": 40.0, "checks": 50.0, "deny_ratio": 0.95},
        {"distinct_user_ids": 12.0, "checks": 14.0, "deny_ratio": 0.9},
        {"scope": "key", "distinct_ips_long": 35.0, "prior_distinct_ips": 1.0},
        # a NAT: a high rate, many keys and users, few denials
        {"rate_short": 900.0, "checks": 900.0, "distinct_keys": 200.0, "distinct_user_ids": 200.0},
        # a mobile app's key: many IPs, but it always had them
        {"scope": "key", "distinct_ips_long": 300.0, "prior_distinct_ips": 280.0},
        # a brand-new key: no history of its own to jump from (the models judge it)
        {"scope": "key", "distinct_ips_long": 300.0, "prior_distinct_ips": 0.0},
        # keys walked one by one, all allowed (each new key is a fresh counter)
        {"rate_short": 600.0, "checks": 600.0, "distinct_keys": 598.0},
        # a rotating stuffer's IP: a few accounts on the login route, some denied
        {"checks": 32.0, "distinct_user_ids": 5.0, "deny_ratio": 0.15, "distinct_routes": 1.0},
        # a NAT whose users all sign in at once: one route, many users, nothing denied
        {
            "checks": 80.0,
            "distinct_keys": 80.0,
            "distinct_user_ids": 80.0,
            "distinct_routes": 1.0,
            "deny_ratio": 0.01,
        },
        # a NAT's keys come back: many keys, but far fewer than checks
        {"rate_short": 1200.0, "checks": 1200.0, "distinct_keys": 300.0, "deny_ratio": 0.02},
        # a household: three people, a few denials, but browsing many routes
        {"checks": 20.0, "distinct_user_ids": 3.0, "deny_ratio": 0.3, "distinct_routes": 8.0},
    )
    hits = apply_rules(features, RuleThresholds())
    assert [(hit.row, hit.rule) for hit in hits] == [
        (0, "burst"),
        (1, "key_enumeration"),
        (2, "credential_stuffing"),
        (3, "key_spread"),
        (7, "key_enumeration"),
        (8, "credential_stuffing"),
    ]
    assert "3,000 checks/min" in hits[0].reason
    assert "80% denied" in hits[0].reason
    assert "40 distinct keys" in hits[1].reason
    assert "35 distinct IPs" in hits[3].reason
    assert "usual 1" in hits[3].reason
    assert "598 distinct keys" in hits[4].reason
    assert "each new" in hits[4].reason
    assert "5 distinct user ids" in hits[5].reason
    assert "one route" in hits[5].reason


class AlwaysAnomalous:
    """A stand-in isolation layer that finds everything maximally unusual."""

    version_ = "iforest-test"

    def score(self, X: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.ones(X.shape[0])


def test_the_guard_never_blocks_a_nat_for_volume_alone() -> None:
    ordinary = feature_rows(*({} for _ in range(200)))
    baseline = default_baseline().fit(model_matrix(ordinary))
    nat = {
        "checks": 900.0,
        "rate_short": 900.0,
        "distinct_keys": 200.0,
        "distinct_user_ids": 200.0,
        "distinct_user_agents": 40.0,
        "distinct_routes": 24.0,
        "route_entropy": 4.2,
        "rate_per_key": 4.5,
        "deny_ratio": 0.01,
    }
    scraper = {"checks": 30.0, "rate_short": 30.0, "rate_per_key": 30.0, "route_novelty": 1.0}
    scraper.update(interarrival_cv=0.1, regularity=5.0, distinct_routes=30.0)
    features = feature_rows(nat, scraper)
    policy = DetectionPolicy()
    judged = policy.judge(features, baseline, AlwaysAnomalous(), T0, include_all=True)  # type: ignore[arg-type]
    nat_verdict, scraper_verdict = judged.verdicts
    assert not nat_verdict.warranted
    assert nat_verdict.score < 0.5
    assert scraper_verdict.warranted
    assert judged.normal.tolist() == [True, False]  # only the unflagged row is learned from


def test_cold_start_needs_rules_or_a_sure_baseline() -> None:
    features = feature_rows({"checks": 30.0, "rate_short": 30.0, "rate_per_key": 30.0})
    judged = DetectionPolicy().judge(features, None, None, T0, include_all=True)
    assert judged.verdicts[0].score == 0.0
    assert not judged.verdicts[0].warranted
    assert "cold start" in judged.verdicts[0].reasons[0]
    thin = DetectionPolicy().judge(feature_rows({"checks": 3.0}), None, None, T0, include_all=True)
    assert "3 checks in the window, fewer than the 5" in thin.verdicts[0].reasons[0]


def test_model_features_and_isolation_matrix() -> None:
    features = feature_rows({"rate_short": 99.0})
    matrix = model_matrix(features)
    assert matrix.shape == (1, len(MODEL_FEATURES))
    logged = isolation_matrix(matrix)
    assert logged[0, MODEL_FEATURES.index("rate_short")] == pytest.approx(np.log1p(99.0))
    assert logged[0, MODEL_FEATURES.index("deny_ratio")] == 0.0


# --- the detector --------------------------------------------------------------------------


def test_detector_memory_is_bounded_and_idle_tenants_are_forgotten() -> None:
    rng = np.random.default_rng(11)
    frame = scenarios.steady_users(rng, "brief", T0, T0 + 4 * M, users=150).frame
    registry = ModelRegistry(
        LocalFitter(IsolationDetector(n_estimators=20)), min_history=100, max_history=300
    )
    detector = AbuseDetector(registry=registry, min_baseline_rows=30, idle_ms=10 * M)
    replay(detector, frame, T0, T0 + 4 * M, 15_000)
    assert detector.baseline("brief", "ip") is not None
    assert registry.history_rows("brief", "ip") == 300
    assert detector.window.rows <= frame.height / 4 * 2.2
    detector.evaluate(T0 + 20 * M)  # nothing for sixteen minutes
    assert detector.baseline("brief", "ip") is None
    assert registry.history_rows("brief", "ip") == 0
    assert detector.window.rows == 0
    assert detector.window.tenants == []


def test_observing_without_evaluating_still_keeps_memory_bounded() -> None:
    rng = np.random.default_rng(12)
    frame = scenarios.steady_users(rng, TENANT, T0, T0 + 8 * M, users=200).frame
    window = RollingWindow(flush_rows=2_000)
    detector = AbuseDetector(window=window, inbox_limit=500)
    for now in range(T0 + 5_000, T0 + 8 * M + 1, 5_000):
        detector.observe(frame.filter((pl.col("ts") > now - 5_000) & (pl.col("ts") <= now)))
    assert window.rows <= frame.height / 8 * 2.5


def test_a_warranted_key_verdict_names_the_addresses_its_traffic_came_from() -> None:
    now = T0 + 10 * M
    events = []
    spread = {"office": 30, "busy": MAX_IPS + 6, "partly_anonymous": 25}
    for n, (key, ips) in enumerate(spread.items()):
        # one address for eight minutes, then many in the last one: the key_spread rule
        events += [event(T0 + i * 30_000, key=key, ip=f"10.20.0.{n}") for i in range(16)]
        events += [event(now - M + 1 + i, key=key, ip=f"10.20.{n + 1}.{i}") for i in range(ips)]
    events.append(event(now - 5, key="partly_anonymous", ip=None))
    detector = AbuseDetector()
    detector.observe(decisions_frame(events))
    everyone = detector.evaluate(now, include_all=True)
    verdicts = {v.subject: v for v in everyone if v.warranted}
    assert set(verdicts) == set(spread)
    assert {v.scope for v in verdicts.values()} == {"key"}
    assert {v.detector for v in verdicts.values()} == {"rules"}

    office = verdicts["office"]
    assert office.ips == tuple(sorted(f"10.20.1.{i}" for i in range(30)))
    assert not office.ips_truncated
    assert not office.ipless
    busy = verdicts["busy"]
    assert len(busy.ips) == MAX_IPS
    assert set(busy.ips) < {f"10.20.2.{i}" for i in range(MAX_IPS + 6)}
    assert busy.ips_truncated
    partly = verdicts["partly_anonymous"]
    assert (len(partly.ips), partly.ips_truncated, partly.ipless) == (25, False, True)
    # only warranted verdicts are worth the work; the explanation does not list them
    assert all(v.ips == () for v in everyone if not v.warranted)
    assert "10.20.1.0" not in str(office.explanation())


def test_detector_include_all_returns_unwarranted_verdicts_too(world: World) -> None:
    detector = copy.deepcopy(world.detector)
    everyone = detector.evaluate(ONSET, include_all=True)
    assert everyone
    assert not any(v.warranted for v in everyone)
    assert {v.scope for v in everyone} == {"ip", "key", "user_id"}
