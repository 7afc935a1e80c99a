"""The captions contract (MISSION.md §4) through HTTP, on a tiny GIT model built offline."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from sluiceway.inputs.encoded import MAX_IMAGE_BYTES
from sluiceway.runtime.dispatch import LocalDispatcher
from tests.fixtures.captions import caption_app, expected_titles
from tests.fixtures.tiny_git import png_bytes, swatches
from tests.fixtures.waiting import eventually

PATH = "/api/v1/predictions"


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def png_bomb(width: int, height: int) -> bytes:
    """A PNG a few hundred bytes long whose header claims ``width``×``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
async def client(tiny_git: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with caption_app(tiny_git) as http:
        yield http


def lane_slots(http: httpx.AsyncClient) -> asyncio.Semaphore:
    """The caption model's compute slots, to hold them the way a long generate call would."""
    transport = http._transport
    assert isinstance(transport, httpx.ASGITransport)
    dispatcher = transport.app.state.services.dispatcher  # type: ignore[attr-defined]
    assert isinstance(dispatcher, LocalDispatcher)
    return dispatcher.lane("caption").slots


async def test_data_url_and_bare_base64_get_the_models_title(
    client: httpx.AsyncClient, tiny_git: Path
) -> None:
    pictures = [png_bytes(image) for image in swatches(3)]
    titles = await expected_titles(tiny_git, pictures)
    for data, title in zip(pictures, titles, strict=True):
        for image in (data_url(data), base64.b64encode(data).decode()):
            response = await client.post(PATH, json={"image": image})
            assert response.status_code == 200, response.text
            assert response.json() == {"title": title}


async def test_jpeg_gif_and_a_wrongly_declared_type_are_captioned(
    client: httpx.AsyncClient,
) -> None:
    picture = swatches(1, size=(120, 90))[0]
    gif = io.BytesIO()
    picture.save(gif, format="GIF")
    for image in (
        data_url(jpeg_bytes(picture), "image/jpeg"),
        data_url(gif.getvalue(), "image/gif"),
        data_url(png_bytes(picture), "image/jpeg"),  # the bytes are trusted, not the label
    ):
        response = await client.post(PATH, json={"image": image})
        assert response.status_code == 200, response.text
        assert isinstance(response.json()["title"], str)


async def test_get_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.get(PATH)).status_code == 405


TEXT_FILE = b"Shopping list:\n- eggs\n- milk\n"
PNG = png_bytes(swatches(1)[0])


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b"", "image", "This field is required."),
        (b"{}", "image", "This field is required."),
        (b'{"picture": "x"}', "image", "This field is required."),
        (b'{"image": null}', "image", "This field may not be null."),
        (b'{"image": 42}', "image", "Not a valid string."),
        (b'{"image": ["a"]}', "image", "Not a valid string."),
        (b'{"image": "  "}', "image", "This field may not be blank."),
        (b"image=abc", "detail", "JSON parse error"),
        (b'{"image": "abc"', "detail", "JSON parse error"),
        (b'["image"]', "non_field_errors", "Expected a dictionary, but got list"),
        (b'{"image": "@@@@"}', "image", "invalid base64"),
        (b'{"image": "data:text/plain;base64,aGVsbG8="}', "image", "media type must be image/*"),
        (b'{"image": "data:image/png,abc"}', "image", "must be base64-encoded"),
    ],
)
async def test_bad_bodies_are_400_with_the_reason(
    client: httpx.AsyncClient, body: bytes, field: str, reason: str
) -> None:
    response = await client.post(PATH, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    message = response.json()[field]
    assert reason in (message[0] if isinstance(message, list) else message)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (base64.b64encode(TEXT_FILE).decode(), "not an image"),
        (data_url(TEXT_FILE, "image/png"), "not an image"),
        (data_url(PNG[: len(PNG) // 2]), "truncated PNG"),
        (data_url(png_bomb(100_000, 100_000)), "pixels"),
        (data_url(PNG + bytes(MAX_IMAGE_BYTES + 1 - len(PNG))), "Maximum image size exceeded"),
    ],
    ids=["text-file", "text-file-as-png", "truncated-png", "decompression-bomb", "5MiB+1"],
)
async def test_bad_images_are_400_with_the_reason(
    client: httpx.AsyncClient, image: str, reason: str
) -> None:
    response = await client.post(PATH, json={"image": image})
    assert response.status_code == 400
    (message,) = response.json()["image"]
    assert reason in message


async def test_five_mib_exactly_is_captioned(client: httpx.AsyncClient) -> None:
    padded = PNG + bytes(MAX_IMAGE_BYTES - len(PNG))  # PNG readers stop at IEND
    response = await client.post(PATH, json={"image": data_url(padded)})
    assert response.status_code == 200, response.text


async def test_a_body_far_over_the_cap_is_refused_unread_as_too_large(
    client: httpx.AsyncClient,
) -> None:
    body = b'{"image": "' + b"A" * (3 * MAX_IMAGE_BYTES) + b'"}'
    response = await client.post(PATH, content=body)
    assert response.status_code == 400
    assert response.json() == {"image": ["Maximum image size exceeded"]}


async def test_concurrent_requests_share_generate_calls_and_keep_their_titles(
    client: httpx.AsyncClient, tiny_git: Path
) -> None:
    pictures = [png_bytes(image) for image in swatches(12)]
    titles = await expected_titles(tiny_git, pictures)
    assert len(set(titles)) >= 4  # so a title handed to the wrong request would show
    await client.post(PATH, json={"image": data_url(pictures[0])})  # load the model first
    before = (await client.get("/metrics")).text
    responses = await asyncio.gather(
        *(client.post(PATH, json={"image": data_url(data)}) for data in pictures)
    )
    assert [r.json() for r in responses] == [{"title": title} for title in titles]
    after = (await client.get("/metrics")).text
    name = 'sluiceway_batch_size_{}{{model="caption"}}'
    calls = metric(after, name.format("count")) - metric(before, name.format("count"))
    captioned = metric(after, name.format("sum")) - metric(before, name.format("sum"))
    assert captioned == len(pictures)
    assert calls < len(pictures)


async def test_an_expired_request_is_504_and_never_generated(client: httpx.AsyncClient) -> None:
    data = data_url(PNG)
    assert (await client.post(PATH, json={"image": data})).status_code == 200  # model loaded
    before = (await client.get("/metrics")).text
    slots = lane_slots(client)
    await slots.acquire()  # a long generate call is running
    try:
        response = await client.post(
            PATH, json={"image": data}, headers={"x-request-timeout": "0.3"}
        )
        assert response.status_code == 504
    finally:
        slots.release()
    assert (await client.post(PATH, json={"image": data})).status_code == 200
    after = (await client.get("/metrics")).text
    expired = 'sluiceway_expired_total{model="caption"}'
    captioned = 'sluiceway_batch_size_sum{model="caption"}'
    assert metric(after, expired) - metric(before, expired) == 1
    assert metric(after, captioned) - metric(before, captioned) == 1  # only the last one ran


async def test_a_full_queue_is_503_with_retry_after(tiny_git: Path) -> None:
    async with caption_app(tiny_git, caption_max_queue=2, caption_max_delay_ms=0.0) as http:
        data = data_url(PNG)
        assert (await http.post(PATH, json={"image": data})).status_code == 200
        slots = lane_slots(http)
        await slots.acquire()
        try:
            waiting = [asyncio.create_task(http.post(PATH, json={"image": data})) for _ in range(2)]
            queued = 'sluiceway_queue_depth{model="caption"}'

            async def both_queued() -> bool:
                return metric((await http.get("/metrics")).text, queued) == 2

            await eventually(both_queued)  # decoded and waiting for the held slot
            refused = await http.post(PATH, json={"image": data})
            assert refused.status_code == 503
            assert refused.headers["retry-after"].isdigit()
        finally:
            slots.release()
        assert [(await task).status_code for task in waiting] == [200, 200]


async def test_a_model_that_cannot_load_is_503_not_500(tmp_path: Path) -> None:
    async with caption_app(tmp_path / "missing") as http:
        response = await http.post(PATH, json={"image": data_url(PNG)})
    assert response.status_code == 503
    assert "does not exist" in response.text
    assert response.headers["retry-after"].isdigit()
