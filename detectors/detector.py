"""The abuse detector of one process: every tenant's window, baselines and models.

``observe`` appends decision frames to the rolling window; ``evaluate`` (every few seconds)
computes the features of the last minute, judges each (tenant, scope) with the policy and
then learns from what it judged: subjects with enough evidence that nothing flagged update
the tenant's baseline and, sampled, the isolation forest's history, which the registry
retrains on its schedule.  A retraining never holds up an evaluation: the registry fits
on a thread of its own, starting between rounds, and the evaluation judges with the model
it has, so a model queued by one round is used from the next that follows its fit
(``detectors/registry.py``, ``detectors/training.py``).  The baselines' fits and EWMA
updates stay inline: a median and a MAD over the rows of a round cost about a millisecond
(a few with thousands of rows), against half a second or more for a forest.  Flagged and
doubtful subjects never enter the history, so an attack cannot teach the models that it
is normal.

Memory is bounded: the short window's decisions plus per-subject tallies and per-minute
summaries of the long window (``RollingWindow``), a queue of observed frames that is
folded in at ``inbox_limit``, at most
``ModelRegistry.max_history`` history rows per (tenant, scope), and the state of a tenant
that has been silent for ``idle_ms`` is dropped.  ``observe`` may be called from any
thread while another evaluates; evaluations run one at a time.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from detectors.baseline import RobustBaseline
from detectors.features import as_scope
from detectors.model_features import DIRECTIONS, GROUPS, MIN_MADS, Z_CAPS, isolation_matrix
from detectors.policy import DetectionPolicy, Judgement
from detectors.registry import ModelRegistry
from detectors.verdict import MAX_IPS, Scope, Verdict
from detectors.window import RollingWindow

Matrix = npt.NDArray[np.float64]


def default_baseline() -> RobustBaseline:
    """The baseline every (tenant, scope) starts from: floors, directions and families of
    ``detectors.model_features``."""
    return RobustBaseline(min_mad=MIN_MADS, directions=DIRECTIONS, groups=GROUPS, z_cap=Z_CAPS)


@dataclass
class _Learner:
    """What one (tenant, scope) has learned, and rows waiting to be learned."""

    baseline: RobustBaseline | None = None
    learned_ms: int | None = None  # when it last learned
    pending: list[Matrix] = field(default_factory=list)
    pending_rows: int = 0


class AbuseDetector:
    """Rolling window + per-tenant baselines + isolation models + policy.

    Parameters
    ----------
    min_baseline_rows : int, default=100
        Rows (subjects with enough evidence, over one or more evaluations) a (tenant,
        scope) needs before its baseline is fitted; until then it is in cold start.
    update_rows : int, default=30
        Rows gathered before each EWMA update of a fitted baseline, so that a tenant with
        few subjects does not move its baseline on the median of three.
    history_per_evaluation : int, default=100
        Normal rows sampled into the isolation history per (tenant, scope) and evaluation:
        at one evaluation every 5 s, the registry's 10,000 rows span the last eight
        minutes however busy the tenant.
    idle_ms : int, default=3,600,000
        A tenant without decisions for this long loses its baselines and models.
    retrains_per_evaluation : int, default=4
        At most this many isolation model fits are queued per evaluation, so that many
        tenants coming due together (at start, every ten minutes) spread their fits over
        a few rounds and each fit takes the history as it is when it is queued, not as
        it was long before.
    learn_every_ms : int, default=5,000
        How often a (tenant, scope) learns from what it judged.  Evaluations may come
        every second or two; each sees nearly the same minute of traffic, so learning at
        every one would weigh a subject's minute many times over and move the baseline
        and the forest's history faster the more often the detector judges.
    inbox_limit : int, default=1,000,000
        Decisions queued by ``observe`` beyond which it folds them into the window itself
        (the window then summarises what is older than a minute), so memory stays bounded
        even if nobody evaluates.
    """

    def __init__(
        self,
        policy: DetectionPolicy | None = None,
        registry: ModelRegistry | None = None,
        *,
        window: RollingWindow | None = None,
        baseline: RobustBaseline | None = None,
        min_baseline_rows: int = 100,
        update_rows: int = 30,
        history_per_evaluation: int = 100,
        idle_ms: int = 3_600_000,
        retrains_per_evaluation: int = 4,
        learn_every_ms: int = 5_000,
        inbox_limit: int = 1_000_000,
        seed: int = 0,
    ) -> None:
        self.policy = policy if policy is not None else DetectionPolicy()
        self.registry = registry if registry is not None else ModelRegistry()
        self.window = window if window is not None else RollingWindow()
        self._template = baseline if baseline is not None else default_baseline()
        self._min_baseline_rows = min_baseline_rows
        self._update_rows = update_rows
        self._history_per_evaluation = history_per_evaluation
        self._idle_ms = idle_ms
        self._retrains_per_evaluation = retrains_per_evaluation
        self._retrain_budget = retrains_per_evaluation
        self._inbox_limit = inbox_limit
        self._learn_every_ms = learn_every_ms
        self._rng = np.random.default_rng(seed)
        self._learners: dict[tuple[str, Scope], _Learner] = {}
        self._active: dict[str, int] = {}  # tenant → last evaluation that saw it
        self._blamed: dict[tuple[str, str], int] = {}  # (tenant, ip) → when last judged abusive
        # observe only queues, under a lock held for an append, so a caller on an event
        # loop is never stuck behind an evaluation running on a worker thread
        self._inbox: list[pl.DataFrame] = []
        self._inbox_rows = 0
        self._inbox_lock = threading.Lock()
        self._evaluating = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["_inbox_lock"], state["_evaluating"]  # copies get locks of their own
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._inbox_lock = threading.Lock()
        self._evaluating = threading.Lock()

    def observe(self, frame: pl.DataFrame) -> None:
        """Queue decisions (a ``decisions_frame``) for the window; cheap and thread-safe."""
        with self._inbox_lock:
            self._inbox.append(frame)
            self._inbox_rows += frame.height
            crowded = self._inbox_rows >= self._inbox_limit
        # nobody has evaluated for a long while: fold the queue into the (bounded) window
        if crowded and self._evaluating.acquire(blocking=False):
            try:
                self._drain()
            finally:
                self._evaluating.release()

    def _drain(self) -> None:
        with self._inbox_lock:
            frames, self._inbox, self._inbox_rows = self._inbox, [], 0
        for frame in frames:
            self.window.append(frame)

    @property
    def subjects(self) -> dict[str, int]:
        """Subjects tracked in the window, per scope."""
        return self.window.subjects_by_scope

    def close(self) -> None:
        """Stop the registry's fits (the one in progress is finished and saved)."""
        self.registry.close()

    def baseline(self, tenant: str, scope: Scope) -> RobustBaseline | None:
        learner = self._learners.get((tenant, scope))
        return learner.baseline if learner else None

    def evaluate(self, now_ms: int, *, include_all: bool = False) -> list[Verdict]:
        """Judge every subject active in the last minute; return the warranted verdicts
        (with ``include_all``, one per judged subject, warranted or not).

        Addresses are judged first; keys and user ids are then judged without the
        decisions that blocked addresses made on them when those are a minority of their
        traffic (``detectors.attribution.spare_victims``): the accounts a credential stuffer
        tries are its victims, not its accomplices.

        Warranted key and user id verdicts name the addresses their subject's decisions of
        the short window came from (``Verdict.ips``), so that the actions can spare a
        subject whose traffic all came from allowlisted networks.
        """
        with self._evaluating, self.registry.fits.round():
            self._drain()
            self._retrain_budget = self._retrains_per_evaluation
            ips = self.window.features(now_ms, ("ip",))
            verdicts = self._judge(ips, now_ms, include_all)
            blamed = self._blame(verdicts, now_ms)
            others = self.window.features(now_ms, ("key", "user_id"), blamed)
            judged = self._judge(others, now_ms, include_all)
            verdicts.extend(_with_origins(judged, self.window))
            self._forget_idle(now_ms)
            return verdicts

    def _blame(self, verdicts: list[Verdict], now_ms: int) -> pl.DataFrame:
        """Addresses judged abusive within the short window, this evaluation included."""
        for verdict in verdicts:
            if verdict.warranted:
                self._blamed[(verdict.tenant, verdict.subject)] = now_ms
        horizon = now_ms - self.window.short_ms
        self._blamed = {pair: ms for pair, ms in self._blamed.items() if ms > horizon}
        return pl.DataFrame(
            list(self._blamed),
            schema={"tenant": pl.String(), "ip": pl.String()},
            orient="row",
        )

    def _judge(self, features: pl.DataFrame, now_ms: int, include_all: bool) -> list[Verdict]:
        verdicts: list[Verdict] = []
        seconds = self.window.short_ms // 1000
        groups = features.partition_by("tenant", "scope", as_dict=True, maintain_order=True)
        for (tenant_name, scope_name), group in groups.items():
            tenant, scope = str(tenant_name), as_scope(str(scope_name))
            learner = self._learners.setdefault((tenant, scope), _Learner())
            if self._retrain_budget > 0 and self.registry.start_fit(tenant, scope, now_ms):
                self._retrain_budget -= 1
            model = self.registry.model(tenant, scope)  # the fit just queued is for later
            judgement = self.policy.judge(
                group,
                learner.baseline,
                model,
                now_ms,
                include_all=include_all,
                window_seconds=seconds,
                long_window_seconds=self.window.long_ms // 1000,
            )
            verdicts.extend(judgement.verdicts)
            due = learner.learned_ms is None or now_ms - learner.learned_ms >= self._learn_every_ms
            if due:
                learner.learned_ms = now_ms
                self._learn(tenant, scope, learner, judgement)
            self._active[tenant] = now_ms
        return verdicts

    def _learn(self, tenant: str, scope: Scope, learner: _Learner, judgement: Judgement) -> None:
        normal = judgement.matrix[judgement.normal]
        if not normal.shape[0]:
            return
        learner.pending.append(normal)
        learner.pending_rows += normal.shape[0]
        needed = self._update_rows if learner.baseline else self._min_baseline_rows
        if learner.pending_rows >= needed:
            rows = np.concatenate(learner.pending)
            learner.pending, learner.pending_rows = [], 0
            if learner.baseline is None:
                learner.baseline = self._template.unfitted().fit(rows)
            else:
                learner.baseline.partial_fit(rows)
        if normal.shape[0] > self._history_per_evaluation:
            picked = self._rng.choice(normal.shape[0], self._history_per_evaluation, replace=False)
            normal = normal[np.sort(picked)]
        self.registry.record(tenant, scope, isolation_matrix(normal))

    def _forget_idle(self, now_ms: int) -> None:
        for tenant in [t for t, ms in self._active.items() if now_ms - ms >= self._idle_ms]:
            del self._active[tenant]
            for key in [key for key in self._learners if key[0] == tenant]:
                del self._learners[key]
            self.registry.forget(tenant)


def _with_origins(verdicts: list[Verdict], window: RollingWindow) -> list[Verdict]:
    """``verdicts`` (key and user id) with the warranted ones' ``ips`` filled in from all of
    the short window, the decisions of blamed addresses included: they are the subject's
    traffic too, and an address the allowlist does not hold must keep the subject
    blockable."""
    origins: dict[tuple[str, str, str], tuple[tuple[str, ...], bool, bool]] = {}
    for scope in ("key", "user_id"):
        flagged = [(v.tenant, v.subject) for v in verdicts if v.scope == scope and v.warranted]
        if not flagged:  # the usual case: no string work at all
            continue
        subjects = pl.DataFrame(flagged, schema=["tenant", "subject"], orient="row")
        for tenant, subject, ips, truncated, ipless in window.origins(
            scope, subjects, MAX_IPS
        ).iter_rows():
            origins[(scope, tenant, subject)] = (tuple(ips), truncated, ipless)
    if not origins:
        return verdicts
    filled = []
    for verdict in verdicts:
        found = origins.get((verdict.scope, verdict.tenant, verdict.subject))
        if found is not None:
            ips, truncated, ipless = found
            verdict = dataclasses.replace(verdict, ips=ips, ips_truncated=truncated, ipless=ipless)
        filled.append(verdict)
    return filled
