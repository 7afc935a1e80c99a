"""The seed's restaurants: five fixed random training sets, and the labels they should give."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

RESTAURANTS = 5
ROWS = 10
LOW, HIGH = -10, 10  # features in [-10, 10)
LABELS = 3  # labels in [0, 3)


def training_sets(seed: int = 2026) -> list[list[list[int]]]:
    """Each restaurant's fixed training rows ``[x1, x2, label]``."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(RESTAURANTS):
        features = rng.integers(LOW, HIGH, size=(ROWS, 2))
        labels = rng.integers(0, LABELS, size=(ROWS, 1))
        sets.append(np.hstack([features, labels]).tolist())
    return sets


def answer_key(training: list[list[int]]) -> dict[tuple[int, int], int]:
    """What scikit-learn's KNN (k=3) says for every possible query, so the load generator can
    check each answer without running a model per request itself."""
    rows = np.array(training)
    model = KNeighborsClassifier(n_neighbors=3).fit(rows[:, :-1], rows[:, -1])
    grid = np.array([(a, b) for a in range(LOW, HIGH) for b in range(LOW, HIGH)])
    return {
        (int(a), int(b)): int(label)
        for (a, b), label in zip(grid, model.predict(grid), strict=True)
    }
