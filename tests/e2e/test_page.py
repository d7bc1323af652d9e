"""The browser upload page (issue 19) in Debian's Chromium, driven by
Playwright, against one real Hypercorn for the module.

Each test is a person's session in a fresh browser context with an account
of its own. Uploads are slowed with Chromium's network emulation where a
test needs them caught mid-way, never by timed assertions: every wait is
on a condition. A failing test saves a screenshot to browser-failures/;
with SCREENSHOTS_DIR set, the README's screenshots are saved there.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest

from devtools import PROJECT_ROOT
from devtools.auth import bearer
from devtools.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    Recorder,
    drop_files,
    throttle,
    unavailable,
)
from devtools.server import RunningServer, start_server
from quart_app.api.docs import DOCS_CSP
from quart_app.api.page import PAGE_CSP
from quart_app.edge.assets import IMMUTABLE
from tests.e2e.conftest import failed

if TYPE_CHECKING:
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        CDPSession,
        Locator,
        Page,
        Route,
        ViewportSize,
    )

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

MIB = 1024 * 1024
LIMIT = 64 * MIB  # QUART_APP_MAX_UPLOAD_BYTES for this module's server
WAIT_MS = 180_000  # generous: the machine is shared and loaded
FAILURES = PROJECT_ROOT / "browser-failures"
XSS_NAME = "<img src=x onerror=alert(1)>.html"


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("page") / "server", {"QUART_APP_MAX_UPLOAD_BYTES": str(LIMIT)}
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Session:
    """One person at the page: a browser context, its page, what it did,
    and their own account on the server."""

    server: RunningServer
    context: BrowserContext
    page: Page
    recorder: Recorder
    key: str
    user_id: int
    cdp: CDPSession | None = None

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(self.key), **kwargs.pop("headers", {})}
        return httpx.request(method, self.server.url + path, headers=headers, **kwargs)

    def open(self) -> Any:
        response = self.page.goto(self.server.url + "/")
        self.page.wait_for_selector("body[data-ready='yes']")
        return response

    def sign_in(self) -> None:
        self.page.fill("#api-key", self.key)
        self.page.click("#sign-in-button")
        self.page.wait_for_selector("#signed-in:not([hidden])")

    def throttle(self, upload_bytes_per_second: int | None) -> None:
        if self.cdp is None:
            self.cdp = self.context.new_cdp_session(self.page)
            self.cdp.send("Network.enable")
        throttle(self.cdp, upload_bytes_per_second)

    def upload_item(self, name: str) -> Locator:
        return self.page.locator("#uploads > li", has=self.page.get_by_text(name, exact=True))

    def file_item(self, name: str) -> Locator:
        return self.page.locator("#files > li", has=self.page.get_by_text(name, exact=True))

    def creations(self) -> dict[str, str]:
        """File name -> upload URL, for each tus creation the page made."""
        made: dict[str, str] = {}
        for request in self.recorder.requests:
            if request.method != "POST" or not request.url.endswith("/uploads"):
                continue
            response = request.response()
            if response is None or response.status != 201:
                continue
            metadata = dict(
                pair.split(" ", 1) for pair in request.headers["upload-metadata"].split(",")
            )
            made[base64.b64decode(metadata["filename"]).decode()] = response.headers["location"]
        return made

    def server_offset(self, upload_url: str) -> httpx.Response:
        return httpx.head(upload_url, headers={**bearer(self.key), "Tus-Resumable": "1.0.0"})

    def sha256_of_listed(self, name: str) -> str:
        file_id = self.file_item(name).get_attribute("data-file-id")
        response = self.api("GET", f"/files/{file_id}")
        assert response.status_code == 200, response.text
        sha256: str = response.json()["sha256"]
        return sha256

    def key_in_no_url(self) -> None:
        assert self.recorder.urls, "no request was recorded"
        assert not [url for url in self.recorder.urls if self.key in url]

    def screenshot(self, name: str) -> None:
        folder = os.environ.get("SCREENSHOTS_DIR")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / name), full_page=True)


def new_account(server: RunningServer) -> tuple[int, str]:
    user = httpx.post(
        server.url + "/users",
        headers=bearer(),
        json={"name": "Page tester", "email": f"{uuid.uuid4().hex}@example.com"},
    )
    assert user.status_code == 201, user.text
    key = httpx.post(f"{server.url}/users/{user.json()['id']}/keys", headers=bearer(), json={})
    assert key.status_code == 201, key.text
    secret: str = key.json()["secret"]
    return user.json()["id"], secret


@pytest.fixture
def session(
    browser: Browser, page_server: RunningServer, request: pytest.FixtureRequest
) -> Iterator[Session]:
    viewport: ViewportSize = getattr(request, "param", DESKTOP)
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    # Choosers are intercepted from the start: Playwright turns interception
    # on asynchronously when a listener is added, which a key press made at
    # once (Enter on the drop zone) can outrun.
    page.on("filechooser", lambda chooser: None)
    recorder = Recorder()
    recorder.attach(context, page)
    try:
        user_id, key = new_account(page_server)
        yield Session(page_server, context, page, recorder, key, user_id)
    finally:
        if failed(request.node):
            FAILURES.mkdir(exist_ok=True)
            page.screenshot(path=str(FAILURES / f"{request.node.name}.png"), full_page=True)
        context.close()


def write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def progress_at_least(session: Session, name: str, percent: int) -> None:
    bar = session.upload_item(name).locator("progress")
    bar.wait_for()
    session.page.wait_for_function(
        "([bar, percent]) => bar.value >= percent", arg=[bar.element_handle(), percent]
    )


def test_sign_in_drop_many_files_see_progress_list_and_download(
    session: Session, tmp_path: Path
) -> None:
    """Items 1, 2, 3, 4 and 7: the page and its assets, sign-in checked
    against the server, three files dropped at once (one of 50 MiB) with
    progress, speed and time left, each listed with name, size, type and
    date and the sha256 of the original, a download that is the original."""
    from playwright.sync_api import expect

    page = session.page
    response = session.open()
    assert response.headers["content-security-policy"] == PAGE_CSP
    assert response.headers["cache-control"] == "no-cache"

    # A wrong key: the server says why, in words, and nothing is shown.
    page.fill("#api-key", "qa_" + "x" * 43)
    page.click("#sign-in-button")
    expect(page.locator("#sign-in-error")).to_have_text(
        "The API key is unknown, expired or revoked."
    )
    expect(page.locator("#signed-in")).to_be_hidden()

    session.sign_in()
    expect(page.locator("#files-status")).to_have_text("No files yet.")
    assert page.evaluate("sessionStorage.getItem('quart_app.api-key')") == session.key
    assert session.key not in page.evaluate("JSON.stringify(localStorage)")

    originals = {
        "big.bin": write(tmp_path / "big.bin", 50 * MIB),
        "notes.txt": b"some notes\n" * 1000,
        "pixel.png": base64.b64decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
        ),
    }
    (tmp_path / "notes.txt").write_bytes(originals["notes.txt"])
    (tmp_path / "pixel.png").write_bytes(originals["pixel.png"])
    session.throttle(16 * MIB)  # slow enough to be seen going
    drop_files(page, "#drop-zone", [tmp_path / name for name in originals])

    big = session.upload_item("big.bin")
    expect(big.locator(".stats")).to_contain_text(
        re.compile(r"MiB of 50\.0 MiB \(\d+ %\) · [\d.]+ [KM]iB/s · .+ left")
    )
    session.throttle(None)
    types = {"big.bin": "application/octet-stream", "notes.txt": "text/plain"}
    types["pixel.png"] = "image/png"
    for name, data in originals.items():
        item = session.upload_item(name)
        expect(item.locator(".state")).to_have_text("Uploaded")
        expect(item.locator("progress")).to_have_attribute("value", "100")
        listed = session.file_item(name)
        expect(listed).to_be_visible()
        expect(listed.locator(".meta")).to_contain_text(types[name])
        assert listed.locator("time").get_attribute("datetime")
        assert session.sha256_of_listed(name) == sha256(data)
    expect(session.file_item("big.bin").locator(".meta")).to_contain_text("50.0 MiB")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    session.screenshot("page-desktop.png")

    # Download through a short-lived signed link (no key in any URL)...
    with page.expect_download() as download:
        page.get_by_role("link", name="Download big.bin").click()
    assert sha256(Path(download.value.path()).read_bytes()) == sha256(originals["big.bin"])
    assert download.value.url.startswith(session.server.url + "/links/dl_")
    assert session.key not in download.value.url
    # ...or, where no link can be made, fetched with the key in a header
    # and saved from a blob: URL.
    page.route("**/links", lambda route: route.fulfill(status=409, body="{}"))
    with page.expect_download() as download:
        page.get_by_role("link", name="Download notes.txt").click()
    assert Path(download.value.path()).read_bytes() == originals["notes.txt"]
    assert download.value.url.startswith("blob:")
    page.unroute("**/links")

    # Every asset under a hashed name, cached for a year; nothing elsewhere.
    assets = [r for r in session.recorder.requests if "/static/" in r.url]
    assert len(assets) >= 4
    for asset in assets:
        assert re.search(r"\.[0-9a-f]{12}\.(js|css|svg)$", asset.url), asset.url
        answer = asset.response()
        assert answer is not None and answer.status == 200
        assert answer.headers["cache-control"] == IMMUTABLE
    hosts = {urlsplit(url).netloc for url in session.recorder.urls if url.startswith("http")}
    assert hosts == {urlsplit(session.server.url).netloc}
    session.key_in_no_url()
    assert session.recorder.unexpected_errors(401, 409) == []


def test_pause_resume_and_cancel_each_and_all(session: Session, tmp_path: Path) -> None:
    """Item 2: the picker takes several files; pause, resume and cancel act
    on one file or on all; a canceled upload is gone from the server."""
    from playwright.sync_api import expect

    page = session.page
    session.open()
    session.sign_in()
    names = ["a.bin", "b.bin", "c.bin"]
    originals = {name: write(tmp_path / name, 6 * MIB) for name in names}
    session.throttle(MIB)
    page.set_input_files("#file-input", [str(tmp_path / name) for name in names])
    for name in names:
        expect(session.upload_item(name).locator(".state")).to_have_text("Uploading")
        expect(session.upload_item(name).locator(".stats")).to_contain_text(" left")
    session.screenshot("page-uploading.png")

    page.get_by_role("button", name="Pause all").click()
    for name in names:
        expect(session.upload_item(name).locator(".state")).to_have_text("Paused")
        expect(page.get_by_role("button", name=f"Resume {name}")).to_be_visible()
    uploads = session.creations()
    assert set(uploads) == set(names)
    for name in names:
        head = session.server_offset(uploads[name])
        assert int(head.headers["upload-offset"]) < 6 * MIB

    page.get_by_role("button", name="Resume a.bin").click()
    expect(session.upload_item("a.bin").locator(".state")).to_have_text("Uploading")
    page.get_by_role("button", name="Pause a.bin").click()
    expect(session.upload_item("a.bin").locator(".state")).to_have_text("Paused")

    page.get_by_role("button", name="Cancel b.bin").click()
    expect(session.upload_item("b.bin")).to_have_count(0)
    assert session.server_offset(uploads["b.bin"]).status_code == 404

    page.get_by_role("button", name="Resume all").click()
    session.throttle(None)
    for name in ("a.bin", "c.bin"):
        expect(session.upload_item(name).locator(".state")).to_have_text("Uploaded")
        assert session.sha256_of_listed(name) == sha256(originals[name])
    expect(session.file_item("b.bin")).to_have_count(0)

    # Cancel all: every live upload ends, on the page and on the server.
    session.throttle(256 * 1024)
    more = ["d.bin", "e.bin"]
    for name in more:
        write(tmp_path / name, 4 * MIB)
    page.set_input_files("#file-input", [str(tmp_path / name) for name in more])
    for name in more:
        expect(session.upload_item(name).locator(".state")).to_have_text("Uploading")
    page.get_by_role("button", name="Cancel all").click()
    for name in more:
        expect(session.upload_item(name)).to_have_count(0)
    expect(page.locator("#bulk")).to_be_hidden()
    uploads = session.creations()
    for name in more:
        assert session.server_offset(uploads[name]).status_code == 404
    session.key_in_no_url()
    # A PATCH right after a pause may meet the paused one still ending on
    # the server: 423 Locked, and the page tries again (README, tus).
    assert session.recorder.unexpected_errors(423) == []


def test_a_network_cut_mid_upload_resumes_from_the_servers_offset(
    session: Session, tmp_path: Path
) -> None:
    """Items 3 and 7: requests to /uploads fail (route interception) while
    a file is half sent; once they pass again the page asks the server for
    its offset (HEAD) and sends the rest from there: one creation, the
    original's sha256."""
    from playwright.sync_api import expect

    page = session.page
    session.open()
    session.sign_in()
    data = write(tmp_path / "cut.bin", 24 * MIB)
    session.throttle(3 * MIB)
    page.set_input_files("#file-input", str(tmp_path / "cut.bin"))
    progress_at_least(session, "cut.bin", 40)  # past the first 8 MiB piece

    cut = len(session.recorder.requests)
    page.route("**/uploads/**", lambda route: route.abort("internetdisconnected"))
    expect(session.upload_item("cut.bin").locator(".state")).to_contain_text("Connection lost")
    page.unroute("**/uploads/**")
    session.throttle(None)
    expect(session.upload_item("cut.bin").locator(".state")).to_have_text("Uploaded")

    after = session.recorder.requests[cut:]
    refused = [r for r in after if r.failure is not None]
    assert refused, "no request was cut"
    heads = [r for r in after if r.method == "HEAD" and r.response() is not None]
    assert heads, "the page did not ask the server for its offset"
    head = heads[0].response()
    assert head is not None and head.status == 200
    offset = int(head.headers["upload-offset"])
    assert 0 < offset < 24 * MIB
    resumed = [r for r in after if r.method == "PATCH" and after.index(r) > after.index(heads[0])]
    assert resumed[0].headers["upload-offset"] == str(offset)
    assert len(session.creations()) == 1
    assert session.sha256_of_listed("cut.bin") == sha256(data)
    session.key_in_no_url()


def test_a_reload_mid_upload_offers_to_resume_and_does(session: Session, tmp_path: Path) -> None:
    """Item 3: after a reload the page still holds the key (sessionStorage)
    and lists the unfinished upload with what the server has; choosing the
    file again goes on from the server's offset, not from zero."""
    from playwright.sync_api import expect

    page = session.page
    session.open()
    session.sign_in()
    data = write(tmp_path / "reload.bin", 16 * MIB)
    session.throttle(2 * MIB)
    page.set_input_files("#file-input", str(tmp_path / "reload.bin"))
    progress_at_least(session, "reload.bin", 25)

    reloaded = len(session.recorder.requests)
    page.reload()
    page.wait_for_selector("body[data-ready='yes']")
    offer = page.locator("#resumable-list > li", has=page.get_by_text("reload.bin", exact=True))
    expect(offer).to_contain_text("on the server")
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Resume reload.bin").click()
    chooser.value.set_files(str(tmp_path / "reload.bin"))
    expect(offer).to_have_count(0)
    session.throttle(None)
    expect(session.upload_item("reload.bin").locator(".state")).to_have_text("Uploaded")

    patches = [r for r in session.recorder.requests[reloaded:] if r.method == "PATCH"]
    assert int(patches[0].headers["upload-offset"]) > 0
    assert len(session.creations()) == 1
    assert session.sha256_of_listed("reload.bin") == sha256(data)
    expect(page.locator("#resumable")).to_be_hidden()
    session.key_in_no_url()


def test_refusals_in_words_hostile_name_and_delete(session: Session, tmp_path: Path) -> None:
    """Items 2, 3 and 4: a file over the size limit and one over the quota
    are refused with the server's problem detail; a file named like markup
    shows as text and runs nothing; delete asks first."""
    from playwright.sync_api import expect

    page = session.page
    session.open()
    session.sign_in()
    too_big = tmp_path / "too-big.iso"
    with too_big.open("wb") as sparse:
        sparse.truncate(LIMIT + 1)
    refusal = session.api(
        "POST", "/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(LIMIT + 1)}
    )
    assert refusal.status_code == 413
    hostile = tmp_path / XSS_NAME
    hostile.write_bytes(b"<script>alert(2)</script>")
    page.set_input_files("#file-input", [str(too_big), str(hostile)])
    expect(session.upload_item("too-big.iso").locator(".state")).to_have_text(
        "Refused: " + refusal.json()["detail"]
    )
    expect(session.upload_item(XSS_NAME).locator(".state")).to_have_text("Uploaded")

    # The owner's quota (507 quota-exceeded): refused in words, not retried.
    quota = httpx.patch(
        f"{session.server.url}/users/{session.user_id}", headers=bearer(), json={"quota_bytes": MIB}
    )
    assert quota.status_code == 200, quota.text
    over = session.api(
        "POST", "/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(2 * MIB)}
    )
    assert over.status_code == 507 and over.json()["type"].endswith("quota-exceeded")
    write(tmp_path / "over-quota.bin", 2 * MIB)
    page.set_input_files("#file-input", str(tmp_path / "over-quota.bin"))
    expect(session.upload_item("over-quota.bin").locator(".state")).to_have_text(
        "Refused: " + over.json()["detail"]
    )
    assert "over-quota.bin" not in session.creations()
    tries = [r for r in session.recorder.requests if r.method == "POST" and "/uploads" in r.url]
    assert len(tries) == 3  # too-big.iso, the hostile name, over-quota.bin: once each

    listed = session.file_item(XSS_NAME)
    expect(listed.locator(".filename")).to_have_text(XSS_NAME)
    assert page.locator("main img").count() == 0
    assert session.recorder.dialogs == []

    file_id = listed.get_attribute("data-file-id")
    page.get_by_role("button", name=f"Delete {XSS_NAME}").click()
    expect(page.locator("#confirm-delete")).to_be_visible()
    expect(page.locator("#confirm-name")).to_have_text(XSS_NAME)
    page.get_by_role("button", name="Keep it").click()
    expect(page.locator("#confirm-delete")).to_be_hidden()
    assert session.api("GET", f"/files/{file_id}").status_code == 200
    page.get_by_role("button", name=f"Delete {XSS_NAME}").click()
    page.locator("#confirm-yes").click()
    expect(listed).to_have_count(0)
    assert session.api("GET", f"/files/{file_id}").status_code == 404
    assert session.recorder.dialogs == []
    assert page.locator("main img").count() == 0
    session.key_in_no_url()
    assert session.recorder.unexpected_errors(413, 507) == []


UNLABELLED_JS = """
() => Array.from(document.querySelectorAll("button, input, a, progress, select, textarea"))
  .filter((e) => !(e.getAttribute("aria-label") || (e.labels && e.labels.length) ||
                   e.textContent.trim()))
  .map((e) => e.outerHTML)
"""


@pytest.mark.parametrize("session", [PHONE], indirect=True)
def test_keyboard_labels_and_a_narrow_screen(session: Session, tmp_path: Path) -> None:
    """Item 5 at 360 px wide: sign in and reach the drop zone with the
    keyboard, Enter opens the file picker, focus is visible, every control
    has a name, nothing is wider than the screen, no console errors."""
    from playwright.sync_api import expect

    page = session.page
    session.open()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.type(session.key)
    page.keyboard.press("Enter")
    page.wait_for_selector("#signed-in:not([hidden])")

    for _ in range(10):
        if page.evaluate("document.activeElement.id") == "drop-zone":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "drop-zone"
    outline = page.evaluate(
        """() => { const s = getComputedStyle(document.activeElement);
        return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"""
    )
    assert outline[0] != "none" and outline[1] >= 2, outline

    long_name = "a-rather-long-file-name-that-would-not-fit-on-a-phone-screen-at-all.txt"
    (tmp_path / long_name).write_bytes(b"x" * 1000)
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(tmp_path / long_name))
    expect(session.upload_item(long_name).locator(".state")).to_have_text("Uploaded")
    expect(session.file_item(long_name)).to_be_visible()

    assert page.evaluate(UNLABELLED_JS) == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    session.screenshot("page-phone.png")
    session.key_in_no_url()
    assert session.recorder.unexpected_errors() == []


def test_docs_work_offline_and_list_the_operations(session: Session) -> None:
    """Item 6: /docs loads Swagger UI from this server alone (every other
    host is refused) and lists every operation of /openapi.json."""
    from playwright.sync_api import expect

    page = session.page
    elsewhere: list[str] = []

    def loopback_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    session.context.route("**/*", loopback_only)
    response = page.goto(session.server.url + "/docs")
    assert response is not None and response.headers["content-security-policy"] == DOCS_CSP
    spec = httpx.get(session.server.url + "/openapi.json").json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    operations = sum(len(methods & set(path)) for path in spec["paths"].values())
    expect(page.locator(".opblock")).to_have_count(operations)
    for path in ("/files/{file_id}/content", "/uploads/{upload_id}"):
        expect(page.get_by_text(path, exact=True).first).to_be_visible()
    assert elsewhere == []
    assert session.recorder.unexpected_errors() == []
