"""The kiosk contract (MISSION.md §1) through HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import threading

import httpx
import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from sluiceway.api import kiosk
from sluiceway.app import create_app
from tests.conftest import app_client, fast_settings
from tests.fixtures.live_server import live_server
from tests.fixtures.waiting import eventually


def restaurant(seed: int, rows: int = 10) -> list[list[int]]:
    """Training rows as the kiosk load test makes them: features in [-10, 10), labels in [0, 3)."""
    rng = np.random.default_rng(seed)
    features = rng.integers(-10, 10, size=(rows, 2))
    labels = rng.integers(0, 3, size=(rows, 1))
    return np.hstack([features, labels]).tolist()


def body(training: list[list[int]], query: object) -> dict[str, object]:
    return {"training_data": {"training_data": training}, "query_input": {"query_input": query}}


def expected(training: list[list[int]], queries: list[list[int]]) -> list[int]:
    rows = np.array(training)
    model = KNeighborsClassifier(n_neighbors=3).fit(rows[:, :-1], rows[:, -1])
    return [int(label) for label in model.predict(np.array(queries))]


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_get_with_json_body_answers_one_label_per_vector(client: httpx.AsyncClient) -> None:
    training = restaurant(1)
    rng = np.random.default_rng(7)
    queries = rng.integers(-10, 10, size=(20, 2)).tolist()
    response = await client.request("GET", "/classify", json=body(training, queries))
    assert response.status_code == 200
    assert response.json() == {"classification_result": expected(training, queries)}


async def test_post_and_a_flat_vector_are_one_query(client: httpx.AsyncClient) -> None:
    training = restaurant(2)
    response = await client.post("/classify", json=body(training, [3, -4]))
    assert response.status_code == 200
    assert response.json() == {"classification_result": expected(training, [[3, -4]])}


async def test_ping(client: httpx.AsyncClient) -> None:
    response = await client.get("/ping")
    assert response.status_code == 200 and response.text == "OK"


async def test_one_fit_per_training_set_under_concurrency_and_labels_stay_right(
    client: httpx.AsyncClient,
) -> None:
    restaurants = [restaurant(seed) for seed in range(5)]
    rng = np.random.default_rng(3)
    calls = []
    for i in range(100):
        training = restaurants[i % 5]
        query = rng.integers(-10, 10, size=2).tolist()
        calls.append((training, query))
    responses = await asyncio.gather(
        *(client.request("GET", "/classify", json=body(t, q)) for t, q in calls)
    )
    for (training, query), response in zip(calls, responses, strict=True):
        assert response.status_code == 200
        assert response.json()["classification_result"] == expected(training, [query])
    text = (await client.get("/metrics")).text
    assert metric(text, 'sluiceway_model_loads_total{model="knn"}') == 5
    assert metric(text, 'sluiceway_batch_size_count{model="knn"}') < 100, "queries were batched"


BAD_BODIES = [
    (b"", 400, "empty body"),
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"query_input": {"query_input": [1, 2]}}).encode(), 422, "training_data"),
    (json.dumps(body([], [1, 2])).encode(), 422, "training_data"),
    (json.dumps(body([[1, 2, 0]] * 2, [1, 2])).encode(), 422, "k=3"),
    (json.dumps(body([[1], [2], [3]], [1])).encode(), 422, "a label"),
    (json.dumps(body([[1, 2, 0], [1, 2], [3, 4, 1]], [1, 2])).encode(), 422, "3 values"),
    (json.dumps(body(restaurant(1), [1.5, 2])).encode(), 422, "valid integer"),
    (json.dumps(body(restaurant(1), ["1", 2])).encode(), 422, "valid integer"),
    (json.dumps(body(restaurant(1), [1, 2, 3])).encode(), 422, "2 features"),
    (json.dumps(body(restaurant(1), [])).encode(), 422, "at least 1"),
    (json.dumps(body(restaurant(1), [[1, 2], [3]])).encode(), 422, "2 features"),
    (json.dumps(body([[1, 2, 0.5]] * 3, [1, 2])).encode(), 422, "valid integer"),
    (json.dumps(body([[1, 2, 2**70]] * 3, [1, 2])).encode(), 422, "64-bit"),
    (json.dumps({"training_data": [[1, 2, 0]], "query_input": [1, 2]}).encode(), 422, "training"),
]


@pytest.mark.parametrize(("raw", "status", "says"), BAD_BODIES)
async def test_bad_input_gets_a_clear_4xx(
    client: httpx.AsyncClient, raw: bytes, status: int, says: str
) -> None:
    response = await client.post(
        "/classify", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]


async def test_body_over_the_limit_is_413() -> None:
    async with app_client(create_app(fast_settings(max_body_bytes=2048))) as http:
        big = body(restaurant(1, rows=500), [1, 2])
        response = await http.post("/classify", json=big)
        assert response.status_code == 413
        assert "limit" in response.json()["detail"]


async def test_full_queue_answers_503_with_retry_after() -> None:
    settings = fast_settings(knn_slots=1, knn_max_queue=2, knn_fit_cost_s=0.3, retry_after_s=2)
    async with app_client(create_app(settings)) as http:
        training = restaurant(9)
        responses = await asyncio.gather(
            *(http.post("/classify", json=body(training, [i % 10, 1])) for i in range(6))
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) == 2 and statuses.count(503) == 4
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "2"
        assert "full" in refused.json()["detail"]


async def test_deadline_passes_504_and_the_work_is_not_done() -> None:
    async with app_client(create_app(fast_settings(knn_fit_cost_s=0.3))) as http:
        response = await http.post(
            "/classify", json=body(restaurant(4), [1, 1]), headers={"x-request-timeout": "0.05"}
        )
        assert response.status_code == 504
        # The next query of that restaurant waits for the same fit and runs after it: had the
        # expired one stayed queued, it would have run first (or in the same call).
        after = await http.post("/classify", json=body(restaurant(4), [2, 2]))
        assert after.status_code == 200
        text = (await http.get("/metrics")).text
        assert metric(text, 'sluiceway_expired_total{model="knn"}') == 1
        assert 'sluiceway_batch_size_sum{model="knn"} 1.0' in text, "only the later query ran"


async def test_bad_timeout_header_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/classify", json=body(restaurant(1), [1, 1]), headers={"x-request-timeout": "soon"}
    )
    assert response.status_code == 400


async def test_ops_endpoints_and_request_ids(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and "knn" in ready.json()["models"]
    response = await client.post(
        "/classify", json=body(restaurant(1), [0, 0]), headers={"x-request-id": "kiosk-42"}
    )
    assert response.headers["x-request-id"] == "kiosk-42"
    assert len((await client.get("/ping")).headers["x-request-id"]) == 16
    text = (await client.get("/metrics")).text
    assert 'sluiceway_requests_total{method="POST",route="/classify",status="200"} 1.0' in text
    assert 'sluiceway_request_duration_seconds_count{route="/classify",status="200"} 1.0' in text
    assert 'sluiceway_queue_depth{model="knn"} 0.0' in text
    assert "sluiceway_batch_size_bucket" in text


async def test_other_methods_get_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/classify", json=body(restaurant(1), [0, 0]))
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}
    assert (await client.post("/ping")).status_code == 405


async def test_ping_is_answered_while_big_training_sets_are_being_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each big body's parse is held until /ping has been answered. Parsed on the event loop,
    # a held parse would hold the loop too, /ping could not be answered, and the hold would
    # end by its hang guard instead of by the test's release: the parse reports which.
    release = threading.Event()
    started = threading.Semaphore(0)
    released: list[bool] = []
    parsed_in: list[threading.Thread] = []
    real_parse = kiosk.parse_classify

    def held_parse(body: bytes, *limits: int) -> object:
        parsed_in.append(threading.current_thread())
        if len(body) > 1024:
            started.release()
            released.append(release.wait(20))
        return real_parse(body, *limits)

    monkeypatch.setattr(kiosk, "parse_classify", held_parse)
    async with app_client(create_app(fast_settings(knn_inline_parse_bytes=1024))) as client:
        big = [
            asyncio.create_task(
                client.post("/classify", json=body(restaurant(seed, rows=2000), [1, 2]))
            )
            for seed in range(4)
        ]
        for _ in big:
            await asyncio.to_thread(started.acquire, timeout=20)
        ping = await client.get("/ping")
        release.set()
        answers = await asyncio.gather(*big)
        small = await client.post("/classify", json=body(restaurant(9), [1, 2]))
    assert ping.text == "OK"
    assert released == [True] * 4, "a big body's parse held the event loop"
    assert [answer.status_code for answer in answers] == [200] * 4
    assert small.status_code == 200
    assert parsed_in[-1] is threading.main_thread(), "a small body is parsed inline"
    assert all(thread is not threading.main_thread() for thread in parsed_in[:4])


async def test_a_big_body_parsed_off_the_loop_gets_the_same_answers() -> None:
    settings = fast_settings(knn_inline_parse_bytes=1024, knn_max_training_rows=5000)
    async with app_client(create_app(settings)) as client:
        rows = restaurant(4, rows=3000)
        good = await client.post("/classify", json=body(rows, [[1, 2], [-3, 4]]))
        ragged = await client.post("/classify", json=body([*rows, [1, 2]], [1, 2]))
        too_many = await client.post("/classify", json=body(rows * 2, [1, 2]))
    assert good.json() == {"classification_result": expected(rows, [[1, 2], [-3, 4]])}
    assert (ragged.status_code, ragged.json()) == (
        422,
        {"detail": "training rows must all have 3 values"},
    )
    assert (too_many.status_code, too_many.json()) == (
        413,
        {"detail": "6000 training rows; at most 5000 are accepted"},
    )


async def test_kiosks_that_hang_up_while_queued_leave_no_work_behind() -> None:
    # One slot, held by the restaurant's 1 s fit: all 100 requests queue behind it.
    env = {"SLUICEWAY_KNN_SLOTS": "1", "SLUICEWAY_KNN_FIT_COST_S": "1.0"}
    payload = json.dumps(body(restaurant(5), [1, 2])).encode()
    request = (
        b"GET /classify HTTP/1.1\r\nhost: kiosk\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    with live_server(env) as url:
        host, port = url.removeprefix("http://").split(":")
        connections = [await asyncio.open_connection(host, int(port)) for _ in range(100)]
        for _, writer in connections:
            writer.write(request)
            await writer.drain()
        async with httpx.AsyncClient(base_url=url) as http:
            depth = 'sluiceway_queue_depth{model="knn"}'

            async def all_queued() -> bool:
                return metric((await http.get("/metrics")).text, depth) == 100

            await eventually(all_queued)  # parsed and queued, the fit still running
            for _, writer in connections:
                writer.close()
            answered = await http.request("GET", "/classify", json=body(restaurant(5), [3, 4]))
            assert answered.status_code == 200, "the fit went on: the next kiosk is served"
            text = (await http.get("/metrics")).text
    assert metric(text, 'sluiceway_cancelled_total{model="knn"}') == 100
    assert 'sluiceway_batch_size_sum{model="knn"} 1.0' in text, "only the last query ran"
    assert metric(text, 'sluiceway_model_loads_total{model="knn"}') == 1


async def test_a_restaurant_over_its_quota_gets_429_and_others_are_served() -> None:
    settings = fast_settings(knn_slots=1, knn_tenant_quota=3, knn_fit_cost_s=0.3, retry_after_s=2)
    async with app_client(create_app(settings)) as http:
        flood, calm = restaurant(11), restaurant(12)
        responses = await asyncio.gather(
            *(http.post("/classify", json=body(flood, [i % 10, 1])) for i in range(8)),
            http.post("/classify", json=body(calm, [1, 1])),
        )
        statuses = [r.status_code for r in responses]
        assert statuses[:8].count(200) == 3 and statuses[:8].count(429) == 5
        assert statuses[8] == 200, "the quota is per restaurant"
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["retry-after"] == "2"
        assert "quota" in refused.json()["detail"]
        text = (await http.get("/metrics")).text
        assert metric(text, 'sluiceway_quota_rejected_total{model="knn"}') == 5
