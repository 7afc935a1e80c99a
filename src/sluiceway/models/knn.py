"""The kiosk's tenant model: k-nearest-neighbours fitted per restaurant, with the seed's cost.

The seed simulates GPU work with sleeps; we keep its cost model (a fit costs ``fit_cost_s``;
one inference call over n query vectors costs ``base + per_query * (n - 1)``) and compute the
real scikit-learn prediction alongside, so labels are true and batching is what pays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import sklearn
from sklearn.neighbors import KNeighborsClassifier

from sluiceway.models.base import BatchPolicy, Model, ModelKind

# sklearn re-validates every input on every call (~1 ms for a 2-feature query); inputs are
# validated at the edge, so skip that. This is sklearn's process-wide config.
sklearn.set_config(assume_finite=True, skip_parameter_validation=True)

# Above this many (training rows × query vectors) a prediction runs in a thread rather than
# on the event loop; below it the thread hand-off costs more than the prediction.
_INLINE_WORK = 50_000


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
        self._nbytes = int(classifier._fit_X.nbytes) * 2 + 2048

    @property
    def nbytes(self) -> int:
        return self._nbytes

    async def infer(self, inputs: Sequence[Any]) -> list[Any]:
        """Each input is an (n, features) array; its result is the list of n labels."""
        queries = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
        if queries.shape[0] * self._rows > _INLINE_WORK:
            labels = await asyncio.to_thread(self._classifier.predict, queries)
        else:
            labels = self._classifier.predict(queries)
        await asyncio.sleep(self._base_cost_s + self._per_query_cost_s * (len(queries) - 1))
        results: list[Any] = []
        start = 0
        for item in inputs:
            stop = start + item.shape[0]
            results.append(labels[start:stop].tolist())
            start = stop
        return results


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

    async def load(self, spec: Any) -> FittedKNN:
        """Fit on ``spec``, an int array of shape (rows, features + 1)."""
        rows = np.asarray(spec)
        classifier = KNeighborsClassifier(n_neighbors=self.neighbors)
        features = rows[:, :-1].astype(np.float64)
        await asyncio.to_thread(classifier.fit, features, rows[:, -1])
        await asyncio.sleep(self._fit_cost_s)
        return FittedKNN(classifier, len(rows), self._base_cost_s, self._per_query_cost_s)
