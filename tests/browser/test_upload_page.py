"""The upload page in a real browser: Debian's chromium, driven by Playwright, on a real server.

Screenshots go to ``test-artifacts/`` at the repository root (git-ignored) for a person to look at.
"""

from __future__ import annotations

import base64
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from sluiceway.stores.feedback import HEADER
from tests.fixtures.live_server import live_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Response

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "chromium is not installed at /usr/bin/chromium (scripts/system-deps.sh installs it)",
        allow_module_level=True,
    )
playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
expect = playwright.expect

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
MAX_UPLOAD = 1_000_000
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def photo() -> Path:
    """The scikit-image cat (scikit-image is a test dependency)."""
    import skimage

    return Path(skimage.__file__).parent / "data" / "chelsea.png"


@dataclass
class Server:
    """A uvicorn process serving the app on a loopback port, and its data folders."""

    url: str
    uploads: Path
    feedback_csv: Path

    def feedback_rows(self) -> list[list[str]]:
        if not self.feedback_csv.exists():
            return []
        with self.feedback_csv.open(newline="", encoding="utf-8") as file:
            records = list(csv.reader(file, strict=True))
        assert records[0] == list(HEADER)
        assert all(len(record) == len(HEADER) for record in records)
        return records[1:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("web")
    env = {
        "SLUICEWAY_UPLOAD_DIR": str(root / "uploads"),
        "SLUICEWAY_FEEDBACK_DIR": str(root / "feedback"),
        "SLUICEWAY_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "SLUICEWAY_MODEL_CACHE_DIR": str(root / "models"),
    }
    with live_server(env) as url:
        yield Server(url, root / "uploads", root / "feedback" / "feedback.csv")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def plain_page(browser: Browser) -> Iterator[Page]:
    """A page with JavaScript off: what the server renders must work alone."""
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1100, "height": 900}
    )
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_upload_see_the_top_five_and_report_a_mistake(server: Server, page: Page) -> None:
    errors: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    def response(answer: Response) -> None:
        if not answer.ok:
            errors.append(f"{answer.status} {answer.url}")

    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", console)
    page.on("response", response)
    page.goto(server.url)
    expect(page.get_by_role("heading", name="What is in this photo?")).to_be_visible()
    page.get_by_label("Choose a photo").set_input_files(photo())

    predictions = page.locator("#predictions .prediction")
    expect(predictions).to_have_count(5, timeout=20_000)
    top = predictions.nth(0).locator(".prediction-label").inner_text()
    assert "cat" in top.lower()
    scores = [float(bar.get_attribute("value") or "nan") for bar in page.locator(".bar").all()]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.3
    assert predictions.nth(0).locator(".prediction-score").inner_text().endswith("%")
    assert page.locator("#photo").evaluate("img => img.complete && img.naturalWidth") > 0

    page.get_by_label("What is it really?").fill("my cat Chelsea, a tabby")
    page.get_by_role("button", name="This is wrong").click()
    expect(page.locator("#messages")).to_contain_text("your report was saved")
    expect(page.locator("#feedback button")).to_have_text("Report saved ✓")
    expect(page.locator("#feedback button")).to_be_disabled()
    screenshot(page, "upload_page.png")

    [row] = [row for row in server.feedback_rows() if row[4] == "my cat Chelsea, a tabby"]
    image = page.locator("#feedback input[name=image]").get_attribute("value")
    assert row[1] == image and (server.uploads / row[1]).is_file()
    assert row[2] == top and abs(float(row[3]) - scores[0]) < 1e-3
    assert errors == []


DROP = """([data, name]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name));
    const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true });
    document.querySelector(".dropzone").dispatchEvent(drop);
}"""


def test_a_dropped_photo_is_classified(server: Server, page: Page) -> None:
    page.goto(server.url)
    page.evaluate(DROP, [base64.b64encode(photo().read_bytes()).decode(), photo().name])
    predictions = page.locator("#predictions .prediction")
    expect(predictions).to_have_count(5, timeout=20_000)
    assert "cat" in predictions.nth(0).locator(".prediction-label").inner_text().lower()
    expect(page.locator("#photo-name")).to_have_text(photo().name)


def test_the_page_fits_a_phone_screen(server: Server, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 380, "height": 800}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(server.url)
        page.get_by_label("Choose a photo").set_input_files(photo())
        expect(page.locator("#predictions .prediction")).to_have_count(5, timeout=20_000)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than the phone"
        screenshot(page, "upload_page_phone.png")
    finally:
        context.close()


def test_a_text_file_named_jpg_gets_a_message(server: Server, page: Page, tmp_path: Path) -> None:
    fake = tmp_path / "holiday.jpg"
    fake.write_text("these are notes, not pixels")
    page.goto(server.url)
    page.get_by_label("Choose a photo").set_input_files(fake)
    expect(page.locator("#messages")).to_contain_text("not a PNG, JPEG or GIF image")
    expect(page.locator("#result")).to_be_hidden()


def test_a_photo_over_the_cap_is_refused_before_sending(
    server: Server, page: Page, tmp_path: Path
) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(photo().read_bytes() + bytes(MAX_UPLOAD))
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    page.goto(server.url)
    page.get_by_label("Choose a photo").set_input_files(big)
    expect(page.locator("#messages")).to_contain_text("too large")
    assert not [url for url in sent if url.endswith("/uploads")]


def test_without_javascript_the_plain_form_classifies_and_reports(
    server: Server, plain_page: Page
) -> None:
    plain_page.goto(server.url)
    plain_page.get_by_label("Choose a photo").set_input_files(photo())
    plain_page.get_by_role("button", name="Classify").click()
    predictions = plain_page.locator("#predictions .prediction")
    expect(predictions).to_have_count(5)
    top = predictions.nth(0).locator(".prediction-label").inner_text()
    assert "cat" in top.lower()
    image = plain_page.locator("#photo").get_attribute("src") or ""
    assert image.startswith("/display/")
    shown = httpx.get(server.url + image)
    assert shown.status_code == 200 and shown.content == photo().read_bytes()
    screenshot(plain_page, "upload_page_no_js.png")

    plain_page.get_by_label("What is it really?").fill("a cat, without scripts")
    plain_page.get_by_role("button", name="This is wrong").click()
    expect(plain_page.locator("#messages")).to_contain_text("your report was saved")
    assert plain_page.url.endswith("/feedback")  # the page itself answers (no redirect)
    rows = [row for row in server.feedback_rows() if row[4] == "a cat, without scripts"]
    assert [row[1:3] for row in rows] == [[image.removeprefix("/display/"), top]]


def test_without_javascript_no_file_comes_back_with_a_message(
    server: Server, plain_page: Page
) -> None:
    plain_page.goto(server.url)
    plain_page.get_by_role("button", name="Classify").click()
    expect(plain_page.locator("#messages")).to_contain_text("Choose a photo first")
    assert plain_page.url.endswith("/?notice=no-file")


def test_without_javascript_a_huge_upload_gets_a_message(
    server: Server, plain_page: Page, tmp_path: Path
) -> None:
    big = tmp_path / "huge.png"
    big.write_bytes(photo().read_bytes() + bytes(2 * MAX_UPLOAD))
    plain_page.goto(server.url)
    plain_page.get_by_label("Choose a photo").set_input_files(big)
    plain_page.get_by_role("button", name="Classify").click()
    expect(plain_page.locator("#messages")).to_contain_text("too large")
