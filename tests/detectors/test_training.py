"""Model fits off the evaluation's path: a round never waits for a fit, a fit starts only
when its model is due, one at a time, and a failing fit is counted while detection goes on.

In memory, as the detectors take arrays: the only stand-ins are the estimator templates
below, whose ``fit`` waits for the test (``GatedIsolation``) or fails (``FailingIsolation``)
before doing the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from detectors.baseline import RobustBaseline
from detectors.detector import AbuseDetector
from detectors.features import as_scope
from detectors.fit_process import ProcessFitter
from detectors.isolation import IsolationDetector, LocalFitter
from detectors.isolation_model import IsolationScorer
from detectors.metrics import DetectionMetrics
from detectors.policy import DetectionPolicy, Judgement
from detectors.registry import ModelRegistry
from detectors.verdict import SCOPES, Scope
from tests.support import scenarios

pytestmark = pytest.mark.timeout(60)

M = 60_000
T0 = 1_760_000_000_000
TENANT = "acme"
ROUND = 5_000


class GatedIsolation(IsolationDetector):
    """An ``IsolationDetector`` whose ``fit`` waits until the test opens ``gate``, and
    which counts its fits and how many ran at once."""

    gate = threading.Event()
    started = threading.Event()
    lock = threading.Lock()
    fits = 0
    running = 0
    most = 0

    @classmethod
    def reset(cls) -> None:
        cls.gate, cls.started = threading.Event(), threading.Event()
        cls.fits = cls.running = cls.most = 0

    def fit(self, X: Any, y: Any = None, *, trained_at_ms: int | None = None) -> GatedIsolation:
        cls = GatedIsolation
        with cls.lock:
            cls.fits += 1
            cls.running += 1
            cls.most = max(cls.most, cls.running)
        cls.started.set()
        try:
            assert cls.gate.wait(30), "the test never opened the gate"
            super().fit(X, y, trained_at_ms=trained_at_ms)
            return self
        finally:
            with cls.lock:
                cls.running -= 1


class FailingIsolation(IsolationDetector):
    """An ``IsolationDetector`` whose next ``failures`` fits raise."""

    failures = 0

    def fit(self, X: Any, y: Any = None, *, trained_at_ms: int | None = None) -> FailingIsolation:
        if FailingIsolation.failures > 0:
            FailingIsolation.failures -= 1
            raise RuntimeError("the fit broke")
        super().fit(X, y, trained_at_ms=trained_at_ms)
        return self


class RecordingPolicy(DetectionPolicy):
    """The default policy, remembering which isolation model each round judged with."""

    def __init__(self) -> None:
        super().__init__()
        self.used: dict[Scope, IsolationScorer | None] = {}

    def judge(
        self,
        features: pl.DataFrame,
        baseline: RobustBaseline | None,
        isolation: IsolationScorer | None,
        now_ms: int,
        **options: Any,
    ) -> Judgement:
        self.used[as_scope(features["scope"][0])] = isolation
        return super().judge(features, baseline, isolation, now_ms, **options)


@pytest.fixture(autouse=True)
def fresh_doubles() -> Iterator[None]:
    GatedIsolation.reset()
    FailingIsolation.failures = 0
    yield
    GatedIsolation.gate.set()  # a test that failed half-way must not leave a fit hanging


@pytest.fixture
def traffic() -> pl.DataFrame:
    rng = np.random.default_rng(3)
    return scenarios.steady_users(rng, TENANT, T0, T0 + 6 * M, users=150).frame


def rows(rng: np.random.Generator, n: int) -> np.ndarray[Any, Any]:
    return rng.normal(loc=[5.0, 0.1, 1.0], scale=[1.0, 0.02, 0.2], size=(n, 3))


def one_round(detector: AbuseDetector, traffic: pl.DataFrame, now: int) -> None:
    detector.observe(traffic.filter((pl.col("ts") > now - ROUND) & (pl.col("ts") <= now)))
    detector.evaluate(now)


def sample(metrics: DetectionMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_an_evaluation_never_waits_for_a_fit_and_the_next_round_uses_the_model(
    traffic: pl.DataFrame,
) -> None:
    registry = ModelRegistry(LocalFitter(GatedIsolation(n_estimators=10)), min_history=50)
    policy = RecordingPolicy()
    detector = AbuseDetector(policy, registry, min_baseline_rows=30)
    now = T0
    while not GatedIsolation.started.is_set():
        now += ROUND
        assert now < T0 + 5 * M, "no model came due"
        one_round(detector, traffic, now)
    # the round that queued the fit returned while the fit waits for the gate
    fitting = [scope for scope in SCOPES if registry.fitting(TENANT, scope)]
    assert fitting
    assert registry.fits.running == 1
    assert registry.fits.queued == len(fitting) - 1  # one at a time: the others wait
    for _ in range(3):  # and so do the rounds after it, judging without the models
        now += ROUND
        one_round(detector, traffic, now)
        for scope in fitting:
            assert policy.used[scope] is None
            assert registry.fitting(TENANT, scope)
    assert GatedIsolation.fits == 1  # nothing due again while its fit is under way
    GatedIsolation.gate.set()
    assert registry.fits.wait(30)
    fitted = {scope: registry.model(TENANT, scope) for scope in fitting}
    assert None not in fitted.values()
    now += ROUND
    one_round(detector, traffic, now)
    for scope in fitting:
        assert policy.used[scope] is fitted[scope]
    assert GatedIsolation.most == 1
    detector.close()  # what that round queued must not run into the next test


def test_a_fit_starts_only_when_due_and_never_twice_at_once() -> None:
    rng = np.random.default_rng(4)
    registry = ModelRegistry(
        LocalFitter(GatedIsolation(n_estimators=10)), min_history=100, max_history=400
    )
    registry.record(TENANT, "ip", rows(rng, 60))
    assert not registry.start_fit(TENANT, "ip", 0)  # cold start: not due
    assert GatedIsolation.fits == 0
    registry.record(TENANT, "ip", rows(rng, 60))
    assert registry.due(TENANT, "ip", 1_000)
    assert registry.start_fit(TENANT, "ip", 1_000)
    assert GatedIsolation.started.wait(10)
    assert not registry.due(TENANT, "ip", 1_500)
    assert not registry.start_fit(TENANT, "ip", 1_500)
    registry.record(TENANT, "ip", rows(rng, 200))  # would make it due, but a fit runs
    assert not registry.start_fit(TENANT, "ip", 2_000)
    assert registry.model(TENANT, "ip") is None
    GatedIsolation.gate.set()
    assert registry.fits.wait(10)
    first = registry.model(TENANT, "ip")
    assert first is not None
    assert first.n_samples_fit_ == 120  # the history when the fit was queued
    # the rows recorded while it ran count toward the next: the history more than doubled
    assert registry.start_fit(TENANT, "ip", 3_000)
    assert registry.fits.wait(10)
    second = registry.model(TENANT, "ip")
    assert second is not None
    assert second is not first
    assert second.n_samples_fit_ == 320
    assert not registry.start_fit(TENANT, "ip", 4_000)  # nothing new: not due
    assert (GatedIsolation.fits, GatedIsolation.most) == (2, 1)
    registry.close()


def test_a_failing_fit_is_counted_retried_later_and_detection_goes_on(
    traffic: pl.DataFrame,
) -> None:
    FailingIsolation.failures = 1
    metrics = DetectionMetrics()
    registry = ModelRegistry(
        LocalFitter(FailingIsolation(n_estimators=10)),
        min_history=50,
        retry_after_ms=30_000,
        metrics=metrics,
    )
    detector = AbuseDetector(registry=registry, min_baseline_rows=30, retrains_per_evaluation=1)
    now = T0
    failed = 0.0
    while not failed:
        now += ROUND
        assert now < T0 + 3 * M, "no fit was tried"
        one_round(detector, traffic, now)
        assert registry.fits.wait(10)
        failed = sum(
            sample(metrics, "ratewatch_detect_model_fit_failures_total", scope=scope)
            for scope in SCOPES
        )
    assert failed == 1
    (broken,) = [
        scope
        for scope in SCOPES
        if sample(metrics, "ratewatch_detect_model_fit_failures_total", scope=scope)
    ]
    assert registry.model(TENANT, broken) is None
    assert not registry.due(TENANT, broken, now + ROUND)  # not at once: a while later
    assert registry.due(TENANT, broken, now + 30_000)
    failed_at = now
    while registry.model(TENANT, broken) is None:  # the rounds go on, and so does fitting
        now += ROUND
        assert now <= failed_at + 60_000, "the model was never retried"
        one_round(detector, traffic, now)
        assert registry.fits.wait(10)
    assert now >= failed_at + 30_000
    assert sample(metrics, "ratewatch_detect_model_retrains_total", scope=broken) == 1
    assert sample(metrics, "ratewatch_detect_model_fit_duration_seconds_count", scope=broken) == 1
    assert sample(metrics, "ratewatch_detect_model_fits_in_flight") == 0
    assert sample(metrics, "ratewatch_detect_model_fits_queued") == 0
    detector.close()


def test_a_model_is_saved_after_it_is_in_use_and_a_failed_save_is_counted(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    metrics = DetectionMetrics()
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    registry = ModelRegistry(
        LocalFitter(IsolationDetector(n_estimators=10)),
        min_history=50,
        directory=blocked,
        metrics=metrics,
    )
    registry.record(TENANT, "key", rows(rng, 60))
    model = registry.refresh(TENANT, "key", 1_000)
    assert model is not None  # in use although it could not be saved
    assert sample(metrics, "ratewatch_detect_model_save_failures_total", scope="key") == 1
    assert sample(metrics, "ratewatch_detect_model_retrains_total", scope="key") == 1

    # fitted where the detection process fits, in a process of its own
    saved = ModelRegistry(ProcessFitter({"n_estimators": 10}), min_history=50, directory=tmp_path)
    saved.record(TENANT, "key", rows(rng, 60))
    fitted = saved.refresh(TENANT, "key", 1_000)
    assert fitted is not None
    registry.close()
    saved.close()
    assert [p.suffix for p in tmp_path.iterdir() if p != blocked] == [".npz"]
    restarted = ModelRegistry(directory=tmp_path)
    reloaded = restarted.model(TENANT, "key")
    assert reloaded is not None
    assert reloaded.version_ == fitted.version_
    probe = rows(rng, 20)
    np.testing.assert_array_equal(reloaded.score(probe), fitted.score(probe))
    restarted.close()


def test_a_fit_queued_during_a_round_starts_once_the_round_is_over() -> None:
    rng = np.random.default_rng(7)
    GatedIsolation.gate.set()
    registry = ModelRegistry(LocalFitter(GatedIsolation(n_estimators=10)), min_history=50)
    registry.record(TENANT, "ip", rows(rng, 60))
    with registry.fits.round():
        assert registry.start_fit(TENANT, "ip", 1_000)
        assert not GatedIsolation.started.wait(0.5)  # the round has the machine
        assert registry.fits.queued == 1
    assert GatedIsolation.started.wait(10)
    assert registry.fits.wait(10)
    assert registry.model(TENANT, "ip") is not None
    registry.close()


def test_closing_drops_queued_fits_and_finishes_the_running_one() -> None:
    rng = np.random.default_rng(6)
    registry = ModelRegistry(LocalFitter(GatedIsolation(n_estimators=10)), min_history=50)
    for scope in ("ip", "key"):
        registry.record(TENANT, scope, rows(rng, 60))
        assert registry.start_fit(TENANT, scope, 1_000)
    assert GatedIsolation.started.wait(10)
    assert (registry.fits.running, registry.fits.queued) == (1, 1)
    closing = threading.Thread(target=registry.close)
    closing.start()
    GatedIsolation.gate.set()
    closing.join(30)
    assert not closing.is_alive()
    assert registry.model(TENANT, "ip") is not None  # the running fit ended and counts
    assert registry.model(TENANT, "key") is None  # the queued one never ran
    assert GatedIsolation.fits == 1
    assert (registry.fits.running, registry.fits.queued) == (0, 0)
    registry.record(TENANT, "user_id", rows(rng, 60))
    assert not registry.start_fit(TENANT, "user_id", 2_000)  # closed: nothing new starts
    assert not registry.fitting(TENANT, "user_id")


class GatheringFitter(LocalFitter):
    """Fits here, gated like ``GatedIsolation``, and gathers fits as the fitting process
    does (``gathers``)."""

    def __init__(self, gathers: bool) -> None:
        super().__init__(GatedIsolation(n_estimators=10))
        self._gathers = gathers

    @property
    def gathers(self) -> bool:
        return self._gathers


@pytest.mark.parametrize("gathers", [True, False])
def test_a_fit_under_way_takes_along_the_models_past_half_their_schedule(
    gathers: bool,
) -> None:
    rng = np.random.default_rng(8)
    registry = ModelRegistry(
        GatheringFitter(gathers), min_history=50, max_history=100, retrain_every_ms=600_000
    )
    for scope in ("ip", "key", "user"):
        registry.record(TENANT, scope, rows(rng, 120))  # full: only the schedule rules
    GatedIsolation.gate.set()
    assert registry.refresh(TENANT, "ip", 0) is not None
    assert registry.refresh(TENANT, "key", 200_000) is not None
    assert registry.refresh(TENANT, "user", 400_000) is not None
    # at 650 s, "ip" is due on its schedule; "key" is past half of it, "user" is not
    assert not registry.due(TENANT, "key", 650_000)  # nothing under way: not yet
    GatedIsolation.reset()  # the gate closed: the next fit stays under way
    assert registry.start_fit(TENANT, "ip", 650_000)
    assert GatedIsolation.started.wait(10)
    assert registry.due(TENANT, "key", 650_000) is gathers
    assert not registry.due(TENANT, "user", 650_000)
    GatedIsolation.gate.set()
    assert registry.fits.wait(10)
    assert not registry.due(TENANT, "key", 650_000)  # the burst is over
    assert registry.due(TENANT, "key", 800_000)  # its own schedule, either way
    registry.close()
