"""Debian's Chromium driven by Playwright, for the browser page's tests.

Never ``playwright install``: it downloads a browser build, which this
project's machines cannot fetch. ``make test`` installs Debian's
``chromium`` where apt works; elsewhere :func:`unavailable` says why the
browser tests skip.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import (
        BrowserContext,
        CDPSession,
        ConsoleMessage,
        Page,
        Request,
        ViewportSize,
    )

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 360, "height": 740}


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        return (
            f"Chromium is not installed ({CHROMIUM}); `make test` installs Debian's "
            "chromium with apt-get where apt is usable"
        )
    return None


@dataclass
class Recorder:
    """What a page did: every request URL, console errors, uncaught
    exceptions and dialogs (alert, confirm), for assertions."""

    urls: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def attach(self, context: BrowserContext, page: Page) -> None:
        context.on("request", self._request)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("dialog", self._dialog)

    def _request(self, request: Request) -> None:
        self.urls.append(request.url)
        self.requests.append(request)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def unexpected_errors(self, *statuses: int) -> list[str]:
        """Console errors other than Chromium's note of an answer with one of
        ``statuses`` (a refusal the test asked for), plus uncaught exceptions."""
        allowed = [f"status of {status} " for status in statuses]
        errors = [e for e in self.console_errors if not any(a in e for a in allowed)]
        return errors + self.page_errors


def throttle(cdp: CDPSession, upload_bytes_per_second: int | None) -> None:
    """Chromium's network emulation on the uploads of the page ``cdp`` is
    attached to (None: off). One session per page: each keeps its own."""
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": upload_bytes_per_second or -1,
        },
    )


# Dropped files: a DataTransfer holding real files from disk (set on a
# scratch <input> by Playwright, so no bytes cross the driver), dropped on
# the element as a person's drag and drop would.
DROP_FILES_JS = """
([target, source]) => {
  const zone = document.querySelector(target);
  const input = document.querySelector(source);
  const data = new DataTransfer();
  for (const file of input.files) data.items.add(file);
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
  }
  input.remove();
}
"""


def drop_files(page: Page, target: str, paths: list[Path]) -> None:
    page.evaluate(
        """() => { const input = document.createElement("input");
        input.type = "file"; input.multiple = true; input.id = "test-drop-source";
        input.hidden = true; document.body.append(input); }"""
    )
    page.set_input_files("#test-drop-source", [str(p) for p in paths])
    page.evaluate(DROP_FILES_JS, [target, "#test-drop-source"])
