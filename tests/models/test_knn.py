"""The tenant KNN gives scikit-learn's labels and charges the seed's simulated cost."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.neighbors import KNeighborsClassifier

from sluiceway.models.base import BatchPolicy
from sluiceway.models.knn import TenantKNN

POLICY = BatchPolicy(slots=1, max_batch=64)


def kind(**costs: float) -> TenantKNN:
    values = {"fit_cost_s": 0.0, "base_cost_s": 0.0, "per_query_cost_s": 0.0, **costs}
    return TenantKNN(POLICY, neighbors=3, **values)


@st.composite
def training_and_queries(draw: st.DrawFn) -> tuple[np.ndarray, list[np.ndarray]]:
    rows = draw(st.integers(3, 40))
    features = draw(st.integers(1, 3))
    # A narrow value range makes equal distances (ties) common, where implementations differ.
    span = draw(st.integers(1, 6))
    values = arrays(np.int64, (rows, features), elements=st.integers(-span, span))
    labels = arrays(np.int64, (rows, 1), elements=st.integers(-2, 4))
    training = np.hstack([draw(values), draw(labels)])
    batches = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    queries = [
        draw(arrays(np.int64, (n, features), elements=st.integers(-span - 1, span + 1)))
        for n in batches
    ]
    return training, queries


@settings(max_examples=300, deadline=None)
@given(training_and_queries())
def test_labels_equal_scikit_learn_predict(case: tuple[np.ndarray, list[np.ndarray]]) -> None:
    training, queries = case
    reference = KNeighborsClassifier(n_neighbors=3).fit(training[:, :-1], training[:, -1])

    async def run() -> list[list[int]]:
        model = await kind().load(training)
        return await model.infer(queries)

    results = asyncio.run(run())
    for query, labels in zip(queries, results, strict=True):
        assert labels == reference.predict(query).tolist()


@pytest.mark.parametrize("neighbors", [1, 3, 5])
@pytest.mark.parametrize("rows", [7, 10, 60, 300])
@pytest.mark.parametrize("grid", [True, False], ids=["integer-grid", "real"])
async def test_same_labels_as_scikit_learn_on_random_sets(
    neighbors: int, rows: int, grid: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Small sets are searched without the tree unless the k-th nearest distance is tied; on
    # an integer grid ties are common and must go the way scikit-learn's tree takes them.
    rng = np.random.default_rng(rows * 10 + neighbors)
    knn = TenantKNN(POLICY, neighbors=neighbors, fit_cost_s=0, base_cost_s=0, per_query_cost_s=0)
    for _ in range(20):
        features = int(rng.integers(1, 4))
        if grid:
            points = rng.integers(-4, 4, (rows, features))  # as the kiosks send them
            queries = rng.integers(-5, 5, (64, features))
        else:
            points = rng.normal(size=(rows, features)).round(int(rng.integers(1, 4)))
            queries = np.vstack([rng.normal(size=(48, features)), points[:16]])
        training = np.hstack([points, rng.integers(0, 4, (rows, 1))])
        reference = KNeighborsClassifier(n_neighbors=neighbors).fit(points, training[:, -1])
        model = await knn.load(training)
        batches = [queries[:1], queries[1:8], queries[8:]]
        labels = [label for batch in await model.infer(batches) for label in batch]
        assert labels == reference.predict(queries).tolist()
    # Nor did a fit find its own vote disagreeing on the probe set and fall back to predict.
    assert "disagrees" not in caplog.text


async def test_one_call_costs_base_plus_per_extra_query() -> None:
    model = await kind(base_cost_s=0.05, per_query_cost_s=0.02).load(
        np.array([[0, 0, 0], [1, 1, 1], [2, 2, 1], [5, 5, 2]])
    )
    five_vectors = [np.zeros((3, 2), dtype=np.int64), np.ones((2, 2), dtype=np.int64)]
    started = time.perf_counter()
    await model.infer(five_vectors)  # in one call
    assert time.perf_counter() - started >= 0.05 + 0.02 * 4


async def test_fitting_costs_the_fit_cost() -> None:
    started = time.perf_counter()
    await kind(fit_cost_s=0.1).load(np.array([[0, 0, 0], [1, 1, 1], [2, 2, 1]]))
    assert time.perf_counter() - started >= 0.1


@pytest.mark.parametrize(("rows", "features", "models"), [(10, 2, 150), (1000, 2, 20), (10, 8, 80)])
async def test_nbytes_matches_the_memory_fitted_models_hold(
    rows: int, features: int, models: int
) -> None:
    # The cache budget is only as honest as nbytes: measure what many fitted models really
    # hold (every allocation they keep alive, numpy's included) against what they report.
    rng = np.random.default_rng(7)
    specs = [
        np.hstack([rng.integers(-50, 50, (rows, features)), rng.integers(0, 3, (rows, 1))])
        for _ in range(models)
    ]
    knn = kind()
    await knn.load(specs[0])  # imports and first-call caches are not the models' memory
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fitted = [await knn.load(spec) for spec in specs]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    reported = sum(model.nbytes for model in fitted)
    assert 0.75 * held <= reported <= 1.25 * held, (reported / models, held / models)
