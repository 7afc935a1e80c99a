"""The split-mode wire codec: jobs, results and errors survive the trip, compactly."""

from __future__ import annotations

import json
import time

import msgpack
import numpy as np
import pytest

from sluiceway.errors import BadInput, DeadlineExceeded, ModelUnavailable, Overloaded
from sluiceway.runtime.jobs import Job
from sluiceway.runtime.stats import Duration, ModelCalls
from sluiceway.split.wire import (
    VERSION,
    CallsRecord,
    CallTiming,
    ErrorRecord,
    JobRecord,
    ResultRecord,
    WireError,
    WorkerRecord,
    decode_cancels,
    encode_cancels,
    live_calls,
    live_workers,
    pack,
    unpack,
)


def test_a_kiosk_job_round_trips_with_its_arrays() -> None:
    queries = np.random.default_rng(0).uniform(-10, 10, size=(7, 2))
    training = np.arange(30, dtype=np.int64).reshape(10, 3)
    job = Job(model="knn", key="abc", spec=training, payload=queries, deadline=time.time() + 3)
    record = JobRecord.decode(JobRecord(job, "sluiceway:reply:n1").encode())
    assert record.reply == "sluiceway:reply:n1"
    got = record.job
    assert (got.id, got.model, got.key, got.deadline) == (job.id, "knn", "abc", job.deadline)
    assert got.payload.dtype == np.float64 and got.payload.shape == (7, 2)
    assert np.array_equal(got.payload, queries)
    assert got.spec.dtype == np.int64 and np.array_equal(got.spec, training)
    got.payload[0, 0] = 1.0  # models may write into their inputs, as in embedded mode


def test_priority_and_tenant_travel_with_the_job() -> None:
    job = Job(
        model="imagenet", payload=b"x", deadline=time.time() + 3, priority=2, tenant="10.0.0.7"
    )
    got = JobRecord.decode(JobRecord(job, "r").encode()).job
    assert (got.priority, got.tenant) == (2, "10.0.0.7")


def test_a_job_without_priority_or_tenant_keeps_the_eight_fields_older_workers_read() -> None:
    job = Job(model="knn", key="k", payload=b"q", deadline=time.time() + 3)
    data = JobRecord(job, "r").encode()
    assert len(unpack(data)) == 8
    got = JobRecord.decode(data).job
    assert (got.priority, got.tenant) == (0, None)


def test_a_job_record_with_a_bad_priority_is_refused() -> None:
    job = Job(model="knn", payload=b"q", deadline=1.0, priority=1)
    fields = unpack(JobRecord(job, "r").encode())
    fields[8] = "high"
    with pytest.raises(WireError):
        JobRecord.decode(pack(fields))


def test_images_travel_as_raw_bytes_not_lists() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    job = Job(model="birds", payload=image, deadline=time.time() + 3)
    data = JobRecord(job, "r").encode()
    assert len(data) < image.nbytes + 200
    assert np.array_equal(JobRecord.decode(data).job.payload, image)


def test_a_job_is_far_smaller_than_json() -> None:
    queries = np.random.default_rng(2).uniform(-10, 10, size=(100, 2))
    job = Job(model="knn", key="k", payload=queries, deadline=1.0)
    assert len(JobRecord(job, "r").encode()) < len(json.dumps(queries.tolist())) / 1.5


def test_non_contiguous_and_zero_size_arrays_round_trip() -> None:
    matrix = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    empty = np.zeros((0, 3), dtype=np.int16)
    got = unpack(pack({"a": matrix, "b": empty}))
    assert np.array_equal(got["a"], matrix) and got["a"].dtype == np.float32
    assert got["b"].shape == (0, 3) and got["b"].dtype == np.int16


def test_results_carry_values_and_numpy_scalars_become_python() -> None:
    value = [{"bird_name": "Robin", "score": np.float32(0.5)}, np.int64(3)]
    record = ResultRecord.decode(ResultRecord("j1", value).encode())
    assert record.job_id == "j1"
    assert record.outcome() == [{"bird_name": "Robin", "score": 0.5}, 3]


@pytest.mark.parametrize("error", [BadInput, Overloaded, DeadlineExceeded, ModelUnavailable])
def test_runtime_errors_come_back_as_their_class(error: type[Exception]) -> None:
    sent = ResultRecord("j", error=ErrorRecord.of(error("what went wrong")))
    with pytest.raises(error, match="what went wrong"):
        ResultRecord.decode(sent.encode()).outcome()


def test_an_error_with_a_later_releases_fields_comes_back_and_a_malformed_one_is_refused() -> None:
    later = msgpack.packb([VERSION, "j", False, ["overloaded", "full", "new"]])
    with pytest.raises(Overloaded, match="full"):
        ResultRecord.decode(later).outcome()
    with pytest.raises(WireError, match="kind and message"):
        ResultRecord.decode(msgpack.packb([VERSION, "j", False, "overloaded"]))


def test_a_models_own_failure_comes_back_as_a_plain_error() -> None:
    sent = ResultRecord("j", error=ErrorRecord.of(ValueError("n_neighbors > n_samples")))
    with pytest.raises(RuntimeError, match="ValueError: n_neighbors > n_samples"):
        ResultRecord.decode(sent.encode()).outcome()


def test_what_cannot_be_sent_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="objects"):
        pack(np.array([object()], dtype=object))
    with pytest.raises(WireError, match="set"):
        pack({1, 2})


@pytest.mark.parametrize(
    "data",
    [b"\xc1garbage", msgpack.packb([99, "id", True, 1]), msgpack.packb({"not": "a record"})],
)
def test_foreign_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        ResultRecord.decode(data)
    with pytest.raises(WireError):
        JobRecord.decode(data)


def test_the_registry_keeps_only_workers_heard_from_lately() -> None:
    now = 1000.0
    registry = {
        b"w1": WorkerRecord(("knn",), now - 1).encode(),
        b"w2": WorkerRecord(("knn", "birds"), now - 10).encode(),
        b"w3": b"junk",
        b"w4": msgpack.packb([VERSION, 7, "soon"]),  # the right length, the wrong types
    }
    live = live_workers(registry, now, dead_after_s=5)
    assert list(live) == ["w1"]
    assert live["w1"].models == ("knn",)


def test_several_results_travel_in_one_message() -> None:
    labels = ResultRecord("a", np.array([2, 0]))
    failed = ResultRecord("b", error=ErrorRecord.of(Overloaded("full")))
    got = ResultRecord.decode_all(labels.encode() + failed.encode())
    assert [result.job_id for result in got] == ["a", "b"]
    assert np.array_equal(got[0].outcome(), [2, 0])
    with pytest.raises(Overloaded, match="full"):
        got[1].outcome()


def test_a_reply_message_with_a_foreign_record_is_refused() -> None:
    with pytest.raises(WireError):
        ResultRecord.decode_all(ResultRecord("a", 1).encode() + msgpack.packb([99, "x"]))
    with pytest.raises(WireError):
        ResultRecord.decode_all(b"\xc1")  # never valid msgpack


def test_a_result_carries_the_timing_of_its_model_call() -> None:
    timed = ResultRecord.decode(ResultRecord("j", [1], timing=CallTiming(0.25, 0.5)).encode())
    assert timed.outcome() == [1] and timed.timing == CallTiming(0.25, 0.5)
    plain = ResultRecord.decode(ResultRecord("j", [1]).encode())  # as a worker before sent it
    assert plain.outcome() == [1] and plain.timing is None
    # A timing that cannot be one is no timing; the answer itself stands.
    for compute_s, ago in [("soon", 0.5), (None, None), (-1.0, 2.0), (5.0, 1.0), (0.1, 1e400)]:
        odd = ResultRecord.decode(msgpack.packb([VERSION, "j", True, 1, compute_s, ago]))
        assert odd.outcome() == 1 and odd.timing is None


def test_fields_a_later_release_adds_are_ignored() -> None:
    """So the next release may add a field to a job or a result without an upgrade order."""
    job = JobRecord(Job(model="knn", payload=b"q", deadline=5.0, priority=1), "reply:a")
    later = msgpack.packb([*msgpack.unpackb(job.encode(), raw=False), "new"])
    got = JobRecord.decode(later)
    assert (got.job.model, got.job.priority, got.reply) == ("knn", 1, "reply:a")
    result = ResultRecord("j", [2], timing=CallTiming(0.1, 0.2))
    later = msgpack.packb([*msgpack.unpackb(result.encode(), raw=False), "new"])
    assert ResultRecord.decode(later).timing == CallTiming(0.1, 0.2)
    cancels = msgpack.packb([*msgpack.unpackb(encode_cancels([("j", 5.0)])), "new"])
    assert decode_cancels(cancels) == [("j", 5.0)]
    beat = msgpack.packb([*msgpack.unpackb(WorkerRecord(("knn",), 9.0).encode()), "new"])
    assert WorkerRecord.decode(beat) == WorkerRecord(("knn",), 9.0)
    with pytest.raises(WireError):  # nine fields: a priority without its tenant
        JobRecord.decode(msgpack.packb([*msgpack.unpackb(job.encode(), raw=False)][:9]))


def test_a_workers_model_calls_round_trip_and_later_fields_are_ignored() -> None:
    calls = {
        "linear": ModelCalls(3, {1: Duration(2, 400), 4: Duration(1, 900)}),
        "knn": ModelCalls(1, {1: Duration(1, 50)}),
    }
    data = CallsRecord(calls).encode()
    assert len(data) < 64  # compact: one heartbeat carries it
    assert CallsRecord.decode(data) == CallsRecord(calls)
    assert CallsRecord.decode(CallsRecord({}).encode()) == CallsRecord({})
    # A later release's fields, at every level: ignored.
    later = msgpack.packb(
        [VERSION, {"linear": [3, [[1, 2, 400, "new"], [4, 1, 900]], "new"]}, "new"],
        use_bin_type=True,
    )
    assert CallsRecord.decode(later) == CallsRecord(
        {"linear": ModelCalls(3, {1: Duration(2, 400), 4: Duration(1, 900)})}
    )


def test_a_foreign_call_record_is_none() -> None:
    assert CallsRecord.decode(msgpack.packb([VERSION + 1, {}])) is None  # another version
    assert CallsRecord.decode(b"\xc1") is None  # never valid msgpack
    assert CallsRecord.decode(msgpack.packb({"linear": 3})) is None
    assert CallsRecord.decode(msgpack.packb([VERSION, {"linear": [3]}])) is None
    assert CallsRecord.decode(msgpack.packb([VERSION, {"linear": [3, [[1, "two", 5]]]}])) is None
    assert CallsRecord.decode(WorkerRecord(("linear",), 1.0).encode()) is None
    infinite = msgpack.packb([VERSION, {"linear": [float("inf"), []]}])
    assert CallsRecord.decode(infinite) is None  # not a 500 on the statistics


def test_the_calls_of_live_workers_are_summed_by_model_and_batch_size() -> None:
    now = time.time()
    registry = {
        b"a": WorkerRecord(("linear",), now).encode(),
        b"b": WorkerRecord(("linear", "knn"), now - 1).encode(),
        b"dead": WorkerRecord(("linear",), now - 60).encode(),
        b"odd": WorkerRecord(("linear",), now).encode(),  # live, its counts unreadable
    }
    counts = {
        b"a": CallsRecord({"linear": ModelCalls(2, {1: Duration(1, 10), 2: Duration(1, 30)})}),
        b"b": CallsRecord(
            {
                "linear": ModelCalls(1, {2: Duration(1, 20)}),
                "knn": ModelCalls(1, {1: Duration(1, 5)}),
            }
        ),
        b"dead": CallsRecord({"linear": ModelCalls(9, {1: Duration(9, 90)})}),
        b"gone": CallsRecord({"linear": ModelCalls(9, {1: Duration(9, 90)})}),  # not registered
    }
    encoded = {worker: record.encode() for worker, record in counts.items()}
    total = live_calls(registry, encoded | {b"odd": b"\xc1"}, now, dead_after_s=5.0)
    assert total == {
        "linear": ModelCalls(3, {1: Duration(1, 10), 2: Duration(2, 50)}),
        "knn": ModelCalls(1, {1: Duration(1, 5)}),
    }
