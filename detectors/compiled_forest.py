"""A fitted ``IsolationForest`` as flat arrays, scored with numpy in one pass.

scikit-learn scores an isolation forest tree by tree, with a Python call per tree: about
0.1 ms each, 10 ms per call for 100 trees however few rows are scored.  The detector
scores a few dozen subjects per tenant and scope every few seconds, so that overhead would
dominate.  Here all trees walk down together: one numpy gather per level (the trees are at
most ``ceil(log2(max_samples))`` deep), then the paper's path length, exactly as
scikit-learn computes it (the tests compare the two).  Per row it is slower than
scikit-learn's compiled loop, but the detector scores a few dozen rows at a time, and it
needs numpy alone: the detection process scores with it and never loads scikit-learn
(``detectors/isolation_model.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # built from one in the fitting process only
    from sklearn.ensemble import IsolationForest

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]
_CHUNK_ROWS = 8_192  # bounds the (trees × rows) working arrays to a few MB each


def average_path_length(n: Floats) -> Floats:
    """c(n): the average path length of an unsuccessful search in a binary search tree of
    n points, which the isolation forest adds for the points left in a leaf."""
    n = np.asarray(n, dtype=np.float64)
    result = np.zeros_like(n)
    result[n == 2] = 1.0
    many = n > 2
    result[many] = 2.0 * (np.log(n[many] - 1.0) + np.euler_gamma) - 2.0 * (n[many] - 1.0) / n[many]
    return result


@dataclass(frozen=True, slots=True)
class CompiledForest:
    """The trees' node tables, flattened: node ``j`` of tree ``t`` is entry
    ``t * width + j``; leaves point at themselves, so extra levels are no-ops."""

    trees: int
    width: int
    feature: Ints  # column of X tested at each node
    threshold: Floats
    left: Ints
    right: Ints
    leaf_depth: Floats  # depth of the node plus c(samples left in it)
    depth: int
    denominator: float  # trees × c(max_samples)

    @classmethod
    def of(cls, forest: IsolationForest) -> CompiledForest:
        trees = [estimator.tree_ for estimator in forest.estimators_]
        width = max(tree.node_count for tree in trees)
        shape = (len(trees), width)
        feature = np.zeros(shape, dtype=np.intp)
        threshold = np.zeros(shape)
        offsets = (np.arange(len(trees), dtype=np.intp) * width)[:, None]
        left = np.tile(np.arange(width, dtype=np.intp), (len(trees), 1)) + offsets
        right = left.copy()
        leaf_depth = np.zeros(shape)
        for t, (tree, columns) in enumerate(zip(trees, forest.estimators_features_, strict=True)):
            n, base = tree.node_count, t * width
            inner = tree.children_left[:n] >= 0
            own = np.arange(n)
            feature[t, :n] = np.where(inner, np.asarray(columns)[np.maximum(tree.feature, 0)], 0)
            threshold[t, :n] = tree.threshold
            left[t, :n] = base + np.where(inner, tree.children_left, own)
            right[t, :n] = base + np.where(inner, tree.children_right, own)
            depths = _node_depths(tree.children_left[:n], tree.children_right[:n])
            leaf_depth[t, :n] = depths + average_path_length(tree.n_node_samples[:n])
        deepest = max(int(estimator.get_depth()) for estimator in forest.estimators_)
        max_samples = float(forest.max_samples_)
        denominator = len(trees) * float(average_path_length(np.array([max_samples]))[0])
        return cls(
            len(trees),
            width,
            feature.ravel(),
            threshold.ravel(),
            left.ravel(),
            right.ravel(),
            leaf_depth.ravel(),
            deepest,
            denominator,
        )

    def score_samples(self, X: Floats) -> Floats:
        """Equal to ``IsolationForest.score_samples(X)`` (minus the paper's score)."""
        # trees compare float32 inputs against float64 thresholds: round the same way
        X = np.ascontiguousarray(X, dtype=np.float32).astype(np.float64)
        out = np.empty(X.shape[0])
        for start in range(0, X.shape[0], _CHUNK_ROWS):
            chunk = X[start : start + _CHUNK_ROWS]
            out[start : start + chunk.shape[0]] = self._depths(chunk)
        if self.denominator == 0:
            return -np.ones_like(out)
        result: Floats = -(2.0 ** (-out / self.denominator))
        return result

    def _depths(self, X: Floats) -> Floats:
        rows, columns = X.shape
        node = np.repeat(np.arange(self.trees, dtype=np.intp) * self.width, rows)
        cell = np.tile(np.arange(rows, dtype=np.intp) * columns, self.trees)
        flat_x = X.ravel()
        for _ in range(self.depth):
            goes_left = flat_x.take(cell + self.feature.take(node)) <= self.threshold.take(node)
            node = np.where(goes_left, self.left.take(node), self.right.take(node))
        summed: Floats = self.leaf_depth.take(node).reshape(self.trees, rows).sum(axis=0)
        return summed


def _node_depths(children_left: Ints, children_right: Ints) -> Floats:
    # nodes are numbered in depth-first order, so a parent precedes its children
    depth = np.zeros(children_left.shape[0])
    for node in range(children_left.shape[0]):
        for child in (children_left[node], children_right[node]):
            if child >= 0:
                depth[child] = depth[node] + 1.0
    return depth
