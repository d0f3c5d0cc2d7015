"""Support for browser tests: headless Chromium, driven by selenium, on the page that the
real ``twistd -n groupchat --web ...`` serves.

Nothing is downloaded: the browser and its driver are Debian's (``apt-get install
chromium chromium-driver``).  Without them the tests are skipped, or fail when ``CI`` is
set.  Every wait is bounded (``WebDriverWait``), and each browser and server is stopped at
teardown, the server by its own PID (``tests/e2e_support.py``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e_support import HOST, ServerFactory, ServerProcess

if TYPE_CHECKING:
    from selenium.webdriver.chromium.webdriver import ChromiumDriver

WAIT = 5.0  # seconds for anything the page should do at once
CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")
INSTALL = "apt-get install chromium chromium-driver"


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must run the browser tests ({INSTALL})")
    pytest.skip(f"{message}; to run the browser tests: {INSTALL}")


def _find(candidates: tuple[str, ...]) -> str | None:
    for candidate in candidates:
        found = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if found and os.access(found, os.X_OK):
            return found
    return None


def browser_paths() -> tuple[str, str]:
    """Chromium and chromedriver, or a skip (a failure under CI) saying what to install."""
    if importlib.util.find_spec("selenium") is None:
        _missing("selenium is not installed (pip install -e '.[test]')")
    chromium, driver = _find(CHROMIUM), _find(CHROMEDRIVER)
    if chromium is None:
        _missing("chromium is not installed")
    if driver is None:
        _missing("chromedriver is not installed")
    assert chromium is not None and driver is not None
    return chromium, driver


def free_port() -> int:
    """A loopback port free right now (for a server that must come back on the same one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- the server ---------------------------------------------------------------------------


@dataclass
class WebServer:
    process: ServerProcess
    web_port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.web_port}/"

    @property
    def port(self) -> int:
        """The line port (for ``ChatClient``)."""
        return self.process.port

    def stop(self) -> None:
        self.process.stop()


WebServerFactory = Callable[..., WebServer]


@pytest.fixture
def web_server(start_server: ServerFactory) -> Iterator[WebServerFactory]:
    """``web_server(*options, web_port=0)``: a server with its web door on loopback.

    With ``web_port`` 0 the system picks the port (``start_server`` asks for a
    ``--web-port-file``); give the same port again to restart a server where the page
    will look for it.
    """

    def start(*options: str, web_port: int = 0) -> WebServer:
        process = start_server(*options, "--web", f"tcp:{web_port}:interface={HOST}")
        return WebServer(process, process.web_port())

    yield start  # start_server stops every server it started


# -- the browser --------------------------------------------------------------------------


@dataclass
class ChatPage:
    """One browser tab on the chat page, read through the DOM the way a person sees it."""

    driver: ChromiumDriver
    label: str
    _console: list[dict[str, Any]] = field(default_factory=list)

    # -- waiting and reading ---------------------------------------------------------

    def wait(self, condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(
                f"{self.label}: {what} not within {timeout} s; status {self.status()!r} "
                f"({self.status_text()!r}), view {self.view()!r}, log:\n{self.log_text()}"
            ) from None

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def status(self) -> str:
        return str(self.js("return document.getElementById('status').dataset.state"))

    def status_text(self) -> str:
        return str(self.js("return document.getElementById('status-text').textContent"))

    def view(self) -> str:
        """The name of the conversation on screen (a room, a nickname, or the server's)."""
        return str(self.js("return document.getElementById('view-name').textContent"))

    def nick(self) -> str:
        return str(self.js("return document.getElementById('my-nick').textContent"))

    def log_text(self) -> str:
        """The lines of the conversation on screen, one per entry."""
        return str(
            self.js(
                "const list = document.querySelector('#log > ol:not([hidden])');"
                "return list ? [...list.children].map((li) => li.textContent).join('\\n') : '';"
            )
        )

    def members(self) -> list[str]:
        return list(
            self.js(
                "return [...document.querySelectorAll('#member-list .nick')]"
                ".map((n) => n.textContent)"
            )
        )

    def items(self, list_id: str) -> dict[str, str]:
        """A sidebar list as {name: the item's whole text (counts, unread badge)}."""
        return dict(
            self.js(
                "return [...document.querySelectorAll(`#${arguments[0]} .view-item`)]"
                ".map((b) => [b.querySelector('.item-name').textContent, b.textContent])",
                list_id,
            )
        )

    def unread(self, list_id: str, name: str) -> int:
        found = self.js(
            "const b = [...document.querySelectorAll(`#${arguments[0]} .view-item`)]"
            ".find((b) => b.querySelector('.item-name').textContent === arguments[1]);"
            "const badge = b && b.querySelector('.badge');"
            "return badge ? Number(badge.textContent) : 0;",
            list_id,
            name,
        )
        return int(found)

    def focused_id(self) -> str:
        return str(self.js("return document.activeElement ? document.activeElement.id : ''"))

    def shown(self, element_id: str) -> bool:
        """Whether the element takes up room on screen (not hidden, not display: none)."""
        return bool(
            self.js(
                "const n = document.getElementById(arguments[0]);"
                "return Boolean(n && n.getClientRects().length"
                " && getComputedStyle(n).visibility === 'visible');",
                element_id,
            )
        )

    def at_bottom(self) -> bool:
        """The log is scrolled to its newest line (within a pixel or two)."""
        return bool(
            self.js(
                "const log = document.getElementById('log');"
                "return log.scrollHeight - log.scrollTop - log.clientHeight < 2;"
            )
        )

    def overflowing(self) -> bool:
        """The log holds more than fits: scrolling matters."""
        return bool(
            self.js(
                "const log = document.getElementById('log');"
                "return log.scrollHeight > log.clientHeight + 20;"
            )
        )

    def spy_on_sent(self, *, from_load: bool = False) -> None:
        """Remember every line the page sends (see ``sent``): from now on, or with
        ``from_load`` from the next page load on, before the page's own script runs."""
        if from_load:
            self.driver.execute_cdp_cmd(
                "Page.addScriptToEvaluateOnNewDocument", {"source": f"(() => {{{_SPY}}})()"}
            )
        else:
            self.js(_SPY)

    def sent(self) -> list[tuple[float, str, int]]:
        """What the page sent: (seconds, line, message number), one per line."""
        out = []
        for number, (at, data) in enumerate(self.js("return window.__sent || []")):
            out += [(at / 1000, line, number) for line in str(data).split("\n")]
        return out

    # -- acting --------------------------------------------------------------------------

    def open(self, url: str) -> None:
        self.driver.get(url)

    def resize(self, width: int, height: int) -> None:
        """Give the page another viewport, as a window resize or a phone's rotation does."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )

    def tap_at(self, x: float, y: float) -> None:
        """A click at a point of the viewport, on whatever is there (no element check)."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        actions = ActionBuilder(self.driver)
        actions.pointer_action.move_to_location(int(x), int(y)).click()
        actions.perform()

    def wait_connected(self, timeout: float = WAIT) -> None:
        self.wait(lambda: self.status() == "connected", "connected", timeout)

    def type(self, text: str) -> None:
        """Type into the message box and press Enter, as a person would."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        box = self.driver.find_element(By.ID, "composer-input")
        box.send_keys(text + Keys.ENTER)

    def click(self, selector: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, selector).click()

    def open_view(self, list_id: str, name: str) -> None:
        self.js(
            "[...document.querySelectorAll(`#${arguments[0]} .view-item`)]"
            ".find((b) => b.querySelector('.item-name').textContent === arguments[1]).click()",
            list_id,
            name,
        )
        self.wait(lambda: self.view() == name, f"the view {name}")

    def set_nick(self, nick: str) -> None:
        self.type(f"/nick {nick}")
        self.wait(lambda: self.nick() == nick, f"the nickname {nick}")

    def join(self, room: str) -> None:
        self.type(f"/join {room}")
        self.wait(lambda: self.view() == room, f"talking in {room}")

    def console_errors(self, ignore: tuple[str, ...] = ()) -> list[str]:
        """Errors the page logged (a CSP violation shows up here), less those expected."""
        with contextlib.suppress(Exception):  # a browser without the log is no failure
            self._console += self.driver.get_log("browser")
        return [
            str(entry.get("message"))
            for entry in self._console
            if entry.get("level") == "SEVERE"
            and not any(text in str(entry.get("message")) for text in ignore)
        ]


_SPY = (
    "if (window.__sent) return; window.__sent = [];"
    "const send = WebSocket.prototype.send;"
    "WebSocket.prototype.send = function (data) {"
    "  window.__sent.push([Date.now(), String(data)]); return send.call(this, data); };"
)

BrowserFactory = Callable[..., ChatPage]


@pytest.fixture
def browser() -> Iterator[BrowserFactory]:
    """``browser(label, width=1280, height=800)``: a fresh headless Chromium on one tab."""
    chromium, chromedriver = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    pages: list[ChatPage] = []

    def make(label: str, width: int = 1280, height: int = 800) -> ChatPage:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-extensions",
            "--disable-sync",
            f"--window-size={width},{height}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
        driver.set_script_timeout(WAIT)
        page = ChatPage(driver, label)
        page.resize(width, height)  # the viewport itself (the window's frame would take some)
        pages.append(page)
        return page

    yield make
    for page in pages:
        with contextlib.suppress(Exception):
            page.driver.quit()
