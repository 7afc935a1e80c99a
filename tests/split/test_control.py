"""How the reports of several workers make one model's state on an API node."""

from __future__ import annotations

from sluiceway.split.control import (
    LOADED,
    LOADING,
    READY,
    UNAVAILABLE,
    UNLOADED,
    UNLOADING,
    Desired,
    ModelReport,
    ModelStatus,
    combine,
    read_desired,
)
from sluiceway.split.wire import pack


def test_an_unload_makes_a_model_unavailable_whatever_the_workers_still_say() -> None:
    status = combine(Desired(UNLOADED, 7), [ModelStatus(READY, generation=6, version="1")])
    assert (status.state, status.reason, status.generation) == (UNAVAILABLE, "unloaded", 7)


def test_one_ready_worker_makes_a_model_ready() -> None:
    statuses = [
        ModelStatus(UNAVAILABLE, "out of memory", 3),
        ModelStatus(LOADING, "", 3),
        ModelStatus(READY, "", 3, "2"),
        ModelStatus(READY, "", 2, "10"),
    ]
    status = combine(Desired(LOADED, 3), statuses)
    assert (status.state, status.reason, status.version) == (READY, "", "10")


def test_a_ready_model_says_why_a_worker_kept_its_older_version() -> None:
    kept = "the new version did not load (bad file); version 1 serves"
    status = combine(Desired(LOADED, 4), [ModelStatus(READY, kept, 4, "1")])
    assert (status.state, status.reason) == (READY, kept)


def test_without_a_ready_worker_a_model_is_loading_or_unavailable_with_every_reason() -> None:
    assert combine(None, [ModelStatus(UNLOADING), ModelStatus(UNAVAILABLE, "x")]).state == LOADING
    status = combine(
        Desired(LOADED, 2),
        [ModelStatus(UNAVAILABLE, "no file"), ModelStatus(UNAVAILABLE, "bad warm-up")],
    )
    assert (status.state, status.reason) == (UNAVAILABLE, "no file; bad warm-up")
    assert combine(None, []) == ModelStatus(UNAVAILABLE, "no live worker serves it")


def test_reports_and_desired_states_survive_redis_and_foreign_values_are_skipped() -> None:
    report = ModelReport(9, {"linear": ModelStatus(READY, "", 9, "3")})
    assert ModelReport.decode(report.encode()) == report
    assert ModelReport.decode(b"\x93\x02\x01\x80") is None  # another format's version
    assert ModelReport.decode(b"not msgpack at all") is None
    # A later release's fields, of the report and of a model's status: ignored.
    later = pack([1, 9, {"linear": [READY, "", 9, "3", "new"]}, "new"])
    assert ModelReport.decode(later) == report
    desired = read_desired({b"a": b"loaded:3", b"b": b"unloaded:12", b"c": b"gone:1", b"d": b"x"})
    assert desired == {"a": Desired(LOADED, 3), "b": Desired(UNLOADED, 12)}
