"""Debian's Chromium, headless, driven by Playwright: the browser the console's tests use.

No browser is ever downloaded: Playwright starts the ``chromium`` on PATH (``.ci/run``
installs Debian's package when it is missing), and a missing one fails the tests, naming
the package to install.  Each launch gets a fresh profile directory of Playwright's; the
flags keep the browser off the network it has no business with (the machine's closed
network refuses its background calls)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS_VARIABLE = "RATEWATCH_SCREENSHOTS_DIR"


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError(
            "the console's browser tests need Chromium on PATH: "
            "apt-get update && apt-get install -y chromium (.ci/run does this)"
        )
    return path


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the duration of the block."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()


class PageProblems:
    """What went wrong inside a page: uncaught errors and Content-Security-Policy
    violations (a page that breaks its own policy loses the part that broke it)."""

    def __init__(self, page: Page):
        self.messages: list[str] = []
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or message.type == "assert":
            self.messages.append(f"console {message.type}: {message.text}")


def screenshots_dir(default: Path) -> Path:
    """``$RATEWATCH_SCREENSHOTS_DIR`` if set, else ``default``; created."""
    chosen = os.environ.get(SCREENSHOTS_VARIABLE)
    folder = Path(chosen) if chosen else default
    folder.mkdir(parents=True, exist_ok=True)
    return folder
