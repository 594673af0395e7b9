"""The features the models see, and how each one reads as evidence.

Each model feature belongs to a *family* of features that move together:

- ``volume``: how much the subject does (rate, growth, keys, user ids, user agents,
  distinct routes and route entropy, which grow with the number of checks);
- ``routes``: whether it walks routes nobody else uses (enumeration);
- ``denial``: how hard it presses on its limits (denied share, share at ``remaining == 0``);
- ``identity``: how often it changes key or user id (a guesser changes with every check);
- ``rhythm``: how machine-regular its timing is (inter-arrival CV below a person's, in
  standard errors);
- ``spread``: how many addresses one key or user comes from.

Families matter twice.  The baseline layer asks for agreement between families, so one
family's extreme value (a heavy but human user) cannot decide alone.  And ``volume``,
``identity`` and ``spread`` are the families that grow when many honest people share one
subject (a NAT address, an app's key during a launch): the policy's guard sets them to
the baseline for subjects that are neither denied nor fast per identity, and never lets
volume alone block (see ``detectors.policy``).  ``routes``, ``denial`` and ``rhythm`` do
not grow with the number of people behind a subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

FAMILIES = ("volume", "routes", "denial", "identity", "rhythm", "spread")
# what grows when many honest people share one subject: how much it does, how many
# identities pass through it, from how many addresses
GUARDED_FAMILIES = ("volume", "identity", "spread")
# the most a family's z-score counts for: volume is the least specific evidence (heavy
# honest users exist), so even an extreme rate weighs less than an extreme deny ratio
FAMILY_CAPS = {"volume": 6.0}
DEFAULT_CAP = 8.0


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """How one feature is read.

    ``direction`` is +1 when high values are suspicious and -1 when low ones are;
    ``min_mad`` is the smallest spread worth measuring deviations in (a floor for the
    median absolute deviation, in the feature's own unit); ``log_scale`` marks heavy-tailed
    counts, which the isolation forest sees as ``log1p`` so its random cuts fall where
    subjects actually differ.
    """

    name: str
    family: str
    direction: int
    min_mad: float
    log_scale: bool
    label: str
    percent: bool = False


MODEL_SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("rate_short", "volume", 1, 1.0, True, "checks/min"),
    FeatureSpec("growth", "volume", 1, 0.25, True, "times its earlier rate"),
    FeatureSpec("rate_per_key", "volume", 1, 1.0, True, "checks/min per key"),
    FeatureSpec("rate_per_identity", "volume", 1, 1.0, True, "checks/min per key or user"),
    FeatureSpec("distinct_keys", "volume", 1, 1.0, True, "distinct keys/min"),
    FeatureSpec("distinct_user_ids", "volume", 1, 1.0, True, "distinct user ids/min"),
    FeatureSpec("distinct_user_agents", "volume", 1, 1.0, True, "distinct user agents/min"),
    FeatureSpec("distinct_routes", "volume", 1, 1.0, True, "distinct routes/min"),
    FeatureSpec("route_entropy", "volume", 1, 0.25, False, "bits of route entropy"),
    # a person opening records of their own (/invoices/3251) has a share of their checks on
    # routes nobody else used by chance; a crawler has nearly all of them there
    FeatureSpec(
        "route_novelty",
        "routes",
        1,
        0.08,
        False,
        "on routes no other caller used, each hit once or twice",
        percent=True,
    ),
    FeatureSpec("deny_ratio", "denial", 1, 0.05, False, "denied", percent=True),
    FeatureSpec(
        "zero_remaining_share", "denial", 1, 0.05, False, "checks at remaining 0", percent=True
    ),
    FeatureSpec("identity_churn", "identity", 1, 0.05, False, "new identities per check"),
    # a person's regularity is standard normal: its MAD, 0.6745, is the natural floor
    FeatureSpec("regularity", "rhythm", 1, 0.6745, False, "σ of timer-like regularity"),
    FeatureSpec("distinct_ips", "spread", 1, 1.0, True, "distinct IPs/min"),
    FeatureSpec("distinct_ips_long", "spread", 1, 1.0, True, "distinct IPs/10 min"),
)
MODEL_FEATURES = tuple(spec.name for spec in MODEL_SPECS)
SPECS = {spec.name: spec for spec in MODEL_SPECS}

DIRECTIONS = tuple(spec.direction for spec in MODEL_SPECS)
GROUPS = tuple(FAMILIES.index(spec.family) for spec in MODEL_SPECS)
MIN_MADS = tuple(spec.min_mad for spec in MODEL_SPECS)
Z_CAPS = tuple(FAMILY_CAPS.get(spec.family, DEFAULT_CAP) for spec in MODEL_SPECS)
GUARDED_COLUMNS = np.array([spec.family in GUARDED_FAMILIES for spec in MODEL_SPECS])
# what the limiter already answers: a client held at its limit is denied and much at
# ``remaining == 0`` because it asks for more than it may, which the limiter stops
HELD_COLUMNS = np.array([spec.family in (*GUARDED_FAMILIES, "denial") for spec in MODEL_SPECS])
# everything but volume: how a subject behaves rather than how much
BEHAVIOUR_COLUMNS = np.array([spec.family != "volume" for spec in MODEL_SPECS])
_LOG_COLUMNS = np.array([spec.log_scale for spec in MODEL_SPECS])


def model_matrix(features: pl.DataFrame) -> npt.NDArray[np.float64]:
    """The ``MODEL_FEATURES`` columns of ``features`` as a float matrix, in their own units."""
    return features.select(MODEL_FEATURES).to_numpy().astype(np.float64, copy=False)


def isolation_matrix(matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``model_matrix`` output with the heavy-tailed counts on a log scale."""
    out = matrix.copy()
    out[:, _LOG_COLUMNS] = np.log1p(np.clip(out[:, _LOG_COLUMNS], 0.0, None))
    return out


def describe(name: str, value: float) -> str:
    """``value`` of feature ``name`` as a person reads it: "97% denied", "212 checks/min"."""
    spec = SPECS.get(name)
    if spec is None:
        return f"{name} {value:.3g}"
    if spec.percent:
        return f"{value:.0%} {spec.label}"
    return f"{_number(value)} {spec.label}"


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10 or value == int(value):
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{value:.2f}"
