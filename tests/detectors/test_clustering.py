"""Campaign clustering without scikit-learn (``detectors/clustering.py``): the same labels
as scikit-learn's DBSCAN on crowds of every shape, including the border points two
clusters reach and the blocks a large crowd is split into."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import DBSCAN

from detectors import clustering
from detectors.clustering import dbscan_labels

pytestmark = pytest.mark.timeout(120)


def crowd(seed: int, groups: int, size: int, noise: int, spread: float) -> np.ndarray:
    """``groups`` blobs of ``size`` points in 3-D plus ``noise`` scattered ones, shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-6, 6, size=(groups, 3))
    blobs = [rng.normal(centre, spread, size=(size, 3)) for centre in centres]
    scattered = rng.uniform(-10, 10, size=(noise, 3))
    points = np.concatenate([*blobs, scattered]) if blobs else scattered
    return rng.permutation(points)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    groups=st.integers(0, 4),
    size=st.integers(1, 30),
    noise=st.integers(1, 30),
    spread=st.floats(0.05, 1.5),
    eps=st.floats(0.2, 2.0),
    min_samples=st.integers(1, 8),
)
def test_labels_equal_scikit_learns(
    seed: int, groups: int, size: int, noise: int, spread: float, eps: float, min_samples: int
) -> None:
    points = crowd(seed, groups, size, noise, spread)
    expected = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(points)
    np.testing.assert_array_equal(dbscan_labels(points, eps, min_samples), expected)


def test_a_border_point_reached_by_two_clusters_joins_the_first() -> None:
    # two dense groups on a line, and a point between them within reach of a core point
    # of each but a core point itself of neither
    line = [0.0, 0.02, 0.1, 1.0, 1.9, 1.98, 2.0]
    points = np.array([[x, 0.0, 0.0] for x in line])
    labels = dbscan_labels(points, eps=0.95, min_samples=4)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert labels.tolist() == DBSCAN(eps=0.95, min_samples=4).fit_predict(points).tolist()


def test_a_large_crowd_is_split_into_blocks_with_the_same_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    points = crowd(7, groups=3, size=400, noise=200, spread=0.4)
    whole = dbscan_labels(points, eps=0.5, min_samples=5)
    monkeypatch.setattr(clustering, "_BLOCK_CELLS", 3 * len(points) * 7)  # 7 rows a block
    np.testing.assert_array_equal(dbscan_labels(points, eps=0.5, min_samples=5), whole)
    np.testing.assert_array_equal(whole, DBSCAN(eps=0.5, min_samples=5).fit_predict(points))
    assert len(set(whole.tolist()) - {-1}) >= 3


def test_nothing_to_cluster_and_bad_settings() -> None:
    assert dbscan_labels(np.zeros((0, 3)), 1.0, 3).tolist() == []
    with pytest.raises(ValueError, match="eps must be positive, got 0"):
        dbscan_labels(np.zeros((2, 3)), 0, 3)
    with pytest.raises(ValueError, match="min_samples must be at least 1, got 0"):
        dbscan_labels(np.zeros((2, 3)), 1.0, 0)
    with pytest.raises(ValueError, match=r"2-D array of rows, got shape \(3,\)"):
        dbscan_labels(np.zeros(3), 1.0, 1)
