"""A server process's memory (``runtime/memory.py``): the collector's settings once it has started,
and the heap's reuse of large request bodies."""

from __future__ import annotations

import asyncio
import gc
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import sluiceway.registry as registry_module
from sluiceway.app import create_app
from sluiceway.runtime.memory import YOUNG_GENERATION, settle_heap
from tests.conftest import fast_settings
from tests.fixtures.onnx_models import row_sum_model


def test_settling_the_heap_freezes_start_up_and_enlarges_only_the_young_generation() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    kept = object.__new__(type("Kept", (), {}))  # tracked by the collector, built at "start-up"
    try:
        settle_heap()
        assert gc.is_tracked(kept)
        assert all(found is not kept for found in gc.get_objects())  # frozen: never scanned
        assert gc.get_threshold() == (YOUNG_GENERATION, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


FAULTS_PER_BODY = """
import json, resource, sys
from sluiceway.runtime.memory import keep_large_messages, map_large_blocks
if sys.argv[1] == "mapped":
    map_large_blocks()
else:
    keep_large_messages(16 * 1024 * 1024)
chunks = [bytes(64 * 1024) for _ in range(10)]  # a 640 KiB body as it is read, in pieces
for _ in range(5):
    body = b"".join(chunks); del body
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    body = b"".join(chunks); del body
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 200))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's heap thresholds")
def test_large_bodies_reuse_their_memory_where_large_blocks_are_mapped_on_their_own() -> None:
    # Fixing the mapping threshold alone left glibc's trim threshold at 128 KiB: a 640 KiB
    # body freed at the top of the heap went back to the system and was faulted in again for
    # the next one (160 pages each). A fresh process each, since the thresholds are for good.
    def faults(mode: str) -> float:
        command = [sys.executable, "-c", FAULTS_PER_BODY, mode]
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
        return float(done.stdout)

    assert faults("mapped") > 100  # what a repository server paid per body before
    assert faults("kept") < 5


def test_a_server_with_a_repository_keeps_large_bodies_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    row_sum_model(tmp_path / "rowsum" / "model.onnx")
    (tmp_path / "rowsum" / "config.toml").write_text('platform = "onnx"\n')
    kept: list[int] = []
    monkeypatch.setattr(registry_module, "keep_large_messages", kept.append)
    settings = fast_settings(model_repository=str(tmp_path), max_body_bytes=3 * 1024 * 1024)
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(start())
    assert kept == [3 * 1024 * 1024]
