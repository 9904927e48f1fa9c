"""The whole grant in a real browser: headless Chromium driven by Playwright.

The demo authorization server, the demo resource and the client application
run on loopback ports, all addressed as 127.0.0.1 so that the client's
session cookie returns on every request. Chromium is Debian's
/usr/bin/chromium, never a browser that Playwright downloads. Every page is
saved as a PNG screenshot in $FLOWENGINE_SCREENSHOTS, or else in the test's
temporary folder, and the folder is printed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is not installed; install it with `apt-get install chromium` "
        "(.ci/install-system-packages does) to run the browser tests",
        allow_module_level=True,
    )

from playwright.sync_api import (  # noqa: E402
    BrowserContext,
    ConsoleMessage,
    Locator,
    Playwright,
    sync_playwright,
)
from test_web import Demo, running_demo  # noqa: E402

from flowengine.adapters.memory import MemoryStore  # noqa: E402

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Milliseconds that Playwright waits for a page or an element before it fails.
WAIT_MS = 15_000
# getComputedStyle() of the current state's outline: Graphviz's darksalmon.
DARKSALMON = "rgb(233, 150, 122)"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture
def demo() -> Iterator[Demo]:
    with running_demo(MemoryStore()) as running:
        yield running


@pytest.fixture
def screenshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    configured = os.environ.get("FLOWENGINE_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nscreenshots: {folder}")
    return folder


class BrowserRun:
    """One browser profile: a page, its screenshots and its console messages."""

    def __init__(self, context: BrowserContext, demo: Demo, folder: Path) -> None:
        self.context = context
        self.demo = demo
        self.folder = folder
        self.page = context.new_page()
        self.console: list[str] = []
        self.saved: list[Path] = []
        self.page.on("console", self._record_console)

    def _record_console(self, message: ConsoleMessage) -> None:
        self.console.append(message.text)

    def open(self, path: str) -> None:
        response = self.page.goto(self.demo.client_url + path)
        assert response is not None
        assert response.status == 200

    def click(self, role: Literal["link", "button"], name: str) -> int:
        """Click a link or button and return the HTTP status of the new page."""
        with self.page.expect_navigation() as navigation:
            self.page.get_by_role(role, name=name, exact=True).click()
        response = navigation.value
        assert response is not None
        return response.status

    def screenshot(self, name: str, *, full_page: bool = True) -> None:
        path = self.folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        self.saved.append(path)

    def text(self, element_id: str) -> str:
        return " ".join(self.page.locator(f"#{element_id}").inner_text().split())

    def current_node(self) -> Locator:
        """Return the SVG node of the page's diagram that has the current class."""
        return self.page.locator("#diagram svg g.node.current")

    def blocked_by_csp(self) -> list[str]:
        return [text for text in self.console if "Content Security Policy" in text]


@contextlib.contextmanager
def browser_run(
    playwright: Playwright, demo: Demo, folder: Path, profile: Path
) -> Iterator[BrowserRun]:
    """Launch Chromium with a fresh profile folder, so no cookie carries over."""
    profile.mkdir()
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900},
    )
    context.set_default_timeout(WAIT_MS)
    try:
        yield BrowserRun(context, demo, folder)
    finally:
        context.close()


def assert_diagram_marks(run: BrowserRun, state: str) -> None:
    figure = run.page.locator("#diagram figure.diagram")
    box = figure.bounding_box()
    assert box is not None
    assert box["width"] > 300
    assert box["height"] > 50
    nodes = run.page.locator("#diagram svg g.node")
    assert nodes.count() == 6

    current = run.current_node()
    assert current.count() == 1
    assert current.locator("title").text_content() == state
    outline = current.locator("path").first
    assert outline.get_attribute("fill") == "darksalmon"
    assert outline.evaluate("element => getComputedStyle(element).fill") == DARKSALMON
    assert outline.is_visible()


def test_grant_resource_refresh_and_deny_in_chromium(
    playwright: Playwright, demo: Demo, screenshots: Path, tmp_path: Path
) -> None:
    with browser_run(playwright, demo, screenshots, tmp_path / "profile-1") as run:
        run.open("/")
        assert run.text("no-flow").startswith("No flow yet")
        assert_diagram_marks(run, "unauthorized")
        run.screenshot("01-client-without-flow")

        assert run.click("link", "Get OAuth Token") == 200
        assert run.page.url.startswith(demo.config.authorization_endpoint + "?")
        run.page.get_by_text("Approve access?").wait_for()
        run.screenshot("02-approval-page")

        assert run.click("button", "Approve") == 200
        assert run.page.url == demo.client_url + "/"
        assert run.page.get_by_text("Access token received.").is_visible()
        assert run.text("flow-state") == "token_held"
        assert run.text("refresh-token") == "held"
        assert_diagram_marks(run, "token_held")
        run.screenshot("03-token-held")

        assert run.click("button", "Get Protected Resource") == 200
        data = json.loads(run.page.locator("#resource-data").inner_text())
        assert data["name"] == "Protected Resource"
        assert data["scope"] == "foo bar"
        run.screenshot("04-protected-resource")

        flow_id = run.text("flow-id")
        first_token = demo.flow_data(flow_id)["access_token"]
        assert run.click("button", "Refresh token") == 200
        assert run.page.get_by_text("Access token refreshed.").is_visible()
        assert demo.flow_data(flow_id)["access_token"] != first_token
        assert run.text("flow-state") == "token_held"
        assert run.page.get_by_role("cell", name="refreshing → token_held").count() == 1
        assert_diagram_marks(run, "token_held")
        run.screenshot("05-token-refreshed")

        # Chromium renders the SVG route as a document of its own. Playwright
        # 1.65 cannot measure an SVG document for a full-page screenshot (it
        # times out), so this one shows a viewport wide enough for the picture.
        run.page.set_viewport_size({"width": 1700, "height": 420})
        run.open("/diagram.svg")
        svg_current = run.page.locator("g.node.current")
        assert svg_current.locator("title").text_content() == "token_held"
        run.screenshot("06-diagram-svg", full_page=False)
        assert run.blocked_by_csp() == []
        saved = list(run.saved)

    with browser_run(playwright, demo, screenshots, tmp_path / "profile-2") as run:
        run.open("/")
        assert run.text("no-flow").startswith("No flow yet")

        assert run.click("link", "Get OAuth Token") == 200
        assert run.click("button", "Deny") == 403
        assert run.page.url.startswith(demo.config.redirect_uri + "?")
        assert run.page.get_by_role("heading", name="Access was denied").is_visible()
        assert run.text("oauth-error") == "access_denied"
        assert run.text("oauth-error-description") == (
            "the resource owner denied the request"
        )
        assert "Traceback" not in run.page.content()
        run.screenshot("07-access-denied")

        assert run.click("link", "Back to the client page") == 200
        assert run.text("flow-state") == "unauthorized"
        assert run.text("last-error") == "access_denied"
        assert_diagram_marks(run, "unauthorized")
        run.screenshot("08-client-after-deny")
        assert run.blocked_by_csp() == []
        saved.extend(run.saved)

    assert len(saved) == 8
    for path in saved:
        assert path.stat().st_size > 0
