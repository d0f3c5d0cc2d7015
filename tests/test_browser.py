"""The browser page (twisted_chat/web/) in headless Chromium against the real server.

Each test starts ``twistd -n groupchat --web ...`` on loopback and drives one or more
pages like a person would (typing, clicking), next to a plain socket user like ``nc``.
Skipped without chromium and chromedriver, failed instead when ``CI`` is set
(tests/browser_support.py).  ``GROUPCHAT_WRITE_SCREENSHOT=1`` makes the screenshot test
rewrite docs/web-client.png.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests import browser_support
from tests.browser_support import BrowserFactory, ChatPage, WebServerFactory, free_port
from tests.e2e_support import REPO_ROOT, ClientFactory, set_nick, wait_until

browser = browser_support.browser  # fixtures
web_server = browser_support.web_server

# A reconnect waits 1 s (jittered up to 1.25 s), then 2, then 4: a restart that takes a
# couple of seconds is met within this.
RECONNECT_WAIT = 15.0
XSS = "<img src=x onerror=alert(1)>"


def start_page(browser: BrowserFactory, url: str, label: str, **size: int) -> ChatPage:
    page = browser(label, **size)
    page.open(url)
    page.wait_connected()
    return page


def no_page_errors(*pages: ChatPage, ignore: tuple[str, ...] = ()) -> None:
    for page in pages:
        assert page.console_errors(ignore) == [], page.label


def test_two_pages_and_a_socket_user_talk_in_one_room(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory
):
    server = web_server()
    alice = start_page(browser, server.url, "alice")
    bob = start_page(browser, server.url, "bob")
    alice.set_nick("alice")
    bob.set_nick("bob")
    alice.join("#ops")
    bob.join("#ops")
    carol = connect(server.process, "carol")
    set_nick(carol, "carol")
    carol.say("/join #ops")
    carol.expect("*** Now talking in #ops")

    alice.wait(lambda: alice.members() == ["alice", "bob", "carol"], "three members")
    assert alice.view() == "#ops"
    assert "3" in alice.items("room-list")["#ops"]

    alice.type("hello from a browser")
    carol.expect("[#ops] <alice> hello from a browser")
    bob.wait(lambda: "alice hello from a browser" in bob.log_text(), "alice's line")
    assert "alice hello from a browser" in alice.log_text()  # our own line, shown as sent

    carol.say("hi both, from a socket")
    alice.wait(lambda: "carol hi both, from a socket" in alice.log_text(), "carol's line")
    bob.wait(lambda: "carol hi both, from a socket" in bob.log_text(), "carol's line")

    carol.say("/quit lunch")
    alice.wait(lambda: "carol quit (lunch)" in alice.log_text(), "carol's quit")
    alice.wait(lambda: alice.members() == ["alice", "bob"], "carol gone from the members")
    no_page_errors(alice, bob)


def test_private_message_shows_in_its_own_view(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory
):
    server = web_server()
    alice = start_page(browser, server.url, "alice")
    alice.set_nick("alice")
    bob = connect(server.process, "bob")
    set_nick(bob, "bob")

    bob.say("/msg alice psst, just for you")
    alice.wait(lambda: alice.unread("pm-list", "bob") == 1, "an unread private message")
    assert "psst" not in alice.log_text()  # not in the room on screen
    assert alice.view() == "#lobby"

    alice.open_view("pm-list", "bob")
    alice.wait(lambda: "bob psst, just for you" in alice.log_text(), "the private message")
    assert alice.unread("pm-list", "bob") == 0
    assert alice.focused_id() == "composer-input"

    alice.type("got it")  # typed in the private view: a private message, not a room line
    bob.expect("[PM alice -> bob] got it")
    bob.barrier()
    assert bob.count("[#lobby] <alice>") == 0
    alice.wait(lambda: "alice got it" in alice.log_text(), "our own private line")
    no_page_errors(alice)


def test_page_reconnects_after_a_restart_and_restores_nick_and_room(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory
):
    web_port = free_port()
    first = web_server(web_port=web_port)
    alice = start_page(browser, first.url, "alice")
    alice.set_nick("alice")
    alice.join("#ops")
    alice.join("#dev")
    alice.open_view("room-list", "#ops")

    first.stop()
    alice.wait(lambda: alice.status() == "reconnecting", "reconnecting")
    assert "Reconnecting in" in alice.status_text()

    second = web_server(web_port=web_port)
    alice.wait_connected(RECONNECT_WAIT)
    assert alice.nick() == "alice"
    assert alice.view() == "#ops"
    assert set(alice.items("room-list")) == {"#lobby", "#ops", "#dev"}

    # The server agrees: alice is back in her rooms, under her name, talking in #ops.
    bob = connect(second.process, "bob")
    set_nick(bob, "bob")
    bob.say("/who #dev")
    bob.expect(lambda line: line.startswith("*** [#dev] 1 here: @alice"))  # its operator again
    bob.say("/join #ops")
    bob.expect("*** [#ops] 2 here:")
    alice.wait(lambda: "bob joined" in alice.log_text(), "bob's arrival")
    alice.type("welcome back to me")
    bob.expect("[#ops] <alice> welcome back to me")
    # The page tried while the server was down: those failures are the expected errors.
    no_page_errors(alice, ignore=("WebSocket connection to",))


def test_login_form_when_the_server_needs_one(
    web_server: WebServerFactory, browser: BrowserFactory, tmp_path: Path
):
    users = tmp_path / "users.txt"
    users.write_text("alice:correct-horse\nbob:battery-staple\n")
    users.chmod(0o600)
    server = web_server("--auth", f"file:{users}")
    page = browser("alice")
    page.open(server.url)
    page.wait(lambda: page.js("return !document.getElementById('login').hidden"), "login form")
    page.wait(lambda: page.focused_id() == "login-name", "focus on the name")
    assert "needs a login" in page.js("return document.getElementById('login-info').textContent")

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page.driver.find_element(By.ID, "login-name").send_keys("alice")
    page.driver.find_element(By.ID, "login-password").send_keys("nope" + Keys.ENTER)
    error = "return document.getElementById('login-error').textContent"
    page.wait(lambda: "wrong name or password" in page.js(error), "the login error")
    assert "2 attempts left" in page.js(error)

    page.driver.find_element(By.ID, "login-password").send_keys("correct-horse" + Keys.ENTER)
    page.wait_connected()
    assert page.js("return document.getElementById('login').hidden")
    assert page.nick() == "alice"
    assert not page.driver.find_element(By.ID, "nick-button").is_enabled()  # fixed name
    assert page.focused_id() == "composer-input"
    page.join("#ops")
    no_page_errors(page)


def test_markup_in_a_message_shows_as_text_and_runs_nothing(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory
):
    from selenium.common.exceptions import NoAlertPresentException

    server = web_server()
    alice = start_page(browser, server.url, "alice")
    alice.set_nick("alice")
    mallory = connect(server.process, "mallory")
    set_nick(mallory, "mallory")
    mallory.say(XSS)
    mallory.say(f"/me {XSS}")
    mallory.say(f"/msg alice {XSS}")
    alice.wait(lambda: alice.log_text().count(XSS) == 2, "the markup, as text")
    alice.open_view("pm-list", "mallory")
    alice.wait(lambda: XSS in alice.log_text(), "the markup in the private view")
    assert alice.js("return document.querySelectorAll('#log img, #log script').length") == 0
    with pytest.raises(NoAlertPresentException):
        alice.driver.switch_to.alert.text  # noqa: B018 (reading it is the check)
    # Nicknames and room names come from the server too; they are text as well.
    assert alice.js("return document.querySelectorAll('#sidebar img').length") == 0
    no_page_errors(alice)


def test_heartbeat_keeps_a_quiet_page_and_a_silent_server_is_noticed(
    web_server: WebServerFactory, browser: BrowserFactory
):
    server = web_server(
        "--heartbeat-interval", "0.5", "--heartbeat-timeout", "2", "--idle-warning", "1"
    )
    page = start_page(browser, server.url, "quiet")
    # Longer than the timeout and a sweep without typing: the page's pings keep it
    # seated, unwarned.
    assert not wait_until(lambda: page.status() != "connected", 3.5), page.status_text()
    log = page.js("return document.getElementById('log').textContent")
    assert "silent" not in log and "Disconnected" not in log

    # A stopped server answers nothing: the page gives up on it within the timeout.
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        page.wait(lambda: page.status() == "reconnecting", "noticing the silence", 2 + 3)
        assert "no answer from the server" in page.status_text()
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    page.wait_connected(RECONNECT_WAIT)


def test_keyboard_enter_up_and_the_room_list(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server = web_server()
    page = start_page(browser, server.url, "keys")
    page.set_nick("kay")
    page.join("#one")
    page.join("#two")
    assert page.focused_id() == "composer-input"
    box = page.driver.find_element(By.ID, "composer-input")
    box.send_keys("first line" + Keys.ENTER)
    page.wait(lambda: "kay first line" in page.log_text(), "the line sent with Enter")
    box.send_keys(Keys.ARROW_UP)
    assert box.get_attribute("value") == "first line"
    box.send_keys(Keys.ARROW_DOWN)
    assert box.get_attribute("value") == ""

    # The room list: arrows move along it, Enter opens a room.
    page.js("document.querySelector('#room-list [aria-current=\"true\"]').focus()")
    ActionChains(page.driver).send_keys(Keys.ARROW_UP).perform()
    assert page.js("return document.activeElement.textContent").startswith("#one")
    ActionChains(page.driver).send_keys(Keys.ENTER).perform()
    page.wait(lambda: page.view() == "#one", "#one on screen")
    assert page.focused_id() == "composer-input"
    watcher = connect(server.process, "watcher")
    watcher.say("/join #one")
    watcher.expect("*** Now talking in #one")
    page.type("said in one")
    watcher.expect("[#one] <kay> said in one")


def test_phone_sized_screen_collapses_the_sidebar(
    web_server: WebServerFactory, browser: BrowserFactory
):
    server = web_server()
    page = start_page(browser, server.url, "phone", width=390, height=844)
    visible = "return getComputedStyle(document.getElementById('sidebar')).visibility"
    assert page.js(visible) == "hidden"
    page.click("#toggle-sidebar")
    slid_in = "return document.getElementById('sidebar').getBoundingClientRect().left === 0"
    page.wait(lambda: page.js(visible) == "visible" and page.js(slid_in), "the sidebar drawer")
    assert page.js("return document.activeElement.closest('#sidebar') !== null")
    page.click("#room-list .view-item")
    page.wait(lambda: page.js(visible) == "hidden", "the drawer closing")
    width = page.js("return document.documentElement.scrollWidth")
    assert width <= 390  # nothing wider than the screen
    # The message box says what it is for in full, short enough for the screen.
    fits = page.js(
        "const box = document.getElementById('composer-input');"
        "const style = getComputedStyle(box);"
        "const pen = document.createElement('canvas').getContext('2d');"
        "pen.font = `${style.fontSize} ${style.fontFamily}`;"
        "const room = box.clientWidth - parseFloat(style.paddingLeft)"
        "  - parseFloat(style.paddingRight);"
        "return [box.placeholder, pen.measureText(box.placeholder).width <= room];"
    )
    assert fits[1] and fits[0] == "Message #lobby", fits


def test_screenshot_of_the_page_in_use(
    web_server: WebServerFactory,
    browser: BrowserFactory,
    connect: ClientFactory,
    tmp_path: Path,
):
    """The picture in the README: three people, a couple of rooms, a private message."""
    server = web_server()
    alice = start_page(browser, server.url, "alice")
    bob = start_page(browser, server.url, "bob")
    alice.set_nick("alice")
    bob.set_nick("bob")
    carol = connect(server.process, "carol")
    set_nick(carol, "carol")
    carol.say("/join #random")  # a room alice is not in, for the list of other rooms
    for room in ("#design", "#ops"):
        alice.join(room)
        bob.join(room)
    carol.say("/join #ops")
    carol.expect("*** Now talking in #ops")
    alice.wait(lambda: len(alice.members()) == 3, "three in #ops")
    bob.type("deploy went out at 14:02, all green")
    alice.wait(lambda: "all green" in alice.log_text(), "bob's line")
    carol.say("nice. I'm watching the error rate on https://status.example.org")
    alice.wait(lambda: "error rate" in alice.log_text(), "carol's line")
    alice.type("thanks both! retro in #design at 3?")
    carol.expect("retro in #design")
    carol.say("/me brings coffee")
    bob.type("/msg alice can you review my PR after lunch?")
    carol.say("/join #design")
    carol.say("sounds good, I'll bring the sketches")
    alice.wait(lambda: alice.unread("pm-list", "bob") == 1, "bob's private message")
    alice.wait(lambda: alice.unread("room-list", "#design") >= 1, "unread in #design")
    alice.wait(lambda: "brings coffee" in alice.log_text(), "carol's action")
    alice.open_view("room-list", "#ops")
    alice.click("#refresh-rooms")
    alice.wait(lambda: "#random" in alice.items("directory-list"), "#random listed")
    alice.js("document.getElementById('composer-input').value = 'sure, 3pm works'")
    target = (
        REPO_ROOT / "docs" / "web-client.png"
        if os.environ.get("GROUPCHAT_WRITE_SCREENSHOT")
        else tmp_path / "web-client.png"
    )
    assert alice.driver.save_screenshot(str(target))
    assert target.stat().st_size > 10_000
    no_page_errors(alice, bob)


MEDIUM = "a medium line of chat, one row on a desktop and two or three on a phone"


def test_a_log_at_the_bottom_stays_there_when_the_layout_changes(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory
):
    server = web_server()
    page = start_page(browser, server.url, "resize")
    page.set_nick("rita")
    page.join("#resize")
    for n in range(12):
        page.type(f"{n:02} {MEDIUM}")
    page.wait(lambda: f"11 {MEDIUM}" in page.log_text(), "the twelfth line")
    assert page.at_bottom() and not page.overflowing()  # it all fits on a desktop

    page.resize(390, 844)  # a phone, or a narrowed window: lines wrap, the log overflows
    page.wait(page.overflowing, "a log taller than the screen")
    page.wait(page.at_bottom, "the newest line still in view")
    assert not page.shown("jump-latest")
    page.resize(844, 390)  # rotated: shorter still
    page.wait(page.at_bottom, "the newest line in view after rotating")
    page.resize(390, 844)
    page.wait(page.at_bottom, "the newest line in view after rotating back")

    # The nickname form takes room at the top: the log shrinks, its end stays in view.
    page.click("#nick-button")
    page.wait(lambda: page.shown("nick-form"), "the nickname form")
    page.wait(page.at_bottom, "the newest line in view with the form open")
    page.click("#nick-cancel")
    page.wait(page.at_bottom, "the newest line in view with the form closed")

    # Notices (someone coming and going) are lines like any other.
    bob = connect(server.process, "bob")
    set_nick(bob, "bob")
    for _ in range(3):
        bob.say("/join #resize")
        bob.say("/part #resize")
    page.wait(lambda: page.log_text().count("bob left") == 3, "bob's comings and goings")
    page.resize(800, 600)
    page.wait(page.at_bottom, "the newest notice in view after a resize")
    page.resize(390, 844)
    page.wait(page.at_bottom, "the newest notice in view on the phone")

    # Scrolled up by the reader: left where it is, and told of what arrives below...
    page.js("document.getElementById('log').scrollTop = 0")
    page.wait(lambda: not page.at_bottom(), "scrolled up")
    bob.say("/join #resize")
    bob.say("something new below")
    page.wait(lambda: "bob something new below" in page.log_text(), "bob's line")
    page.wait(lambda: page.shown("jump-latest"), "the Jump to latest button")
    page.resize(800, 600)
    page.resize(390, 844)
    assert page.js("return document.getElementById('log').scrollTop") < 50  # not moved
    # ...until it sends a line of its own: that always comes into view.
    page.type("my own line, in view")
    page.wait(lambda: "rita my own line, in view" in page.log_text(), "our own line")
    page.wait(page.at_bottom, "our own line in view")
    assert not page.shown("jump-latest")
    no_page_errors(page)


def test_phone_drawers_close_from_inside_from_outside_and_from_their_toggle(
    web_server: WebServerFactory, browser: BrowserFactory
):
    from selenium.webdriver.common.keys import Keys

    server = web_server()
    page = start_page(browser, server.url, "phone", width=390, height=844)
    page.wait(lambda: page.view() == "#lobby", "#lobby on screen")
    inert = "return document.querySelector('.conversation').inert"

    def is_open(name: str) -> bool:
        return bool(
            page.js(
                "const style = getComputedStyle(document.getElementById(arguments[0]));"
                "return style.visibility === 'visible' && style.transform === 'none';",
                name,
            )
        )

    def is_closed(name: str) -> bool:
        return bool(
            page.js(
                "return getComputedStyle(document.getElementById(arguments[0]))"
                ".visibility === 'hidden'",
                name,
            )
        )

    def expanded(toggle: str) -> str:
        script = "return document.getElementById(arguments[0]).getAttribute('aria-expanded')"
        return str(page.js(script, toggle))

    def open_drawer(name: str, toggle: str) -> None:
        page.click(f"#{toggle}")
        page.wait(lambda: is_open(name), f"the {name} drawer open")
        assert page.js("return document.activeElement.closest(`#${arguments[0]}`) !== null", name)
        assert expanded(toggle) == "true"

    def try_drawer(name: str, toggle: str) -> None:
        # A close button of its own, on screen, inside the drawer; focus goes back after.
        open_drawer(name, toggle)
        close = page.js(
            "const b = document.querySelector(`#${arguments[0]} .drawer-close`);"
            "const r = b && b.getBoundingClientRect();"
            "return r && r.width > 0 && r.left >= 0 && r.right <= innerWidth"
            " && document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2)"
            "    .closest('.drawer-close') === b;",
            name,
        )
        assert close, f"no visible close button in the {name} drawer"
        page.click(f"#{name} .drawer-close")
        page.wait(lambda: is_closed(name), f"the {name} drawer closed by its button")
        assert page.focused_id() == toggle
        assert expanded(toggle) == "false"

        # A tap on the dimmed page beside it closes it.
        open_drawer(name, toggle)
        page.tap_at(370 if name == "sidebar" else 20, 600)
        page.wait(lambda: is_closed(name), f"the {name} drawer closed from outside")

        # So does a tap on its toggle: the drawer leaves it in sight.
        open_drawer(name, toggle)
        where = page.js(
            "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
            "return [r.left + r.width / 2, r.top + r.height / 2];",
            toggle,
        )
        assert page.js(
            "return document.elementFromPoint(...arguments).id === 'drawer-backdrop'", *where
        ), f"the {name} drawer covers its own button"
        page.tap_at(*where)
        page.wait(lambda: is_closed(name), f"the {name} drawer closed at its toggle")

        # The rest of the page is out of reach while it is open; Escape still closes it.
        open_drawer(name, toggle)
        assert page.js(inert)
        page.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        page.wait(lambda: is_closed(name), f"the {name} drawer closed with Escape")
        assert page.focused_id() == toggle
        assert not page.js(inert)

    try_drawer("members", "toggle-members")
    try_drawer("sidebar", "toggle-sidebar")

    # Back on a wide screen, an open drawer is just a column again, and nothing is inert.
    open_drawer("members", "toggle-members")
    page.resize(1280, 800)
    page.wait(lambda: not page.js(inert), "the page usable on a wide screen")
    no_page_errors(page)


def test_other_rooms_stay_fresh_without_the_refresh_button(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory
):
    server = web_server()
    desk = start_page(browser, server.url, "desk")
    desk.spy_on_sent()
    desk.join("#resize")
    desk.type("/part #lobby")
    desk.wait(lambda: "#lobby" not in desk.items("room-list"), "#lobby left")
    desk.click("#refresh-rooms")  # listed while we are in #resize: #lobby (0), #resize (1)
    desk.wait(lambda: any(line == "/rooms" for _, line, _ in desk.sent()), "a /rooms sent")
    desk.type("/ping listed")  # answered in order: once it is, so is the /rooms
    desk.wait(lambda: "pong listed" in desk.log_text(), "the list of rooms")
    desk.type("/part")
    # We were its only member: it is gone, and the list says so at once.
    desk.wait(lambda: "#resize" not in desk.items("room-list"), "#resize left")
    desk.wait(lambda: "#resize" not in desk.items("directory-list"), "#resize gone", 2.0)

    # On a phone, opening the drawer brings the list up to date (within the pacing).
    phone = start_page(browser, server.url, "phone", width=390, height=844)
    phone.spy_on_sent()
    bob = connect(server.process, "bob")
    set_nick(bob, "bob")
    bob.say("/join #fresh")
    bob.expect("*** Now talking in #fresh")
    phone.click("#toggle-sidebar")
    phone.wait(lambda: "#fresh" in phone.items("directory-list"), "#fresh listed", 12.0)
    assert "1" in phone.items("directory-list")["#fresh"]

    # Never more than one automatic /rooms per 10 s, however often it is wanted.
    phone.click("#sidebar .drawer-close")
    phone.click("#toggle-sidebar")
    phone.click("#sidebar .drawer-close")
    asked = [line for _, line, _ in phone.sent() if line == "/rooms"]
    assert len(asked) == 1, asked
    no_page_errors(desk, phone)


def test_notices_come_in_order_once_each_and_in_their_own_view(
    web_server: WebServerFactory, browser: BrowserFactory
):
    server = web_server()
    page = browser("notices")
    page.spy_on_sent(from_load=True)
    page.open(server.url)
    page.wait_connected()
    # First where we are, then nothing that says it again.
    page.wait(lambda: page.view() == "#lobby", "#lobby on screen")
    first = page.log_text().splitlines()
    assert len(first) == 1 and "Connected as guest" in first[0], first
    assert first[0].endswith("in #lobby (1 here).")

    # /help lists what the page takes: not /format, which it refuses.
    page.type("/help")
    page.wait(lambda: "/nick NAME" in page.log_text(), "the list of commands")
    assert "/format" not in page.log_text()

    # A reload restores the name and the room, sent first thing, in one message...
    page.set_nick("alice")
    page.join("#dev")
    page.type("/part #lobby")
    page.wait(lambda: "#lobby" not in page.items("room-list"), "#lobby left")
    page.driver.refresh()
    page.wait_connected()
    assert page.view() == "#dev" and page.nick() == "alice"
    assert page.sent()[0][1:] == ("/nick alice", 0) and page.sent()[1][1:] == ("/join #dev", 0)
    # ...and says so once, in the view on screen; no news of rooms left long ago.
    page.wait(lambda: "Reconnected as alice in #dev (1 here)." in page.log_text(), "restored")
    assert "#lobby" not in page.log_text() and "known as" not in page.log_text()

    # The server going away is said once.
    server.stop()
    page.wait(lambda: page.status() == "reconnecting", "reconnecting")
    log = page.log_text()
    assert log.count("shutting down") == 1 and "Disconnected" not in log, log
    no_page_errors(page, ignore=("WebSocket connection to",))


def test_common_nicknames_get_colours_of_their_own(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory
):
    server = web_server()
    page = start_page(browser, server.url, "colours")
    names = ("alice", "bob", "carol", "dave", "eve", "tom")
    for name in names:
        client = connect(server.process, name)
        set_nick(client, name)
        client.say(f"hi, {name} here")
    page.wait(lambda: all(f"{name} hi" in page.log_text() for name in names), "six lines")
    colours = page.js(
        "const seen = {};"
        "for (const n of document.querySelectorAll('#log .message .nick'))"
        "  seen[n.textContent] = getComputedStyle(n).color;"
        "return seen;"
    )
    assert len(set(colours.values())) == len(names), colours
    no_page_errors(page)


# The conversation on screen, entry by entry: its classes and its chat text (null for
# notices and dividers), to tell history from live lines and count each line.
ENTRIES = (
    "const list = document.querySelector('#log > ol:not([hidden])');"
    "return [...list.children].map((li) => {"
    "  const text = li.querySelector('.text');"
    "  return [li.className, text && li.querySelector('.nick') ? text.textContent : null]; });"
)


def chat_lines(page: ChatPage, *, history: bool | None = None) -> list[str]:
    """The chat lines on screen, in order: all, only history (True) or only live."""
    return [
        text
        for classes, text in page.js(ENTRIES)
        if text is not None and (history is None or ("history" in classes.split()) == history)
    ]


def test_history_shows_above_live_lines_and_once_across_a_reconnect(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory, tmp_path: Path
):
    web_port = free_port()
    path = str(tmp_path / "history.sqlite3")
    first = web_server("--history", path, web_port=web_port)
    carol = connect(first.process, "carol")
    set_nick(carol, "carol")
    carol.say("/join #tea")
    carol.expect("*** Now talking in #tea")
    carol.say("first words")
    carol.say("/me pours tea")
    carol.barrier()

    alice = start_page(browser, first.url, "alice")
    alice.set_nick("alice")
    alice.join("#tea")
    said = ["first words", "pours tea"]
    alice.wait(lambda: chat_lines(alice, history=True) == said, "the history")
    # Above the rest, between dividers (under "Beginning of kept history" on a server
    # that says whether there is more).
    classes = [c for c, _ in alice.js(ENTRIES) if c != "history-older"]
    assert classes[:4] == [
        "history-divider start",
        "entry message history",
        "entry action history",
        "history-divider end",
    ], classes
    assert "You joined #tea" in alice.log_text().split("\n")[-1]
    # Dated: a line kept may be days old.
    assert alice.js(
        "return document.querySelector('#log .entry.history .time').textContent.length > 5"
    )

    carol.say("said live")
    alice.wait(lambda: "said live" in chat_lines(alice), "the live line")
    assert chat_lines(alice, history=False) == ["said live"]  # live, once
    alice.type("and mine")
    carol.expect("[#tea] <alice> and mine")

    # A restart: the page rejoins #tea and is told its history again; what it shows
    # already is not shown twice, what was said meanwhile is shown once.
    first.stop()
    alice.wait(lambda: alice.status() == "reconnecting", "reconnecting")
    second = web_server("--history", path, web_port=web_port)
    dave = connect(second.process, "dave")
    set_nick(dave, "dave")
    dave.say("/join #tea")
    dave.expect("*** Now talking in #tea")
    dave.say("while you were away")
    alice.wait_connected(RECONNECT_WAIT)
    alice.wait(lambda: "while you were away" in chat_lines(alice), "the line said meanwhile")
    lines = chat_lines(alice)
    for text in (*said, "said live", "and mine", "while you were away"):
        assert lines.count(text) == 1, lines
    assert alice.view() == "#tea"
    no_page_errors(alice, ignore=("WebSocket connection to",))


def test_show_older_messages_loads_the_page_before_and_keeps_the_reading_position(
    web_server: WebServerFactory, browser: BrowserFactory, connect: ClientFactory, tmp_path: Path
):
    server = web_server(
        "--history", str(tmp_path / "history.sqlite3"), "--history-replay", "20",
        "--rate", "100", "--burst", "100",
    )  # fmt: skip
    carol = connect(server.process, "carol")
    set_nick(carol, "carol")
    carol.say("/join #tea")
    carol.expect("*** Now talking in #tea")
    carol.say("/history #tea 1")
    carol.barrier()
    if carol.count(lambda line: "unknown command /history" in line):
        pytest.skip("this server has no /history command yet (unknown command /history)")
    said = [f"line {n:02}" for n in range(40)]
    for text in said:
        carol.say(text)
    carol.barrier()

    alice = start_page(browser, server.url, "alice", height=500)
    alice.set_nick("alice")
    alice.spy_on_sent()
    alice.join("#tea")
    alice.wait(lambda: chat_lines(alice, history=True) == said[20:], "the last 20 lines")
    alice.wait(alice.overflowing, "a log taller than the screen")
    assert alice.js("return document.querySelector('#log .history-more').textContent") == (
        "Show older messages"
    )

    # Read up to the top, note where the oldest line shown is, and ask for older ones.
    alice.js("document.getElementById('log').scrollTop = 0")
    where = "return [...document.querySelectorAll('#log .entry.history')].find((li) => li.textContent.endsWith(arguments[0])).getBoundingClientRect().top"  # noqa: E501
    before = alice.js(where, "line 20")
    alice.click("#log .history-more")
    alice.wait(lambda: chat_lines(alice, history=True) == said, "the 20 older lines above")
    assert abs(alice.js(where, "line 20") - before) < 2  # what was read stays in place
    assert not alice.at_bottom()
    alice.wait(
        lambda: (
            alice.js("return document.querySelector('#log .history-older').textContent")
            == "Beginning of kept history"
        ),
        "the beginning of kept history",
    )
    assert any(line == "/history #tea 50" for _, line, _ in alice.sent())
    carol.say("and now live")
    alice.wait(lambda: chat_lines(alice, history=False) == ["and now live"], "a live line")
    no_page_errors(alice)
