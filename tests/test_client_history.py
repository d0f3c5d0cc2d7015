"""Room history in the terminal client: set apart from live lines, dated, told once."""

from __future__ import annotations

import time
from typing import Any

from tests.test_client_session import Client
from twisted_chat.client.render import SeenLines, history, history_stamp, plain, render

NOW = 1764583200.0  # the reader's "now" in these tests


def tea(*items: Any, more: bool | None = True, page: bool = False) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "history",
        "ts": NOW,
        "room": "#tea",
        "with": None,
        "items": list(items),
        "page": page,
    }
    if more is not None:
        event["more"] = more
    return event


def item(id_: int, ts: float, nick: str, text: str, kind: str = "message") -> dict[str, Any]:
    return {"id": id_, "ts": ts, "kind": kind, "nick": nick, "text": text}


def lines(event: dict[str, Any], me: str | None = None) -> list[str]:
    return plain(history(event, me, now=NOW)).split("\n")


def test_history_is_framed_dated_and_says_how_to_get_older_lines():
    days_ago = NOW - 3 * 86400
    shown = lines(
        tea(item(41, days_ago, "alice", "hi"), item(42, NOW - 60, "bob", "waves", "action"))
    )
    assert shown[0] == "── earlier in #tea (2) ──"
    day = time.strftime("%Y-%m-%d %H:%M", time.localtime(days_ago))
    assert shown[1] == f"{day} #tea        alice hi"
    today = time.strftime("%H:%M", time.localtime(NOW - 60))
    assert shown[2] == f"{today} #tea            * bob waves"  # today: the time alone
    assert shown[3] == "── /history #tea for older ──"
    assert len(shown) == 4


def test_the_footer_says_when_these_reach_back_to_the_oldest_kept():
    assert lines(tea(item(1, NOW, "alice", "hi"), more=False))[-1] == "── start of kept history ──"
    # A server from before paging sends no ``more``: the footer just closes the block.
    assert lines(tea(item(1, NOW, "alice", "hi"), more=None))[-1] == "── end of earlier messages ──"


def test_an_empty_page_says_nothing_older_is_kept():
    assert lines(tea(more=False, page=True)) == ["── nothing older kept in #tea ──"]


def test_history_lines_are_styled_apart_from_live_ones():
    fragments = history(tea(item(1, NOW, "alice", "hi")), now=NOW)
    styles = [style for style, _ in fragments]
    assert styles[0] == "class:history-rule" and styles[-1] == "class:history-rule"
    assert ("class:history", "hi") in fragments
    live = render({"type": "message", "ts": NOW, "room": "#tea", "nick": "alice", "text": "hi"})
    assert live is not None and ("", "hi") in live  # a live line's text is not muted


def test_a_private_conversation_is_labelled_like_live_private_messages():
    event = {
        "type": "history",
        "ts": NOW,
        "room": None,
        "with": "bob",
        "items": [
            {**item(7, NOW, "bob", "psst", "private"), "to": "alice"},
            {**item(8, NOW, "alice", "ok", "private"), "to": "bob"},
        ],
        "more": True,
        "page": True,
    }
    shown = lines(event, me="alice")
    assert shown[0] == "── earlier with bob (2) ──"
    assert shown[1].endswith("[PM from bob] psst")
    assert shown[2].endswith("[PM to bob] ok")
    assert shown[3] == "── /history bob for older ──"


def test_history_text_is_cleaned_like_every_other_string():
    shown = lines(tea(item(1, NOW, "mal\x1b[2Jlory", "clear\x1b]0;pwned\x07 me")))
    assert "\x1b" not in "".join(shown) and "\x07" not in "".join(shown)


def test_odd_items_and_times_do_not_break_rendering():
    event = tea("not an item", {"id": 3, "ts": "soon", "kind": "message"}, more=False)
    assert lines(event)[1].startswith("--:-- #tea")
    assert history_stamp(None) == "--:--"
    assert plain(render({"type": "history", "room": "#tea", "items": None}) or []) == (
        "── nothing earlier kept in #tea ──"
    )


def test_a_replay_after_a_reconnect_shows_only_what_was_missed():
    seen = SeenLines()
    first = tea(item(1, NOW - 100, "alice", "one"), item(2, NOW - 90, "bob", "two"))
    assert seen.unseen(first) is first
    # Then live: bob's line (same time and text as the server records it), and our own
    # line as the client echoed it, with the client's clock.
    seen.note(
        {"type": "message", "ts": NOW - 50, "room": "#tea", "nick": "bob", "text": "three"}, "me"
    )
    seen.note_own("#tea", None, "me", "four")
    replay = tea(
        item(2, NOW - 90, "bob", "two"),
        item(3, NOW - 50, "bob", "three"),
        item(4, NOW - 49.7, "me", "four"),
        item(5, NOW - 10, "carol", "said while we were away"),
    )
    unseen = seen.unseen(replay)
    assert unseen is not None
    assert [i["id"] for i in unseen["items"]] == [5]
    assert seen.unseen(replay) is None  # nothing new the second time round
    # A page the user asked for shows everything, seen or not (it may have scrolled away).
    page = tea(item(1, NOW - 100, "alice", "one"), page=True)
    assert seen.unseen(page) is page


def test_seen_lines_are_bounded_and_per_conversation():
    seen = SeenLines(limit=3)
    seen.unseen(tea(*(item(i, NOW + i, "alice", f"line {i}") for i in range(5))))
    assert len(seen._keys) == 3
    other = dict(tea(item(4, NOW + 4, "alice", "line 4")), room="#coffee")
    assert seen.unseen(other) is other  # the same id in another room is another line


def test_history_typed_by_the_user_goes_to_the_server_and_its_answer_is_shown():
    c = Client()
    c.connect()
    c.sent()
    c.welcome(nick="alice", rooms=("#tea",))
    c.sent()
    assert c.session.send("/history #tea 50")
    assert c.sent() == ["/history #tea 50"]
    c.receive(**tea(item(1, NOW, "bob", "hi"), page=True, more=False))
    assert c.events[-1]["type"] == "history"
    assert c.session.errors == 0
    rendered = render(c.events[-1], "alice")
    assert rendered is not None and "bob hi" in plain(rendered)
