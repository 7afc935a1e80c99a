"""Image classifiers report the memory they really hold (the model cache's budget trusts it).

Each is measured in a fresh process as RSS growth from before loading to after every compute
slot ran a full batch (ONNX Runtime's arena and LiteRT's interpreters keep that memory). The
kiosk KNN is measured with tracemalloc in ``test_knn.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.external import BIRDS_MODEL, require


@pytest.mark.parametrize(
    ("kind", "slots", "max_batch"),
    [("onnx", 2, 8), ("onnx-lean", 2, 8), ("tflite", 2, 8), ("tflite", 1, 2)],
)
def test_nbytes_is_within_a_quarter_of_rss(kind: str, slots: int, max_batch: int) -> None:
    command = [
        sys.executable,
        "-m",
        "tests.fixtures.model_memory",
        kind,
        str(slots),
        str(max_batch),
    ]
    if kind == "tflite":
        command.append(str(require(BIRDS_MODEL)))
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.75 * figures["rss"] <= figures["nbytes"] <= 1.25 * figures["rss"], figures


def test_evicted_models_give_their_memory_back() -> None:
    """Six lean ONNX classifiers round-robin through a cache that holds two: the process grows
    by about the budget, not by every model ever loaded (without giving memory back it grew by
    150-360 MB here; ONNX Runtime keeps about 0.3 MB per session built)."""
    command = [sys.executable, "-m", "tests.fixtures.cache_memory"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["evictions"] == figures["loads"] - 2, figures
    assert figures["grew"] <= 2 * figures["budget"], figures
