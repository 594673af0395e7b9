"""DBSCAN's labels with numpy alone, so the detection process needs no scikit-learn.

Campaign detection clusters a few dozen to a few thousand low-dimensional vectors per
round; loading scikit-learn (and SciPy behind it) for that costs the long-lived worker
about 150 MB.  The labels are scikit-learn's ``DBSCAN(eps, min_samples).fit_predict``
exactly (the tests compare the two): a point is a core point when at least
``min_samples`` points, itself included, lie within ``eps`` (Euclidean, boundary
included); core points within ``eps`` of each other share a cluster; a border point takes
the cluster of the first cluster to reach it; clusters are numbered in the order of their
lowest-numbered core point, the rest is noise (-1).

The neighbourhoods are computed in blocks of rows, breadth first from each cluster's
first core point, so memory stays at a few MB whatever the number of points (time is
quadratic, as with any exact DBSCAN on a dense crowd).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Points = npt.NDArray[np.float64]
Labels = npt.NDArray[np.intp]
NOISE = -1
_BLOCK_CELLS = 1 << 20  # differences held at once: 8 MB of float64


def dbscan_labels(points: Points, eps: float, min_samples: int) -> Labels:
    """Cluster labels of ``points`` (rows), -1 for noise, as scikit-learn's DBSCAN gives."""
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples!r}")
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"points must be a 2-D array of rows, got shape {points.shape}")
    count = points.shape[0]
    labels: Labels = np.full(count, NOISE, dtype=np.intp)
    if count == 0:
        return labels
    radius = eps * eps
    block = max(1, _BLOCK_CELLS // max(1, count * points.shape[1]))

    def neighbours(rows: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
        """Within ``eps`` of each of ``rows``: one row of booleans per row."""
        difference = points[rows, None, :] - points[None, :, :]
        reached: npt.NDArray[np.bool_] = (difference * difference).sum(axis=2) <= radius
        return reached

    everyone = np.arange(count, dtype=np.intp)
    core = np.zeros(count, dtype=bool)
    for start in range(0, count, block):
        rows = everyone[start : start + block]
        core[rows] = neighbours(rows).sum(axis=1) >= min_samples
    cluster = 0
    for seed in np.flatnonzero(core):
        if labels[seed] != NOISE:
            continue
        labels[seed] = cluster
        frontier = np.array([seed], dtype=np.intp)
        while frontier.size:
            reached = np.zeros(count, dtype=bool)
            for start in range(0, frontier.size, block):
                reached |= neighbours(frontier[start : start + block]).any(axis=0)
            new = reached & (labels == NOISE)
            labels[new] = cluster
            frontier = np.flatnonzero(new & core)  # border points reach no further
        cluster += 1
    return labels
