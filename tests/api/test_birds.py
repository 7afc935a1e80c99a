"""The bird photo API (MISSION.md §2): ``POST /`` with JSON, exactly as its clients expect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluiceway.app import create_app
from tests.conftest import app_client
from tests.fixtures.fileserver import FileServer
from tests.fixtures.images import image_settings


@pytest.fixture
async def http(birds_server: FileServer, model_cache: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(image_settings(birds_server, model_cache))) as client:
        yield client


async def ask(http: httpx.AsyncClient, body: Any) -> dict[str, Any]:
    response = await http.post("/", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert set(result) == {"successful_results", "failed_results", "time_taken", "errors"}
    assert isinstance(result["time_taken"], float)
    return result


async def test_top_k_birds_per_url(http: httpx.AsyncClient, birds_server: FileServer) -> None:
    duck, gallinule = (
        birds_server.url("files/bird.jpg"),
        birds_server.url("files/PurpleGallinule.jpg"),
    )
    result = await ask(http, {"images": [duck, gallinule], "k": 4})
    assert result["failed_results"] == [] and result["errors"] == []
    assert list(result["successful_results"]) == [duck, gallinule]
    for url, name in ((duck, "Aix galericulata"), (gallinule, "Porphyrio martinicus")):
        matches = result["successful_results"][url]
        assert len(matches) == 4
        assert set(matches[0]) == {"bird_name", "score"}
        assert matches[0]["bird_name"] == name
        scores = [match["score"] for match in matches]
        assert scores == sorted(scores, reverse=True) and 0.5 < scores[0] <= 1


async def test_k_defaults_to_three_and_zero_is_allowed(
    http: httpx.AsyncClient, birds_server: FileServer
) -> None:
    url = birds_server.url("files/bird.jpg")
    assert len((await ask(http, {"images": [url]}))["successful_results"][url]) == 3
    assert (await ask(http, {"images": [url], "k": 0}))["successful_results"] == {url: []}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"images": [], "k": 3}, "No images provided"),
        ({"k": 3}, "No images provided"),
        (
            {"images": ["http://x.test/a.jpg"] * 11},
            "Too many images provided. Max 10 images allowed",
        ),
        ({"images": ["http://x.test/a.jpg"], "k": 11}, "Max allowed value of K is 10"),
        ({"images": ["http://x.test/a.jpg"], "k": -1}, "Min allowed value of K is 0"),
    ],
)
async def test_validation_messages(http: httpx.AsyncClient, body: Any, message: str) -> None:
    result = await ask(http, body)
    assert result["errors"] == [message]
    assert result["successful_results"] == {} and result["failed_results"] == []


@pytest.mark.parametrize(
    "body", [{"images": ["not a url"]}, {"images": "http://x.test/a.jpg"}, {"images": [3]}, [1, 2]]
)
async def test_malformed_input_is_422(http: httpx.AsyncClient, body: Any) -> None:
    response = await http.post("/", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


async def test_invalid_json_is_422(http: httpx.AsyncClient) -> None:
    response = await http.post("/", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422


async def test_bad_images_fail_alone(http: httpx.AsyncClient, birds_server: FileServer) -> None:
    good = birds_server.url("files/bird.jpg")
    bad = [
        birds_server.url(path)
        for path in (
            "files/notes.txt",
            "files/truncated.jpg",
            "files/bomb.png",
            "status/404",
            "redirect-loop",
            "stall",
        )
    ]
    bad.append("http://10.0.0.1/private.jpg")
    result = await ask(http, {"images": [bad[0], good, *bad[1:]], "k": 1})
    assert list(result["successful_results"]) == [good]
    assert result["failed_results"] == bad
    assert result["errors"] == []


async def test_all_images_failing_is_still_a_clean_200(
    http: httpx.AsyncClient, birds_server: FileServer
) -> None:
    urls = [birds_server.url("status/404"), birds_server.url("files/bomb.png")]
    result = await ask(http, {"images": urls, "k": 3})
    assert result["successful_results"] == {} and result["failed_results"] == urls


async def test_concurrent_requests_share_model_calls(
    birds_server: FileServer, model_cache: Path
) -> None:
    # 24 downloads at once from a threaded test server: on a busy machine they may take over
    # the fixture's 1 s download timeout, and what is tested here is the batching.
    settings = image_settings(birds_server, model_cache, birds_slots=1, fetch_timeout_s=10.0)
    app = create_app(settings)
    urls = [birds_server.url("files/bird.jpg"), birds_server.url("files/PurpleGallinule.jpg")]
    async with app_client(app) as http:
        replies = await asyncio.gather(
            *(http.post("/", json={"images": urls * 1, "k": 1}) for _ in range(12))
        )
    assert all(reply.json()["failed_results"] == [] for reply in replies), [
        reply.json()["errors"] for reply in replies
    ]
    registry = app.state.services.metrics.registry
    images = registry.get_sample_value("sluiceway_batch_size_sum", {"model": "birds"})
    calls = registry.get_sample_value("sluiceway_batch_size_count", {"model": "birds"})
    assert images == 24
    assert calls < images  # images of different requests met in one model call


async def test_a_model_that_cannot_be_downloaded_is_503(
    birds_server: FileServer, tmp_path: Path
) -> None:
    settings = image_settings(
        birds_server, tmp_path, birds_model_url=birds_server.url("status/404")
    )
    async with app_client(create_app(settings)) as http:
        response = await http.post("/", json={"images": [birds_server.url("files/bird.jpg")]})
    assert response.status_code == 503
    assert "birds model is unavailable" in response.json()["detail"]
    assert response.headers["retry-after"]


async def test_requests_naming_a_slow_host_leave_ordinary_ones_alone(
    birds_server: FileServer, model_cache: Path
) -> None:
    # The trial through the API: ten requests naming a host that never finishes took
    # every download slot of the process, and an ordinary request waited for them (0.1 s to
    # 29.5 s). With 4 slots, 2 per host and 2 per request, they hold 2 of the 4.
    bird = (birds_server.files["bird.jpg"], birds_server.files["PurpleGallinule.jpg"])
    with FileServer({"a.jpg": bird[0], "b.jpg": bird[1]}, host="127.0.0.2") as slow:
        settings = image_settings(
            birds_server,
            model_cache,
            fetch_allow_hosts="127.0.0.0/8:*",
            fetch_timeout_s=30.0,
            fetch_concurrency=4,
            fetch_per_host=2,
            fetch_per_request=2,
            request_timeout_s=60.0,
        )
        async with app_client(create_app(settings)) as http:
            slow_urls = [slow.url("held/a.jpg"), slow.url("held/b.jpg")]
            held = [
                asyncio.create_task(http.post("/", json={"images": slow_urls})) for _ in range(10)
            ]
            for _ in range(500):
                if slow.holding == 2:
                    break
                await asyncio.sleep(0.01)
            assert slow.holding == 2
            ordinary = birds_server.url("files/bird.jpg")
            result = await asyncio.wait_for(ask(http, {"images": [ordinary]}), 20)
            assert list(result["successful_results"]) == [ordinary]
            assert not any(task.done() for task in held)
            slow.release()
            for answer in await asyncio.gather(*held):
                assert answer.status_code == 200 and answer.json()["failed_results"] == []
            assert slow.most_held == 2
