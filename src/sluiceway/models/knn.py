"""The kiosk's tenant model: k-nearest-neighbours fitted per restaurant, with the seed's cost.

The seed simulates GPU work with sleeps; we keep its cost model (a fit costs ``fit_cost_s``;
one inference call over n query vectors costs ``base + per_query * (n - 1)``) and compute the
real scikit-learn prediction alongside, so labels are true and batching is what pays.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sluiceway.models.base import BatchPolicy, Model, ModelKind
from sluiceway.models.costs import CallCost, DeclaredCost

if TYPE_CHECKING:
    from sklearn.neighbors import KNeighborsClassifier

logger = logging.getLogger(__name__)


@functools.cache
def _classifier_class() -> type[KNeighborsClassifier]:
    """scikit-learn's classifier, imported on first use (``TenantKNN.prepare``): it weighs 88 MB
    of RSS and 1.4 s of start-up (2026-12-01), which every Sluiceway process paid when this
    module imported it, split-mode API nodes and workers that never fit a k-NN included."""
    import sklearn
    from sklearn.neighbors import KNeighborsClassifier

    # sklearn re-validates every input on every call (~1 ms for a 2-feature query); inputs are
    # validated at the edge, so skip that. sklearn keeps its config per thread: this sets the
    # calling thread's, the event loop's (``prepare`` runs there), where small predictions run.
    sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
    found: type[KNeighborsClassifier] = KNeighborsClassifier
    return found


# Memory of a fitted model beyond its arrays: the classifier's and tree's Python objects and
# attribute dicts, the array headers, this wrapper and its cache entry. Measured as RSS growth
# over 10 000 fits of 10-row models (6.2 KB each, of which 0.6 KB arrays) and checked against
# tracemalloc in tests/models/test_knn.py; it does not grow with the rows.
_FIXED_BYTES = 5_800

# Above this many (training rows × query vectors) a prediction runs in a thread rather than
# on the event loop; below it the thread hand-off costs more than the prediction.
_INLINE_WORK = 50_000

# Up to this many training rows the nearest rows are found by comparing every distance in
# numpy: the tree's ``query`` validates its input with ``check_array`` (~80 µs a call in
# scikit-learn 1.9, most of it asking narwhals whether a numpy array is a dataframe) against a
# few µs for the distances of a small set. Larger sets keep the tree.
_DIRECT_ROWS = 256

# Distances this close (relative) count as a tie: the tree and numpy may round a sum of
# squares differently for non-integer features, so a near tie is left to the tree.
_TIE_TOLERANCE = 1e-9


class FittedKNN(Model):
    """One restaurant's fitted classifier."""

    def __init__(
        self,
        classifier: KNeighborsClassifier,
        rows: int,
        base_cost_s: float,
        per_query_cost_s: float,
    ) -> None:
        self._classifier = classifier
        self._rows = rows
        self._base_cost_s = base_cost_s
        self._per_query_cost_s = per_query_cost_s
        self._nbytes = fitted_nbytes(classifier)
        # The tree's own float64 copy of the training rows (a view, no new memory), for the
        # direct search of a small set.
        tree = getattr(classifier, "_tree", None)
        direct = (
            rows <= _DIRECT_ROWS and getattr(classifier, "effective_metric_", "") == "euclidean"
        )
        self._points = tree.get_arrays()[0] if tree is not None and direct else None
        self._use_tree = _tree_vote_agrees(classifier, self._points)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def predict(self, queries: np.ndarray) -> np.ndarray:
        """scikit-learn's labels for ``queries`` (int64, shape (n, features))."""
        if self._use_tree:
            return _tree_vote(self._classifier, queries, self._points)
        labels: np.ndarray = self._classifier.predict(queries)
        return labels

    async def infer(self, inputs: Sequence[Any]) -> list[Any]:
        """Each input is an (n, features) array; its result is the list of n labels."""
        queries = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
        if queries.shape[0] * self._rows > _INLINE_WORK:
            labels = await asyncio.to_thread(self.predict, queries)
        else:
            labels = self.predict(queries)
        await asyncio.sleep(self._base_cost_s + self._per_query_cost_s * (len(queries) - 1))
        results: list[Any] = []
        start = 0
        for item in inputs:
            stop = start + item.shape[0]
            results.append(labels[start:stop].tolist())
            start = stop
        return results


def fitted_nbytes(classifier: KNeighborsClassifier) -> int:
    """Memory held by a fitted classifier: every array it keeps plus the fixed overhead.

    The arrays are the training rows as given (``_fit_X``), the tree's own float64 copy, its
    index, node data and bounds, and the encoded labels: about ``16 * features + 20`` bytes a
    row, counted from the arrays themselves rather than estimated.
    """
    arrays: list[Any] = [classifier._fit_X, getattr(classifier, "_y", None), classifier.classes_]
    tree = getattr(classifier, "_tree", None)
    if tree is not None:
        arrays.extend(tree.get_arrays())
    held = sum(int(array.nbytes) for array in arrays if isinstance(array, np.ndarray))
    return held + _FIXED_BYTES


def _tree_vote(
    classifier: KNeighborsClassifier, queries: np.ndarray, points: np.ndarray | None = None
) -> np.ndarray:
    """``predict`` for uniform weights, minus its per-call overhead.

    ``predict`` asks the fitted KD/ball tree for the k nearest rows, then takes the most common
    label, the smallest label winning ties (``scipy.stats.mode``). At one query per call its
    validation, joblib dispatch and generic ``mode`` cost ~1 ms against ~100 µs for the tree
    query itself; we find the same rows (``_nearest``) and take the same vote.
    """
    if points is None:
        neighbours = classifier._tree.query(
            queries, k=classifier.n_neighbors, return_distance=False
        )
    else:
        neighbours = _nearest(classifier, queries, points)
    encoded = classifier._y[neighbours]  # label indices into classes_ (sorted)
    counts = np.zeros((len(queries), len(classifier.classes_)), dtype=np.intp)
    np.add.at(counts, (np.arange(len(queries))[:, None], encoded), 1)
    labels: np.ndarray = classifier.classes_[counts.argmax(axis=1)]  # first max: smallest label
    return labels


def _nearest(
    classifier: KNeighborsClassifier, queries: np.ndarray, points: np.ndarray
) -> np.ndarray:
    """The k nearest of ``points`` (the tree's training rows) to each query, as the tree finds them.

    When the k-th and the (k+1)-th distances differ, the k nearest rows are the same for any
    exact search, so numpy's are the tree's. When they tie, which of the tied rows the tree
    keeps is its own affair (its heap and its walk), so those queries ask the tree itself.
    Only the set of rows matters: the vote does not depend on their order.
    """
    k = classifier.n_neighbors
    if k >= len(points):  # every row is a neighbour
        return np.broadcast_to(np.arange(len(points)), (len(queries), len(points)))
    gaps = queries.astype(np.float64)[:, None, :] - points[None, :, :]
    distances = np.einsum("qrf,qrf->qr", gaps, gaps)  # squared, as the tree compares them
    order = np.argpartition(distances, (k - 1, k), axis=1)
    every = np.arange(len(queries))
    kth, after = distances[every, order[:, k - 1]], distances[every, order[:, k]]
    nearest = order[:, :k]
    tied = after <= kth * (1 + _TIE_TOLERANCE)
    if tied.any():
        nearest[tied] = classifier._tree.query(queries[tied], k=k, return_distance=False)
    return nearest


def _tree_vote_agrees(classifier: KNeighborsClassifier, points: np.ndarray | None) -> bool:
    """Whether the tree vote may stand in for ``predict`` on this fitted model.

    It relies on fitted internals (``_tree``, ``_y``), so each fit checks it against
    ``predict`` on a probe set first and falls back to ``predict`` if scikit-learn changed.
    """
    if getattr(classifier, "_fit_method", None) not in ("kd_tree", "ball_tree"):
        return False
    fitted = classifier._fit_X
    if getattr(classifier, "_y", None) is None or np.ndim(classifier._y) != 1:
        return False
    rng = np.random.default_rng(0)
    low, high = fitted.min(axis=0) - 1, fitted.max(axis=0) + 1
    probe = np.vstack([fitted, rng.uniform(low, high, size=(64, fitted.shape[1])).round()])
    try:
        voted = _tree_vote(classifier, probe, points)
        agrees = bool(np.array_equal(voted, classifier.predict(probe)))
    except (AttributeError, IndexError, TypeError, ValueError):
        return False
    if not agrees:
        logger.warning("tree vote disagrees with KNeighborsClassifier.predict; using predict")
    return agrees


class TenantKNN(ModelKind):
    """KNN models fitted from training rows carried in the request (last column = label)."""

    name = "knn"

    def __init__(
        self,
        policy: BatchPolicy,
        *,
        neighbors: int = 3,
        fit_cost_s: float = 2.0,
        base_cost_s: float = 0.2,
        per_query_cost_s: float = 0.05,
    ) -> None:
        self.policy = policy
        self.neighbors = neighbors
        self._fit_cost_s = fit_cost_s
        self._base_cost_s = base_cost_s
        self._per_query_cost_s = per_query_cost_s

    def call_cost(self) -> CallCost:
        """The simulated cost, exactly: ``base + per_query * (n - 1)`` for one query per job."""
        return DeclaredCost(self._base_cost_s - self._per_query_cost_s, self._per_query_cost_s)

    def prepare(self) -> None:
        _classifier_class()

    async def load(self, spec: Any) -> FittedKNN:
        """Fit on ``spec``, an int array of shape (rows, features + 1)."""
        rows = np.asarray(spec)
        classifier = _classifier_class()(n_neighbors=self.neighbors)
        # Fitted on the integers as sent: scikit-learn breaks distance ties differently for
        # int64 and float64 inputs, and the kiosk's reference fits on its integers.
        await asyncio.to_thread(classifier.fit, rows[:, :-1], rows[:, -1])
        await asyncio.sleep(self._fit_cost_s)
        return FittedKNN(classifier, len(rows), self._base_cost_s, self._per_query_cost_s)
