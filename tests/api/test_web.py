"""The upload page (MISSION.md §3) over HTTP: page, no-script form, uploads, display, feedback."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import re
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import skimage
from PIL import Image

from sluiceway.app import create_app
from sluiceway.stores.feedback import HEADER
from tests.conftest import app_client, fast_settings
from tests.fixtures.images import encoded
from tests.fixtures.live_server import live_server

CHELSEA = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
CHELSEA_NAME = hashlib.sha256(CHELSEA).hexdigest() + ".png"
MAX_UPLOAD = 400_000


class Site:
    """A client on an app whose uploads and feedback go to a temporary folder."""

    def __init__(self, http: httpx.AsyncClient, root: Path) -> None:
        self.http = http
        self.uploads = root / "uploads"
        self.feedback_csv = root / "feedback" / "feedback.csv"

    def feedback_rows(self) -> list[list[str]]:
        return feedback_rows(self.feedback_csv)


def feedback_rows(path: Path) -> list[list[str]]:
    """The CSV's rows after its header; fails if any is torn or merged."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        records = list(csv.reader(file, strict=True))
    assert records[0] == list(HEADER)
    assert all(len(record) == len(HEADER) for record in records)
    return records[1:]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    settings = fast_settings(
        upload_dir=str(tmp_path / "uploads"),
        feedback_dir=str(tmp_path / "feedback"),
        max_upload_bytes=MAX_UPLOAD,
    )
    async with app_client(create_app(settings)) as http:
        yield Site(http, tmp_path)


def labels_on(page: str) -> list[str]:
    return re.findall(r'<span class="prediction-label">([^<]*)</span>', page)


def messages_on(page: str) -> list[str]:
    return re.findall(r'data-kind="(?:error|notice)">([^<]*)</p>', page)


async def test_the_page_is_html_with_a_plain_form(site: Site) -> None:
    response = await site.http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert re.search(r'<form id="upload"[^>]*method="post" action="/"', page)
    assert 'enctype="multipart/form-data"' in page
    assert 'name="file" type="file"' in page
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'self'
    assert "default-src 'self'" in response.headers["content-security-policy"]
    for asset in re.findall(r'(?:href|src)="(/static/[^"]+)"', page):
        assert (await site.http.get(asset)).status_code == 200


async def test_notices_are_the_pages_own_texts_only(site: Site) -> None:
    shown = (await site.http.get("/?notice=no-file")).text
    assert messages_on(shown) == ["Choose a photo first, then press Classify."]
    page = (await site.http.get("/", params={"notice": "<script>alert(1)</script>"})).text
    assert "alert(1)" not in page and messages_on(page) == []


async def test_a_form_post_with_a_photo_renders_the_top_five(site: Site) -> None:
    response = await site.http.post("/", files={"file": ("chelsea.png", CHELSEA, "image/png")})
    assert response.status_code == 200
    labels = labels_on(response.text)
    assert len(labels) == 5 and labels[0] == "Egyptian cat"
    scores = [
        float(s)
        for s in re.findall(r'<progress class="bar" max="1" value="([0-9.]+)"', response.text)
    ]
    assert scores == sorted(scores, reverse=True) and 0.6 < scores[0] < 0.8
    assert f'src="/display/{CHELSEA_NAME}"' in response.text
    assert f'name="image" value="{CHELSEA_NAME}"' in response.text
    assert 'name="prediction" value="Egyptian cat"' in response.text
    assert (site.uploads / CHELSEA_NAME).read_bytes() == CHELSEA


@pytest.mark.parametrize(
    ("kwargs"),
    [
        {"files": {"file": ("", b"", "application/octet-stream")}},  # nothing chosen
        {"files": {"other": ("x.txt", b"abc", "text/plain")}, "data": {"note": "hi"}},
        {"data": {"file": "not a file"}},  # urlencoded: can never carry a file
    ],
)
async def test_a_form_post_without_a_file_redirects_back_with_a_message(
    site: Site, kwargs: dict[str, object]
) -> None:
    response = await site.http.post("/", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 302
    assert response.headers["location"] == "/?notice=no-file"
    page = (await site.http.get(response.headers["location"])).text
    assert messages_on(page) == ["Choose a photo first, then press Classify."]


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("empty.jpg", b"", 400, "the file is empty"),
        ("notes.jpg", b"these are notes, not pixels\n", 400, "not a PNG, JPEG or GIF image"),
        ("huge.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_UPLOAD + 1), 413, "too large"),
        ("way-too-huge.png", b"\x00" * (MAX_UPLOAD * 6), 413, "too large"),
        ("photo.webp", encoded(Image.new("RGB", (30, 30)), "WEBP"), 400, "not a PNG, JPEG"),
    ],
)
async def test_bad_uploads_get_a_message_on_the_page(
    site: Site, name: str, data: bytes, status: int, message: str
) -> None:
    response = await site.http.post("/", files={"file": (name, data, "image/jpeg")})
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    [shown] = messages_on(response.text)
    assert message in shown
    assert labels_on(response.text) == []
    assert not site.uploads.exists() or list(site.uploads.iterdir()) == []


async def test_a_name_with_dot_dots_is_shown_but_never_used_as_a_path(
    site: Site, tmp_path: Path
) -> None:
    name = "../../<script>evil.png"
    response = await site.http.post("/", files={"file": (name, CHELSEA, "image/png")})
    assert response.status_code == 200
    assert "<script>evil" not in response.text
    assert '<figcaption id="photo-name">&lt;script&gt;evil.png<' in response.text
    kept = await asyncio.to_thread(lambda: [p.name for p in tmp_path.rglob("*") if p.is_file()])
    assert kept == [CHELSEA_NAME]


async def test_the_script_endpoint_answers_json_and_keeps_the_photo(site: Site) -> None:
    jpeg = encoded(Image.open(io.BytesIO(CHELSEA)).convert("RGB"), "JPEG")
    response = await site.http.post("/uploads", files={"file": ("cat.jpg", jpeg, "image/jpeg")})
    assert response.status_code == 200
    body = response.json()
    name = hashlib.sha256(jpeg).hexdigest() + ".jpg"
    assert body["image"] == name and body["url"] == f"/display/{name}"
    assert body["filename"] == "cat.jpg"
    scores = [p["score"] for p in body["predictions"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0001
    assert body["predictions"][0]["label"] == "Egyptian cat"
    shown = await site.http.get(body["url"])
    assert shown.status_code == 200 and shown.content == jpeg
    assert shown.headers["content-type"] == "image/jpeg"
    assert "immutable" in shown.headers["cache-control"]


@pytest.mark.parametrize(
    ("files", "status", "detail"),
    [
        ({"other": ("cat.png", CHELSEA)}, 400, "no file"),
        ({"file": ("cat.png", b"text")}, 400, "not a PNG, JPEG or GIF"),
        ({"file": ("cat.png", b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD))}, 413, "too large"),
    ],
)
async def test_the_script_endpoint_refuses_bad_uploads(
    site: Site, files: dict[str, tuple[str, bytes]], status: int, detail: str
) -> None:
    response = await site.http.post("/uploads", files=files)
    assert response.status_code == status
    assert detail in response.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/display/../pyproject.toml",
        "/display/..%2F..%2Fetc%2Fpasswd",
        "/display/%2e%2e%2fsecret",
        f"/display/{'a' * 64}.png",
        f"/display/{CHELSEA_NAME.upper()}",
        "/display/feedback.csv",
    ],
)
async def test_display_serves_stored_uploads_only(site: Site, path: str) -> None:
    await site.http.post("/uploads", files={"file": ("cat.png", CHELSEA)})
    (site.uploads / "feedback.csv").write_text("not an upload")
    response = await site.http.get(path)
    assert response.status_code == 404
    assert (await site.http.get(f"/display/{CHELSEA_NAME}")).content == CHELSEA


async def stored(site: Site) -> str:
    response = await site.http.post("/uploads", files={"file": ("cat.png", CHELSEA)})
    name: str = response.json()["image"]
    return name


async def test_feedback_from_the_script_is_confirmed_and_appended(site: Site) -> None:
    image = await stored(site)
    response = await site.http.post(
        "/feedback",
        data={
            "image": image,
            "prediction": "Egyptian cat",
            "score": "0.7166",
            "correct_label": 'my cat, "Chelsea"',
        },
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200 and response.json() == {"saved": True}
    [row] = site.feedback_rows()
    assert row[1:] == [image, "Egyptian cat", "0.7166", 'my cat, "Chelsea"', ""]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", row[0])


async def test_feedback_from_the_plain_form_answers_the_page_with_thanks(site: Site) -> None:
    image = await stored(site)
    response = await site.http.post(
        "/feedback", data={"image": image, "prediction": "Egyptian cat", "score": "0.7166"}
    )
    assert response.status_code == 200  # no redirect: the seed's clients follow none
    assert messages_on(response.text) == ["Thank you — your report was saved."]
    assert [row[1:] for row in site.feedback_rows()] == [[image, "Egyptian cat", "0.7166", "", ""]]


async def test_feedback_as_the_seeds_page_posts_it(site: Site) -> None:
    report = "{'filename': 'test', 'prediction': 'test-pred', 'score': 1. }"
    response = await site.http.post("/feedback", data={"report": report})
    assert response.status_code == 200
    assert messages_on(response.text) == ["Thank you — your report was saved."]
    [row] = site.feedback_rows()
    assert row[1:] == ["test", "test-pred", "1.0000", "", report]


async def test_a_report_that_does_not_parse_is_still_kept(site: Site) -> None:
    response = await site.http.post(
        "/feedback", data={"report": "it is a cat, not a dog", "correct_label": "cat"}
    )
    assert response.status_code == 200
    [row] = site.feedback_rows()
    assert row[1:] == ["", "", "", "cat", "it is a cat, not a dog"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # no body, no content type (what a bare POST sends)
        {"data": {}},
        {"data": {"report": "   ", "correct_label": ""}},
        {"files": {"report": (None, "")}},
        {"content": b"", "headers": {"content-type": "text/plain"}},
    ],
)
async def test_an_empty_feedback_post_shows_the_page_and_records_nothing(
    site: Site, kwargs: dict[str, object]
) -> None:
    response = await site.http.post("/feedback", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200
    assert 'id="upload"' in response.text and messages_on(response.text) == []
    assert site.feedback_rows() == []


async def test_get_feedback_is_the_page(site: Site) -> None:
    response = await site.http.get("/feedback")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="upload"' in response.text


async def test_feedback_that_is_not_a_form_is_415(site: Site) -> None:
    response = await site.http.post(
        "/feedback", content=b"report", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert site.feedback_rows() == []


@pytest.mark.parametrize(
    ("fields", "status", "detail"),
    [
        ({"image": None}, 400, "'image' is missing"),
        ({"prediction": None}, 400, "'prediction' is missing"),
        ({"score": None}, 400, "'score' is missing"),
        ({"score": "high"}, 400, "'score' must be a number"),
        ({"score": "1.5"}, 400, "score must be a number between 0 and 1"),
        ({"score": "nan"}, 400, "score must be a number between 0 and 1"),
        ({"image": "../../etc/passwd"}, 400, "does not name a stored upload"),
        ({"image": "c" * 64 + ".png"}, 400, "does not name a stored upload"),
        ({"correct_label": "x" * 201}, 400, "at most 200"),
        ({"correct_label": "x" * 1_000_000}, 413, "over the 16384-byte limit"),
    ],
)
async def test_bad_feedback_is_refused_and_the_csv_stays_well_formed(
    site: Site, fields: dict[str, str | None], status: int, detail: str
) -> None:
    image = await stored(site)
    good = {"image": image, "prediction": "Egyptian cat", "score": "0.7", "correct_label": ""}
    await site.http.post("/feedback", data=good)
    form = {key: value for key, value in {**good, **fields}.items() if value is not None}
    as_json = await site.http.post("/feedback", data=form, headers={"Accept": "application/json"})
    assert as_json.status_code == status and detail in as_json.json()["detail"]
    as_page = await site.http.post("/feedback", data=form)
    assert as_page.status_code == status
    [shown] = messages_on(as_page.text)
    assert shown.startswith("Your report was not saved") and detail.replace("'", "&#39;") in shown
    assert len(site.feedback_rows()) == 1


async def test_many_concurrent_reports_are_all_kept(site: Site) -> None:
    image = await stored(site)

    async def report(index: int) -> int:
        response = await site.http.post(
            "/feedback",
            data={
                "image": image,
                "prediction": f"guess {index}",
                "score": "0.5",
                "correct_label": f'truth, {index}\n"quoted"',
            },
            headers={"Accept": "application/json"},
        )
        return response.status_code

    statuses = await asyncio.gather(*(report(i) for i in range(120)))
    assert statuses == [200] * 120
    rows = site.feedback_rows()
    assert sorted(row[2] for row in rows) == sorted(f"guess {i}" for i in range(120))
    assert {row[4] for row in rows} == {f'truth, {i} "quoted"' for i in range(120)}


def test_two_server_processes_and_many_threads_keep_every_report(tmp_path: Path) -> None:
    env = {
        "SLUICEWAY_UPLOAD_DIR": str(tmp_path / "uploads"),
        "SLUICEWAY_FEEDBACK_DIR": str(tmp_path / "feedback"),
        "SLUICEWAY_MODEL_CACHE_DIR": str(tmp_path / "models"),
    }
    with live_server(env) as first, live_server(env) as second:
        image = httpx.post(f"{first}/uploads", files={"file": ("cat.png", CHELSEA)}).json()["image"]

        def reporter(thread: int) -> list[int]:
            statuses = []
            with httpx.Client(timeout=30) as http:
                for i in range(25):
                    server = (first, second)[(thread + i) % 2]
                    response = http.post(
                        f"{server}/feedback",
                        data={
                            "image": image,
                            "prediction": f"p{thread}-{i}",
                            "score": "0.25",
                            "correct_label": 'x, "y"' * 20,
                        },
                        headers={"Accept": "application/json"},
                    )
                    statuses.append(response.status_code)
            return statuses

        with ThreadPoolExecutor(8) as pool:
            statuses = [s for batch in pool.map(reporter, range(8)) for s in batch]
    assert statuses == [200] * 200
    rows = feedback_rows(tmp_path / "feedback" / "feedback.csv")
    assert sorted(row[2] for row in rows) == sorted(
        f"p{t}-{i}" for t in range(8) for i in range(25)
    )
