"""The catalogue of bad inputs: each endpoint, each way a hostile or careless client gets it wrong.

Every case asserts the status and the message that says what is wrong: a clear 4xx, never a
500, never a hang. Cases for the HTTP edge itself (oversized and slow headers, slow bodies,
too many connections) are in ``tests/test_edge.py``, on a real socket.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from sluiceway.app import create_app
from tests.conftest import app_client, fast_settings
from tests.fixtures.images import encoded, png_bomb

ROWS = [[1, 2, 0], [2, 3, 1], [3, 4, 1], [-5, -5, 2]]
PNG = encoded(Image.new("RGB", (8, 8), "red"), "PNG")
GIF_POLYGLOT = b"GIF89a/*\x00\x00\x00\x00*/=1;alert(document.domain)//<script>x</script>"
JPEG_TRUNCATED = encoded(Image.new("RGB", (64, 64), "blue"), "JPEG")[:200]
MAX_BODY = 64 * 1024
MAX_UPLOAD = 50_000


def kiosk(training: Any = ROWS, query: Any = (2, 3)) -> bytes:
    body = {"training_data": {"training_data": training}, "query_input": {"query_input": query}}
    return json.dumps(body).encode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> bytes:
    """A multipart body; each part is (field name, file name or None, content)."""
    out = io.BytesIO()
    for name, filename, content in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n\r\n".encode())
        out.write(content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


MULTIPART = {"content-type": "multipart/form-data; boundary=b0undary"}
JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
FORM_FOR_JSON = {**FORM, "accept": "application/json"}  # the page script's feedback
MULTIPART_FOR_JSON = {**MULTIPART, "accept": "application/json"}


@dataclass(frozen=True)
class Case:
    """One bad request and what it must get."""

    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 400
    says: str = ""  # the message, in the body or the X-Sluiceway-Error header
    check: Callable[[httpx.Response], bool] | None = None  # anything more it must hold


def bird_errors(message: str) -> Callable[[httpx.Response], bool]:
    return lambda r: r.json()["errors"] == [message] and r.json()["successful_results"] == {}


def failed_only(response: httpx.Response) -> bool:
    body = response.json()
    return body["successful_results"] == {} and len(body["failed_results"]) == 1


CATALOGUE: dict[str, Case] = {
    # Kiosk: GET/POST /classify.
    "kiosk empty body": Case("POST", "/classify", says="empty body"),
    "kiosk blank body": Case("POST", "/classify", b" \r\n\t ", says="empty body"),
    "kiosk not json": Case("POST", "/classify", b"training_data=1", says="not valid JSON"),
    "kiosk truncated json": Case("POST", "/classify", kiosk()[:-7], says="not valid JSON"),
    "kiosk invalid utf-8": Case("POST", "/classify", b'{"\xff\xfe": 1}', says="not valid JSON"),
    "kiosk deeply nested json": Case("POST", "/classify", nested(30_000), says="not valid JSON"),
    "kiosk gzip bomb body": Case(
        "POST",
        "/classify",
        gzip.compress(b"[" * 1_000_000),
        {"content-encoding": "gzip"},
        says="not valid JSON",
    ),  # bodies are never inflated
    "kiosk nested in the rows": Case(
        "GET", "/classify", kiosk([[[[[1]]]]] * 3), status=422, says="valid integer"
    ),
    "kiosk top-level array": Case("POST", "/classify", b"[1, 2, 3]", status=422, says="body"),
    "kiosk NaN literal": Case(
        "POST",
        "/classify",
        kiosk().replace(b"[1, 2, 0]", b"[NaN, 2, 0]"),
        status=422,
        says="valid integer",
    ),
    "kiosk Infinity literal": Case(
        "POST",
        "/classify",
        kiosk().replace(b"[1, 2, 0]", b"[Infinity, 2, 0]"),
        status=422,
        says="valid integer",
    ),
    "kiosk huge integer": Case(
        "POST", "/classify", kiosk([[10**40, 2, 0], *ROWS]), status=422, says="64-bit integers"
    ),
    "kiosk 1e999": Case(
        "POST",
        "/classify",
        kiosk().replace(b"[1, 2, 0]", b"[1e999, 2, 0]"),
        status=422,
        says="valid integer",
    ),
    "kiosk float values": Case(
        "POST", "/classify", kiosk([[1.5, 2, 0], *ROWS]), status=422, says="valid integer"
    ),
    "kiosk numbers as strings": Case(
        "POST", "/classify", kiosk([["1", 2, 0], *ROWS]), status=422, says="valid integer"
    ),
    "kiosk booleans": Case(
        "POST", "/classify", kiosk([[True, 2, 0], *ROWS]), status=422, says="valid integer"
    ),
    "kiosk null rows": Case(
        "POST", "/classify", kiosk(None), status=422, says="training_data.training_data"
    ),
    "kiosk rows without label": Case(
        "POST",
        "/classify",
        kiosk([[1], [2], [3]], [1]),
        status=422,
        says="at least one feature and a label",
    ),
    "kiosk ragged rows": Case(
        "POST",
        "/classify",
        kiosk([[1, 2, 0], [1, 2], *ROWS]),
        status=422,
        says="must all have 3 values",
    ),
    "kiosk fewer rows than k": Case(
        "POST", "/classify", kiosk(ROWS[:2]), status=422, says="2 training rows; k=3 needs 3"
    ),
    "kiosk empty rows": Case("POST", "/classify", kiosk([]), status=422, says="at least 1 item"),
    "kiosk missing query": Case(
        "POST",
        "/classify",
        b'{"training_data": {"training_data": [[1, 2, 0]]}}',
        status=422,
        says="query_input: Field required",
    ),
    "kiosk query of wrong width": Case(
        "POST", "/classify", kiosk(query=[1, 2, 3]), status=422, says="must have 2 features"
    ),
    "kiosk too many rows": Case(
        "POST", "/classify", kiosk(ROWS * 20), status=413, says="80 training rows; at most 50"
    ),
    "kiosk too many queries": Case(
        "POST", "/classify", kiosk(query=[[1, 2]] * 6), status=413, says="6 query vectors"
    ),
    "kiosk body over the cap": Case(
        "POST", "/classify", b" " * (MAX_BODY + 1), status=413, says="over the 65536-byte limit"
    ),
    "kiosk bad X-Request-Timeout": Case(
        "POST",
        "/classify",
        kiosk(),
        {"x-request-timeout": "soon"},
        says="x-request-timeout must be seconds, got 'soon'",
    ),
    "kiosk NaN X-Request-Timeout": Case(
        "POST",
        "/classify",
        kiosk(),
        {"x-request-timeout": "nan"},
        says="x-request-timeout must be positive",
    ),
    "kiosk negative X-Request-Timeout": Case(
        "POST",
        "/classify",
        kiosk(),
        {"x-request-timeout": "-1"},
        says="x-request-timeout must be positive",
    ),
    "kiosk PUT": Case(
        "PUT",
        "/classify",
        kiosk(),
        status=405,
        says="Method Not Allowed",
        check=lambda r: r.headers["allow"] == "GET, HEAD, POST",
    ),
    "ping POST": Case("POST", "/ping", status=405, says="Method Not Allowed"),
    # Bird API: POST / with JSON.
    "birds not json": Case("POST", "/", b"{images:", JSON, status=422, says="Invalid JSON"),
    "birds images not a list": Case(
        "POST",
        "/",
        b'{"images": "http://a.example/b.jpg"}',
        JSON,
        status=422,
        says="images: Input should be a valid array",
    ),
    "birds image not a url": Case(
        "POST", "/", b'{"images": ["not a url"]}', JSON, status=422, says="images.0"
    ),
    "birds file url": Case(
        "POST",
        "/",
        b'{"images": ["file:///etc/passwd"]}',
        JSON,
        status=422,
        says="URL scheme should be 'http' or 'https'",
    ),
    "birds javascript url": Case(
        "POST", "/", b'{"images": ["javascript:alert(1)"]}', JSON, status=422, says="images.0"
    ),
    "birds no images": Case(
        "POST", "/", b'{"images": []}', JSON, status=200, check=bird_errors("No images provided")
    ),
    "birds too many images": Case(
        "POST",
        "/",
        json.dumps({"images": [f"http://a.example/{i}.jpg" for i in range(11)]}).encode(),
        JSON,
        status=200,
        check=bird_errors("Too many images provided. Max 10 images allowed"),
    ),
    "birds k too large": Case(
        "POST",
        "/",
        b'{"images": ["http://a.example/1.jpg"], "k": 11}',
        JSON,
        status=200,
        check=bird_errors("Max allowed value of K is 10"),
    ),
    "birds k negative": Case(
        "POST",
        "/",
        b'{"images": ["http://a.example/1.jpg"], "k": -1}',
        JSON,
        status=200,
        check=bird_errors("Min allowed value of K is 0"),
    ),
    "birds huge k": Case(
        "POST",
        "/",
        b'{"images": ["http://a.example/1.jpg"], "k": 1e400}',
        JSON,
        status=422,
        says="k: ",
    ),
    "birds loopback url": Case(
        "POST",
        "/",
        b'{"images": ["http://127.0.0.1:9/x.jpg"]}',
        JSON,
        status=200,
        check=failed_only,
    ),
    "birds link-local metadata url": Case(
        "POST",
        "/",
        b'{"images": ["http://169.254.169.254/latest/meta-data"]}',
        JSON,
        status=200,
        check=failed_only,
    ),
    "root plain text": Case(
        "POST",
        "/",
        b"hello",
        {"content-type": "text/plain"},
        status=415,
        says="POST / takes application/json (bird API) or a form post, not 'text/plain'",
    ),
    "root form without file": Case(
        "POST",
        "/",
        b"x=1",
        FORM,
        status=302,
        check=lambda r: r.headers["location"] == "/?notice=no-file",
    ),
    # Upload page's /predict: multipart field "file".
    "predict raw bytes": Case(
        "POST",
        "/predict",
        PNG,
        {"content-type": "image/png"},
        says="no file in multipart/form-data field 'file'",
    ),
    "predict empty multipart": Case(
        "POST", "/predict", b"", MULTIPART, says="no file in multipart/form-data field"
    ),
    "predict broken multipart": Case(
        "POST",
        "/predict",
        b"--b0undary\r\nnonsense",
        MULTIPART,
        says="no file in multipart/form-data field",
    ),
    "predict no boundary": Case(
        "POST",
        "/predict",
        multipart(("file", "a.png", PNG)),
        {"content-type": "multipart/form-data"},
        says="malformed form: Missing boundary",
    ),
    "predict field not a file": Case(
        "POST",
        "/predict",
        multipart(("file", None, PNG)),
        MULTIPART,
        says="no file in multipart/form-data field",
    ),
    "predict many parts": Case(
        "POST",
        "/predict",
        multipart(*[("file", f"{i}.png", PNG) for i in range(50)]),
        MULTIPART,
        says="Too many files",
    ),
    "predict wrong extension": Case(
        "POST",
        "/predict",
        multipart(("file", "a.txt", PNG)),
        MULTIPART,
        says="file must be .png, .jpg, .jpeg or .gif",
    ),
    "predict empty file": Case(
        "POST", "/predict", multipart(("file", "a.png", b"")), MULTIPART, says="file is empty"
    ),
    "predict text named png": Case(
        "POST",
        "/predict",
        multipart(("file", "a.png", b"hello")),
        MULTIPART,
        says="not a PNG, JPEG or GIF image",
    ),
    "predict truncated jpeg": Case(
        "POST",
        "/predict",
        multipart(("file", "a.jpg", JPEG_TRUNCATED)),
        MULTIPART,
        says="image",
    ),
    "predict gif polyglot": Case(
        "POST", "/predict", multipart(("file", "a.gif", GIF_POLYGLOT)), MULTIPART, says="image"
    ),
    "predict decompression bomb": Case(
        "POST",
        "/predict",
        multipart(("file", "bomb.png", png_bomb())),
        MULTIPART,
        says="pixels",
    ),
    "predict traversal filename": Case(
        "POST",
        "/predict",
        multipart(("file", "../../../etc/passwd.png", b"x")),
        MULTIPART,
        says="not a PNG, JPEG or GIF image",
    ),
    "predict file over the cap": Case(
        "POST",
        "/predict",
        multipart(("file", "a.png", b"\x89PNG" + b"0" * MAX_UPLOAD)),
        MULTIPART,
        status=413,
        says="at most 48.8 KB is accepted",
    ),
    "predict GET": Case("GET", "/predict", status=405, says="Method Not Allowed"),
    # The page script's /uploads.
    "uploads json": Case(
        "POST", "/uploads", b"{}", JSON, status=415, says="multipart/form-data field 'file'"
    ),
    "uploads no file": Case(
        "POST",
        "/uploads",
        multipart(("other", None, b"1")),
        MULTIPART,
        says="no file in form field 'file'",
    ),
    "uploads bomb": Case(
        "POST", "/uploads", multipart(("file", "b.png", png_bomb())), MULTIPART, says="pixels"
    ),
    # Feedback reports.
    "feedback missing fields": Case(
        "POST", "/feedback", b"correct_label=cat", FORM_FOR_JSON, says="field 'image' is missing"
    ),
    "feedback traversal image": Case(
        "POST",
        "/feedback",
        b"image=../../etc/passwd&prediction=cat&score=0.5",
        FORM_FOR_JSON,
        says="does not name a stored upload",
    ),
    "feedback file field": Case(
        "POST",
        "/feedback",
        multipart(("image", "a.png", PNG)),
        MULTIPART_FOR_JSON,
        says="Too many files",
    ),
    "feedback over the cap": Case(
        "POST",
        "/feedback",
        b"prediction=" + b"a" * 70_000,
        FORM_FOR_JSON,
        status=413,
        says="over the 16384-byte limit",
    ),
    "feedback json": Case(
        "POST",
        "/feedback",
        b"{}",
        {**JSON, "accept": "application/json"},
        status=415,
        says="send a form (multipart/form-data or application/x-www-form-urlencoded)",
    ),
    # Stored uploads and static files.
    "display traversal": Case(
        "GET", "/display/..%2f..%2fpyproject.toml", status=404, says="Not Found"
    ),
    "display nul byte": Case("GET", "/display/a%00.png", status=404, says="no stored image"),
    "display unknown hash": Case(
        "GET", "/display/" + "0" * 64 + ".png", status=404, says="no stored image"
    ),
    "static traversal": Case("GET", "/static/..%2f..%2fconfig.py", status=404, says="Not Found"),
    # Native classify API.
    "native unknown model": Case(
        "POST", "/v1/models/../classify", b"{}", JSON, status=404, says="Not Found"
    ),
    "native no such classifier": Case(
        "POST",
        "/v1/models/gpt/classify",
        b"{}",
        JSON,
        status=404,
        says="no image classifier named 'gpt'",
    ),
    "native not json": Case(
        "POST", "/v1/models/birds/classify", b"{", JSON, status=422, says="Invalid JSON"
    ),
    "native extra field": Case(
        "POST",
        "/v1/models/birds/classify",
        b'{"images": ["x"], "shell": "rm"}',
        JSON,
        status=422,
        says="shell: Extra inputs are not permitted",
    ),
    "native images not strings": Case(
        "POST",
        "/v1/models/birds/classify",
        b'{"images": [1]}',
        JSON,
        status=422,
        says="images.0: Input should be a valid string",
    ),
    "native k zero": Case(
        "POST",
        "/v1/models/birds/classify",
        b'{"images": ["x"], "k": 0}',
        JSON,
        status=422,
        says="k must be between 1 and 20",
    ),
    "native too many images": Case(
        "POST",
        "/v1/models/birds/classify",
        json.dumps({"images": ["x"] * 65}).encode(),
        JSON,
        status=413,
        says="65 images; at most 64",
    ),
    # Captions.
    "captions empty": Case(
        "POST",
        "/api/v1/predictions",
        b"",
        JSON,
        check=lambda r: r.json() == {"image": ["This field is required."]},
    ),
    "captions not json": Case(
        "POST", "/api/v1/predictions", b"{'image': 1}", JSON, says="JSON parse error"
    ),
    "captions a list": Case(
        "POST",
        "/api/v1/predictions",
        b"[]",
        JSON,
        says="Invalid data. Expected a dictionary, but got list.",
    ),
    "captions null image": Case(
        "POST",
        "/api/v1/predictions",
        b'{"image": null}',
        JSON,
        says="This field may not be null.",
    ),
    "captions number image": Case(
        "POST", "/api/v1/predictions", b'{"image": 12}', JSON, says="Not a valid string."
    ),
    "captions blank image": Case(
        "POST",
        "/api/v1/predictions",
        b'{"image": "  "}',
        JSON,
        says="This field may not be blank.",
    ),
    "captions bad base64": Case(
        "POST",
        "/api/v1/predictions",
        b'{"image": "data:image/png;base64,!!!"}',
        JSON,
        says="base64",
    ),
    "captions deeply nested": Case(
        "POST",
        "/api/v1/predictions",
        b'{"image": ' + nested(100_000) + b"}",
        JSON,
        says="JSON parse error",
    ),
    "captions GET": Case("GET", "/api/v1/predictions", status=405, says="Method Not Allowed"),
    # Operations endpoints.
    "healthz POST": Case("POST", "/healthz", status=405, says="Method Not Allowed"),
    "metrics DELETE": Case("DELETE", "/metrics", status=405, says="Method Not Allowed"),
}


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("catalogue")


@pytest.fixture
async def http(uploads: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = fast_settings(
        max_body_bytes=MAX_BODY,
        max_upload_bytes=MAX_UPLOAD,
        knn_max_training_rows=50,
        knn_max_queries=5,
        upload_dir=str(uploads / "uploads"),
        feedback_dir=str(uploads / "feedback"),
    )
    async with app_client(create_app(settings)) as client:
        yield client


def test_the_catalogue_holds_at_least_sixty_cases() -> None:
    assert len(CATALOGUE) >= 60


@pytest.mark.parametrize("name", list(CATALOGUE))
async def test_bad_input(http: httpx.AsyncClient, name: str) -> None:
    case = CATALOGUE[name]
    response = await http.request(case.method, case.path, content=case.body, headers=case.headers)
    told = response.text + " " + response.headers.get("x-sluiceway-error", "")
    assert response.status_code == case.status, f"{name}: {response.status_code} {told[:300]}"
    assert case.says in told, f"{name}: {told[:300]}"
    if case.check is not None:
        assert case.check(response), f"{name}: {told[:300]}"


async def test_a_control_character_in_x_request_id_is_not_echoed(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/ping", headers={"x-request-id": "abc\x7fdef"})
    assert response.status_code == 200
    assert len(response.headers["x-request-id"]) == 16  # a fresh id instead of the bad one
