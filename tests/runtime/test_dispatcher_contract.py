"""One contract, two dispatchers: embedded ``LocalDispatcher`` and ``RedisDispatcher`` with a
worker over a real redis-server. Everything above the seam relies on exactly this."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage
from PIL import Image

from sluiceway.errors import (
    DeadlineExceeded,
    ModelUnavailable,
    Overloaded,
    SluicewayError,
)
from sluiceway.inputs.pixels import prepare_image
from sluiceway.kinds import served_kinds
from sluiceway.models.captioner import CaptionInput
from sluiceway.models.classifier import Pixels, ranked
from sluiceway.models.onnx_classifier import IMAGENET_INPUT
from sluiceway.models.tensors import shape_key
from sluiceway.runtime.dispatch import Dispatcher, LocalDispatcher
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.metrics import Metrics
from sluiceway.split.command import select_kinds
from sluiceway.split.dispatcher import RedisDispatcher
from sluiceway.split.worker import Worker
from tests.conftest import fast_settings
from tests.fixtures.captions import expected_titles
from tests.fixtures.kiosk import expected, knn_job, restaurant
from tests.fixtures.model_repository import LINEAR_CONFIG
from tests.fixtures.onnx_models import linear_model
from tests.fixtures.tiny_git import png_bytes, swatches
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer


@dataclass
class Harness:
    """A started dispatcher and the metrics of the process where its models run."""

    dispatcher: Dispatcher
    compute_metrics: Metrics

    def sample(self, name: str) -> float:
        """A KNN metric of the compute process, read from its registry (0 before any)."""
        value = self.compute_metrics.registry.get_sample_value(name, {"model": "knn"})
        return 0.0 if value is None else value

    def loads(self) -> float:
        return self.sample("sluiceway_model_loads_total")

    def batches(self) -> tuple[float, float]:
        """(inputs, model calls) of the KNN so far."""
        return self.sample("sluiceway_batch_size_sum"), self.sample("sluiceway_batch_size_count")


Start = Callable[..., AbstractAsyncContextManager[Harness]]


@asynccontextmanager
async def _local(models: str = "knn", **overrides: object) -> AsyncIterator[Harness]:
    settings = fast_settings(**overrides)
    metrics = Metrics()
    dispatcher = LocalDispatcher(select_kinds(served_kinds(settings), models), 1 << 30, metrics)
    await dispatcher.start()
    try:
        yield Harness(dispatcher, metrics)
    finally:
        await dispatcher.close()


def _redis(server: RedisServer) -> Start:
    @asynccontextmanager
    async def start(models: str = "knn", **overrides: object) -> AsyncIterator[Harness]:
        settings = fast_settings(
            broker_url=server.url,
            broker_prefix=f"test-{uuid.uuid4().hex[:8]}",
            worker_port=None,
            worker_heartbeat_s=0.2,
            **overrides,
        )
        worker_metrics = Metrics()
        worker = Worker(settings, select_kinds(served_kinds(settings), models), worker_metrics)
        await worker.start()
        dispatcher = RedisDispatcher(settings, Metrics())
        await dispatcher.start()
        try:
            yield Harness(dispatcher, worker_metrics)
        finally:
            await dispatcher.close()
            await worker.close()

    return start


@pytest.fixture(params=["local", "redis"])
def start(request: pytest.FixtureRequest) -> Start:
    """Starts a dispatcher of each implementation with settings overrides."""
    if request.param == "local":
        return _local
    return _redis(request.getfixturevalue("redis_server"))


async def test_ready_and_serves_knn(start: Start) -> None:
    async with start() as harness:
        assert harness.dispatcher.ready()
        assert "knn" in harness.dispatcher.models()


async def test_answers_are_the_models_labels(start: Start) -> None:
    rng = np.random.default_rng(7)
    async with start() as harness:
        trainings = [restaurant(seed) for seed in range(5)]
        queries = [rng.uniform(-10, 10, size=(int(rng.integers(1, 4)), 2)) for _ in range(60)]
        jobs = [knn_job(trainings[i % 5], q) for i, q in enumerate(queries)]
        results = await asyncio.gather(*(harness.dispatcher.submit(job) for job in jobs))
        for i, (query, labels) in enumerate(zip(queries, results, strict=True)):
            assert labels == expected(trainings[i % 5], query)


async def test_one_fit_per_training_set_and_batches_share_calls(start: Start) -> None:
    training = restaurant(1)
    # One slot: no free slot to split over, so the waiting jobs share calls.
    async with start(knn_fit_cost_s=0.2, knn_infer_base_cost_s=0.05, knn_slots=1) as harness:
        queries = np.zeros((1, 2))
        await asyncio.gather(
            *(harness.dispatcher.submit(knn_job(training, queries)) for _ in range(40))
        )
        inputs, calls = harness.batches()
        assert harness.loads() == 1
        assert inputs == 40
        assert calls <= 4, f"40 concurrent jobs of one restaurant took {calls} model calls"


async def test_jobs_whose_callers_left_are_not_run(start: Start) -> None:
    training = restaurant(6)
    # One slot, held by the 0.3 s fit: the jobs wait queued while their callers leave.
    async with start(knn_slots=1, knn_fit_cost_s=0.3) as harness:
        callers = [
            asyncio.ensure_future(harness.dispatcher.submit(knn_job(training, np.zeros((1, 2)))))
            for _ in range(20)
        ]
        await eventually(lambda: harness.sample("sluiceway_queue_depth") == 20)
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        # Each withdrawn unrun, counted where the model runs; the fit goes on meanwhile.
        await eventually(lambda: harness.sample("sluiceway_cancelled_total") == 20)
        assert await harness.dispatcher.submit(knn_job(training, np.ones((1, 2)))) == expected(
            training, np.ones((1, 2))
        )
        inputs, calls = harness.batches()
        assert (inputs, calls) == (1, 1), "only the last caller's job ran"
        assert harness.sample("sluiceway_cancelled_total") == 20


async def test_a_higher_priority_job_runs_before_those_queued_earlier(start: Start) -> None:
    training = restaurant(8)
    # One slot, held by the 1 s fit, and one query per call: the jobs queue behind the fit,
    # in split mode on the worker that read them from the stream.
    async with start(knn_slots=1, knn_max_batch=1, knn_fit_cost_s=1.0) as harness:
        finished: list[str] = []

        def submit(name: str, priority: int = 0) -> asyncio.Future[Any]:
            job = knn_job(training, np.full((1, 2), float(len(finished))), timeout_s=10)
            job.priority = priority
            future = asyncio.ensure_future(harness.dispatcher.submit(job))
            future.add_done_callback(lambda _: finished.append(name))
            return future

        waiting = [submit(f"low{i}") for i in range(4)] + [submit("urgent", priority=5)]
        await eventually(lambda: harness.sample("sluiceway_queue_depth") == 5)
        assert harness.loads() == 0, "the fit must still hold the slot"
        await asyncio.gather(*waiting)
        assert finished[0] == "urgent", finished


async def test_unknown_model_is_unavailable(start: Start) -> None:
    async with start() as harness:
        job = Job(model="nope", payload=np.zeros((1, 2)), deadline=time.time() + 5)
        with pytest.raises(ModelUnavailable):
            await harness.dispatcher.submit(job)


async def test_a_passed_deadline_is_exceeded_and_never_computed(start: Start) -> None:
    async with start() as harness:
        job = knn_job(restaurant(2), np.zeros((1, 2)), timeout_s=-1)
        with pytest.raises(DeadlineExceeded):
            await harness.dispatcher.submit(job)
        # The same restaurant's next job lands in the same queue (and partition) after it:
        # once it is answered, the expired one would have run before it, or with it.
        later = knn_job(restaurant(2), np.zeros((1, 2)))
        assert await harness.dispatcher.submit(later) == expected(restaurant(2), np.zeros((1, 2)))
        assert harness.batches() == (1, 1), "only the later job was computed"


async def test_a_slow_answer_fails_at_the_deadline(start: Start) -> None:
    async with start(knn_fit_cost_s=2.0) as harness:
        job = knn_job(restaurant(3), np.zeros((1, 2)), timeout_s=0.3)
        with pytest.raises(DeadlineExceeded):
            await harness.dispatcher.submit(job)
        # It failed at its deadline, not once the answer came: the 2 s fit is still running.
        assert harness.batches() == (0.0, 0.0)


async def test_a_full_queue_is_overloaded_and_the_rest_answered(start: Start) -> None:
    overrides = {"knn_slots": 1, "knn_max_queue": 8, "broker_max_queue": 8, "knn_fit_cost_s": 0.3}
    async with start(**overrides) as harness:
        training = restaurant(4)
        jobs = [knn_job(training, np.zeros((1, 2))) for _ in range(30)]
        outcomes = await asyncio.gather(
            *(harness.dispatcher.submit(job) for job in jobs), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, Overloaded)]
        answered = [o for o in outcomes if isinstance(o, list)]
        assert len(refused) + len(answered) == 30, outcomes
        assert 15 <= len(refused) <= 23
        assert all(labels == expected(training, np.zeros((1, 2))) for labels in answered)


async def test_a_model_failure_reaches_the_caller_as_a_plain_error(start: Start) -> None:
    # Two training rows for k=3: the fit works, every prediction raises inside the model.
    async with start() as harness:
        job = knn_job(restaurant(5, rows=2), np.zeros((1, 2)))
        with pytest.raises(Exception) as caught:
            await harness.dispatcher.submit(job)
        assert not isinstance(caught.value, SluicewayError)
        assert "n_neighbors" in str(caught.value) or "n_samples" in str(caught.value)


async def test_an_image_classifier_answers_alike_in_both_modes(start: Start) -> None:
    """An image job (a float32 tensor and k, a named tuple) crosses the seam and comes back
    as ranked predictions: the packaged ImageNet model knows this cat."""
    cat = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
    job = Job(
        model="imagenet",
        payload=Pixels(prepare_image(cat, IMAGENET_INPUT, 40_000_000), 3),
        deadline=time.time() + 30,
    )
    async with start(models="imagenet") as harness:
        top = ranked(await harness.dispatcher.submit(job))
    assert [p.label for p in top][:1] == ["Egyptian cat"]
    assert len(top) == 3
    assert top[0].score == pytest.approx(0.714, abs=0.01)


async def test_a_captioner_answers_alike_in_both_modes(start: Start, tiny_git: Path) -> None:
    """A caption job (a uint8 picture) crosses the seam and comes back as the title the model
    gives the same picture when called directly."""
    pictures = [png_bytes(picture) for picture in swatches(3)]
    expected = await expected_titles(tiny_git, pictures)
    shape = CaptionInput()
    jobs = [
        Job(
            model="caption",
            payload=shape.prepare(Image.open(io.BytesIO(data)).convert("RGB")),
            deadline=time.time() + 30,
        )
        for data in pictures
    ]
    async with start(models="caption", caption_model=str(tiny_git)) as harness:
        titles = await asyncio.gather(*(harness.dispatcher.submit(job) for job in jobs))
    assert titles == expected
    assert all(isinstance(title, str) and title for title in titles)


async def test_a_repository_model_answers_alike_in_both_modes(start: Start, tmp_path: Path) -> None:
    """Named tensors cross the seam; requests of several row counts come back with their own
    rows of ``x @ W + b``, from a model a worker loads from the shared repository folder."""
    folder = tmp_path / "models" / "linear"
    weights = linear_model(folder / "model.onnx")
    (folder / "config.toml").write_text(LINEAR_CONFIG)
    rng = np.random.default_rng(4)
    inputs = [rng.normal(size=(rows, 4)).astype(np.float32) for rows in (1, 3, 2, 1)]
    jobs = [
        Job(model="linear", payload={"x": x}, key=shape_key({"x": x}), deadline=time.time() + 30)
        for x in inputs
    ]
    async with start(models="linear", model_repository=str(tmp_path / "models")) as harness:
        results = await asyncio.gather(*(harness.dispatcher.submit(job) for job in jobs))
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_allclose(result["y"], x @ weights[:4] + weights[4], rtol=1e-5)
