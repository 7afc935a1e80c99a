"""The upload page as the seed's own clients (MISSION.md §3) use it: real HTTP, ``requests``.

The seed's integration test, endpoint tests and Locust file were written against a Flask app;
these checks make the same calls the same way (``requests`` follows redirects, the endpoint tests
do not) against a real Sluiceway process. Only the photo differs: the seed's ``dog.jpeg`` is not
ours to ship, so the scikit-image cat stands in, and its label is compared in the same spelling.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import skimage

from tests.fixtures.live_server import live_server

CHELSEA = Path(skimage.__file__).parent / "data" / "chelsea.png"
SEED_REPORT = "{'filename': 'test', 'prediction': 'test-pred', 'score': 1. }"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("seed-page")
    env = {
        "SLUICEWAY_UPLOAD_DIR": str(root / "uploads"),
        "SLUICEWAY_FEEDBACK_DIR": str(root / "feedback"),
        "SLUICEWAY_MODEL_CACHE_DIR": str(root / "models"),
    }
    with live_server(env) as url:
        yield url, root / "feedback" / "feedback.csv"


def test_integration_index(server: tuple[str, Path]) -> None:
    url, _ = server
    assert requests.request("GET", f"{url}/").status_code == 200
    assert requests.request("POST", f"{url}/").status_code == 200  # 302 back to /, followed


def test_integration_predict(server: tuple[str, Path]) -> None:
    url, _ = server
    with CHELSEA.open("rb") as photo:
        files = [("file", ("chelsea.png", photo, "image/png"))]
        response = requests.request("POST", f"{url}/predict", headers={}, data={}, files=files)
    assert response.status_code == 200
    data = response.json()
    assert len(data.keys()) == 3
    assert data["success"] is True
    assert data["prediction"] == "Egyptian_cat"
    assert data["score"] == pytest.approx(0.7166, abs=0.02)  # MobileNetV2's, not ResNet50's


def test_endpoints_index(server: tuple[str, Path]) -> None:
    url, _ = server
    assert requests.get(f"{url}/", allow_redirects=False).status_code == 200
    assert requests.post(f"{url}/", allow_redirects=False).status_code == 302


def test_endpoints_feedback(server: tuple[str, Path]) -> None:
    url, _ = server
    assert requests.get(f"{url}/feedback", allow_redirects=False).status_code == 200
    assert requests.post(f"{url}/feedback", allow_redirects=False).status_code == 200


def test_endpoints_predict(server: tuple[str, Path]) -> None:
    url, _ = server
    assert requests.get(f"{url}/predict").status_code == 405
    assert requests.post(f"{url}/predict").status_code == 400
    response = requests.post(
        f"{url}/predict",
        data='{"not_a_file": "blabla"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json() == {"success": False, "prediction": None, "score": None}


def test_feedback_report_is_appended_as_one_row(server: tuple[str, Path]) -> None:
    url, feedback_csv = server
    before = _rows(feedback_csv)
    response = requests.post(f"{url}/feedback", data={"report": SEED_REPORT})
    assert response.status_code == 200
    after = _rows(feedback_csv)
    assert len(after) == len(before) + 1
    assert after[-1]["report"] == SEED_REPORT  # the seed checks its text, verbatim
    assert after[-1]["prediction"] == "test-pred"


def test_locust_tasks(server: tuple[str, Path]) -> None:
    url, feedback_csv = server
    with requests.Session() as session:
        assert session.get(f"{url}/").status_code == 200
        with CHELSEA.open("rb") as photo:
            assert session.post(f"{url}/predict", files={"file": photo}).status_code == 200
        report = "{'filename': 'test', 'prediction': 'angora_cat', 'score': 0.95 }"
        assert session.post(f"{url}/feedback", data={"report": report}).status_code == 200
    assert _rows(feedback_csv)[-1]["score"] == "0.9500"


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))
