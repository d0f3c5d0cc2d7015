"""History over the network, on the in-memory bus: every node shows a joiner the same
lines with the same ids, wherever they were said, and ``/history`` reads the streams."""

from __future__ import annotations

import json
from typing import Any

from tests.test_backplane import join, network
from twisted_chat.backplane.history import STREAM, Line, NetworkHistory, to_id, to_stream_id
from twisted_chat.core.names import room_key

TEA = STREAM + room_key("#tea")


def events(conn: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in conn.new_lines()]


def in_json(bus: Any, h: Any, nick: str) -> Any:
    conn = join(bus, h, nick)
    conn.send(b"/format json\r\n")
    conn.new_lines()
    return conn


def test_ids_are_stream_ids_as_integers_in_order():
    assert to_id("1764583200123-4") == 1764583200123 * 1024 + 4
    assert to_stream_id(to_id("1764583200123-4")) == "1764583200123-4"
    assert to_id("5-0") < to_id("5-1") < to_id("6-0")
    assert to_id(b"8000000000000-1023") < 2**53  # year 2223: still exact in JavaScript


def test_a_joiner_on_another_node_sees_the_same_lines_and_ids_then_live():
    bus, (one, two) = network(2, replay=3)
    alice = join(bus, one, "alice")
    alice.send(b"/join #tea\r\n")
    for i in range(5):
        alice.send(f"line {i}\r\n".encode())
    alice.send(b"/me pours\r\n")
    bus.settle()
    stored = bus.streams[TEA]
    assert [json.loads(fields["e"])["text"] for _, fields in stored] == [
        *(f"line {i}" for i in range(5)), "pours"
    ]  # fmt: skip
    bob = in_json(bus, two, "bob")
    carol = in_json(bus, one, "carol")
    for conn in (bob, carol):  # on the node it was said on and on the other
        conn.send(b"/join #tea\r\n")
        bus.settle()
        (shown,) = [e for e in events(conn) if e["type"] == "history"]
        assert [(i["kind"], i["text"]) for i in shown["items"]] == [
            ("message", "line 3"), ("message", "line 4"), ("action", "pours")
        ]  # fmt: skip
        assert [i["id"] for i in shown["items"]] == [to_id(sid) for sid, _ in stored[-3:]]
        assert shown["more"] is True
    alice.send(b"live\r\n")
    bus.settle()
    assert [e["text"] for e in events(bob) if e["type"] == "message"] == ["live"]


def test_history_pages_back_through_the_stream_from_any_node():
    bus, (one, two) = network(2, replay=2)
    alice = join(bus, one, "alice")
    alice.send(b"/join #tea\r\n")
    for i in range(10):
        alice.send(f"line {i}\r\n".encode())
    bus.settle()
    bob = in_json(bus, two, "bob")
    bob.send(b"/join #tea\r\n")
    bus.settle()
    events(bob)
    bob.send(b"/history 5\r\n")
    (page,) = [e for e in events(bob) if e["type"] == "history"]
    assert [i["text"] for i in page["items"]] == [f"line {i}" for i in range(3, 8)]
    assert page["page"] and page["more"]
    bob.send(b"/history 5\r\n")
    (page,) = [e for e in events(bob) if e["type"] == "history"]
    assert [i["text"] for i in page["items"]] == [f"line {i}" for i in range(3)]
    assert not page["more"]


def test_a_line_just_said_here_is_shown_before_it_has_an_id_and_numbered_after():
    bus, (one, _) = network(2, replay=5)
    alice = join(bus, one, "alice")
    alice.send(b"/join #tea\r\nfirst\r\n")
    bus.settle()
    bus.slow_ids = []  # Redis has not answered the publish of what follows yet
    alice.send(b"second\r\n")
    carol = one.connect()
    carol.send(b"/format json\r\n/nick carol\r\n/join #tea\r\n")
    (shown,) = [e for e in events(carol) if e["type"] == "history"]
    first, second = shown["items"]
    assert isinstance(first["id"], int) and second["id"] is None
    for answer in bus.slow_ids:
        answer()
    bus.slow_ids = None
    bus.settle()
    history = one.service.history
    assert isinstance(history, NetworkHistory)
    items, _ = history.recent(room_key("#tea"), 5)
    assert [i.id for i in items] == [to_id(sid) for sid, _ in bus.streams[TEA]]
    # Paging starts below the oldest numbered line carol was shown.
    carol.send(b"/history\r\n")
    (page,) = [e for e in events(carol) if e["type"] == "history"]
    assert page["items"] == []


def test_lines_said_while_the_network_is_split_are_shown_here_but_not_kept():
    bus, (one, two) = network(2, replay=5)
    alice = join(bus, one, "alice")
    alice.send(b"/join #tea\r\n")
    bus.settle()
    bus.apart.add("n1")
    alice.send(b"unheard\r\n")
    bus.settle()
    assert TEA not in bus.streams
    carol = one.connect()
    carol.send(b"/format json\r\n/nick carol\r\n/join #tea\r\n")
    (shown,) = [e for e in events(carol) if e["type"] == "history"]
    assert [(i["id"], i["text"]) for i in shown["items"]] == [(None, "unheard")]
    bus.apart.clear()
    alice.send(b"heard\r\n")
    bus.settle()
    assert [json.loads(f["e"])["text"] for _, f in bus.streams[TEA]] == ["heard"]
    history = one.service.history
    assert isinstance(history, NetworkHistory)
    items, _ = history.recent(room_key("#tea"), 5)
    assert [(i.text, i.id is None) for i in items] == [("unheard", True), ("heard", False)]


def test_a_node_starting_later_reads_the_last_lines_and_merges_what_arrives():
    history = NetworkHistory(clock=None, replay=5, keep=1000, tail=4)  # type: ignore[arg-type]
    key = room_key("#tea")
    history.record(key, 5.0, "message", "al", "live 5", ident=to_id("5-0"))
    stored = [Line(to_id(f"{ms}-0"), key, float(ms), "message", "al", f"old {ms}")
              for ms in range(1, 6)]  # fmt: skip
    history.loaded(key, stored)  # "5-0" is here already; what came before it is added
    items, more = history.recent(key, 10)
    assert [i.text for i in items] == ["old 2", "old 3", "old 4", "live 5"] and more
    history.record(key, 5.0, "message", "al", "again", ident=to_id("4-0"))  # a duplicate
    history.record(key, 6.0, "message", "al", "live 6", ident=to_id("6-0"))
    assert [i.text for i in history.recent(key, 10)[0]][-2:] == ["live 5", "live 6"]
    assert history.mark(key) == to_id("6-0") + 1
