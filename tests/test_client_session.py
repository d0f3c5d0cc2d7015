"""The client's protocol logic on StringTransport with a fake clock: no sockets, no time."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task
from twisted.internet.testing import StringTransport

from twisted_chat.client.session import ChatClientProtocol, ClientSession
from twisted_chat.events import Format


class Client:
    def __init__(self, nick: str | None = None, room: str | None = None) -> None:
        self.clock = task.Clock()
        self.events: list[dict[str, Any]] = []
        self.status: list[str] = []
        self.session = ClientSession(
            self.clock, self.events.append, self.status.append, nick=nick, room=room
        )
        self.protocol: ChatClientProtocol | None = None
        self.transport: StringTransport | None = None
        self._read = 0

    def connect(self) -> ChatClientProtocol:
        self.protocol = ChatClientProtocol(self.session)
        self.transport = StringTransport()
        self._read = 0
        self.protocol.makeConnection(self.transport)
        return self.protocol

    def sent(self) -> list[str]:
        assert self.transport is not None
        data = self.transport.value()
        fresh, self._read = data[self._read :], len(data)
        return [line.decode() for line in fresh.split(b"\n") if line]

    def receive(self, **event: Any) -> None:
        assert self.protocol is not None
        event.setdefault("ts", self.clock.seconds())
        self.protocol.dataReceived(json.dumps(event).encode() + b"\r\n")

    def welcome(
        self,
        nick: str = "guest1",
        rooms: tuple[str, ...] = ("#lobby",),
        interval: float = 10.0,
        timeout: float = 30.0,
        limits: dict[str, float] | None = None,
    ) -> None:
        self.receive(
            type="welcome",
            nick=nick,
            rooms=list(rooms),
            current=rooms[0],
            heartbeat={"interval": interval, "timeout": timeout, "sweep": 1.0, "warning": 5.0},
            max_line=2048,
            limits=limits,
            server="groupchat",
            version="0.1.0",
            format="json",
        )

    def lose(self) -> None:
        assert self.protocol is not None and self.transport is not None
        self.transport.loseConnection()
        self.protocol.connectionLost()


def test_switches_to_json_and_ignores_the_text_greeting():
    c = Client()
    p = c.connect()
    assert c.sent() == ["/format json"]
    p.dataReceived(b"*** Welcome to groupchat 0.1.0, guest1! You are in #lobby.\r\n")
    p.dataReceived(b"*** [#lobby] guest1 joined (1 here)\r\n")
    assert c.events == []
    c.welcome()
    assert [e["type"] for e in c.events] == ["welcome"]
    assert c.session.nick == "guest1" and c.session.rooms == ["#lobby"]


def test_heartbeats_follow_the_announced_interval():
    c = Client()
    c.connect()
    c.welcome(interval=7.0, timeout=21.0)
    c.sent()
    pings = []
    for _ in range(50):  # 5 s in 0.1 s steps per beat window
        c.clock.advance(0.5)
        for line in c.sent():
            pings.append((c.clock.seconds(), line))
        c.receive(type="pong", token="hb-x")  # server answers; keeps it alive
    assert [t for t, _ in pings] == [7.0, 14.0, 21.0]
    assert all(line.startswith("/ping hb-") for _, line in pings)
    assert not any(e["type"] == "pong" for e in c.events)  # our heartbeats are not shown


def test_own_ping_pong_is_shown():
    c = Client()
    c.connect()
    c.welcome()
    c.receive(type="pong", token="mine")
    assert c.events[-1]["type"] == "pong"


def test_missing_pong_aborts_the_connection_so_it_reconnects():
    c = Client()
    c.connect()
    c.welcome(interval=5.0, timeout=15.0)
    assert c.transport is not None
    c.clock.pump([1.0] * 15)
    assert not c.transport.disconnecting  # silent for 15 s: not yet past the timeout
    c.clock.pump([1.0] * 5)
    assert c.transport.disconnecting
    assert any("no answer from the server" in s for s in c.status)


def test_server_that_never_greets_is_dropped():
    c = Client()
    c.connect()
    assert c.transport is not None
    c.clock.advance(10.0)
    assert c.transport.disconnecting


def test_first_connection_asks_for_nick_and_room():
    c = Client(nick="alice", room="#ops")
    c.connect()
    c.sent()
    c.welcome()
    assert c.sent() == ["/nick alice", "/join #ops"]


def test_reconnect_restores_nick_rooms_current_room_and_pending_lines():
    c = Client(nick="alice")
    c.connect()
    c.welcome()
    c.receive(type="nick", old="guest1", new="alice")
    for room in ("#ops", "#dev"):
        c.receive(type="join", room=room, nick="alice", count=1)
        c.receive(type="current", room=room)
    c.receive(type="part", room="#lobby", nick="alice", reason="")
    c.receive(type="current", room="#ops")  # e.g. the user ran /join #ops again
    assert c.session.rooms == ["#ops", "#dev"] and c.session.current == "#ops"
    c.lose()
    c.session.send("said while offline")
    assert c.session.pending == 1
    c.connect()
    c.sent()
    c.welcome(nick="guest9")
    assert c.sent() == [
        "/nick alice",
        "/join #ops",
        "/join #dev",
        "/part #lobby",
        "/join #ops",
        "said while offline",
    ]
    assert c.session.pending == 0
    assert c.events[-1]["type"] == "welcome" and c.events[-1]["restored"] is True


def test_nickname_still_held_by_the_old_connection_is_retried():
    c = Client(nick="alice")
    c.connect()
    c.welcome()
    c.receive(type="nick", old="guest1", new="alice")
    c.lose()
    c.connect()
    c.welcome(nick="guest2", timeout=30.0)
    c.sent()
    c.receive(type="error", code="nick-taken", message="taken")
    assert not any(e["type"] == "error" for e in c.events)  # handled, not shown
    assert any("is taken (perhaps still by our previous connection" in s for s in c.status)
    c.clock.advance(5.0)
    assert "/nick alice" in c.sent()
    c.receive(type="nick", old="guest2", new="alice")
    assert c.session.nick == "alice"


def test_taken_nick_on_first_connection_is_shown_and_given_up():
    c = Client(nick="bob")
    c.connect()
    c.welcome()
    assert c.sent()[-1] == "/nick bob"
    c.receive(type="error", code="nick-taken", message="the nickname 'bob' is taken")
    assert c.events[-1]["type"] == "error"
    assert c.session.wanted_nick is None
    c.clock.advance(30.0)
    assert "/nick bob" not in c.sent()


def test_lines_sent_while_connected_go_straight_out_in_order():
    c = Client()
    c.connect()
    c.welcome()
    c.sent()
    for i in range(5):
        c.session.send(f"line {i}")
    assert c.sent() == [f"line {i}" for i in range(5)]


def test_quit_resolves_closed_when_the_server_closes():
    c = Client()
    c.connect()
    c.welcome()
    c.session.quit("done")
    assert c.sent()[-1] == "/quit done"
    c.receive(type="bye", reason="you quit")
    c.lose()
    assert c.session.closed.called


def test_connection_loss_cleans_up_timers():
    c = Client()
    c.connect()
    c.welcome()
    c.lose()
    assert c.clock.getDelayedCalls() == []
    assert any("reconnecting" in s for s in c.status)


def test_lines_are_paced_under_the_announced_rate():
    c = Client()
    c.connect()
    c.welcome(limits={"rate": 5.0, "burst": 10.0, "byte_rate": 16384.0, "flood_timeout": 60.0})
    c.sent()
    for i in range(30):
        c.session.send(f"line {i}")
    assert len(c.sent()) == 8  # the burst, less what /format json and a margin used
    times = []
    for _ in range(100):
        c.clock.advance(0.1)
        times += [c.clock.seconds()] * len([x for x in c.sent() if x.startswith("line")])
    assert len(times) == 22
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 4.0 < rate <= 4.6  # 0.9 of the server's 5 lines/s
    assert c.session.pending == 0


def test_dead_server_is_noticed_within_a_second_of_the_timeout():
    c = Client()
    c.connect()
    c.welcome(interval=10.0, timeout=30.0)
    assert c.transport is not None
    c.clock.pump([1.0] * 30)
    assert not c.transport.disconnecting
    c.clock.pump([1.0])
    assert c.transport.disconnecting


def test_format_is_refused_locally_because_the_client_needs_json():
    c = Client()
    c.connect()
    c.welcome()
    c.sent()
    assert c.session.send("/format text") is False
    assert c.sent() == []
    assert any("/format" in s for s in c.status)


def test_crowd_summaries_read_the_same_in_the_client_as_in_text_mode():
    from twisted_chat.client.render import system_line
    from twisted_chat.events import Crowd

    event = Crowd(
        ts=0,
        room="#lobby",
        count=5000,
        joined=["ann", "bo"],
        joined_count=40,
        left=["cy"],
        left_count=1,
        renamed=[("dee", "dora")],
        renamed_count=1,
    )
    wire = json.loads(event.encode(Format.JSON))
    line = system_line(wire)
    assert line == "#lobby: 40 joined: ann, bo (+38); 1 left: cy; 1 renamed: dee -> dora; 5000 here"
    assert event.text() == "*** [#lobby] " + line.split(": ", 1)[1]
    hostile = {"type": "crowd", "room": "#x\x1b[2J", "joined": ["\x1b]0;x\x07"], "joined_count": 1}
    assert "\x1b" not in (system_line(hostile) or "x\x1b")
