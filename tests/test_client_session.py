"""The client's protocol logic on StringTransport with a fake clock: no sockets, no time."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task
from twisted.internet.testing import StringTransport

from twisted_chat.client.session import RESTORED_TOKEN, ChatClientProtocol, ClientSession
from twisted_chat.render import JSON, TEXT


class Client:
    def __init__(
        self, nick: str | None = None, room: str | None = None, strict: bool = False
    ) -> None:
        self.clock = task.Clock()
        self.events: list[dict[str, Any]] = []
        self.status: list[str] = []
        self.session = ClientSession(
            self.clock, self.events.append, self.status.append, nick=nick, room=room, strict=strict
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
        max_line: int = 2048,
    ) -> None:
        self.receive(
            type="welcome",
            nick=nick,
            rooms=list(rooms),
            current=rooms[0],
            heartbeat={"interval": interval, "timeout": timeout, "sweep": 1.0, "warning": 5.0},
            max_line=max_line,
            limits=limits,
            server="groupchat",
            version="0.1.0",
            format="json",
        )

    def restored(self) -> None:
        """The server's answer to the barrier after the restoring commands."""
        self.receive(type="pong", token=RESTORED_TOKEN)

    def lose(self) -> None:
        assert self.protocol is not None and self.transport is not None
        self.transport.loseConnection()
        self.protocol.connectionLost()


def test_switches_to_json_and_ignores_the_text_greeting():
    c = Client()
    p = c.connect()
    assert c.sent() == ["/format json"]  # no --nick, no --room: nothing else to ask
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
    early: list[str] = []
    c.session.on_lost_early.append(early.append)
    c.connect()
    assert c.transport is not None
    c.clock.advance(10.0)
    assert c.transport.disconnecting
    assert early == ["the server did not greet us within 10 s"]  # the reason, once


def test_first_lines_ask_for_nick_and_room_before_the_welcome():
    c = Client(nick="alice", room="#ops")
    c.connect()
    assert c.sent() == ["/format json", "/nick alice", "/join #ops"]
    assert c.transport is not None and c.transport.value().count(b"\n") == 3  # one write
    ready = c.session.when_ready()
    c.welcome(nick="alice", rooms=("#ops",))  # the server seated us as asked
    assert c.sent() == [] and ready.called


def test_reconnect_restores_nick_rooms_current_room_and_pending_lines():
    c = Client(nick="alice")
    c.connect()
    c.welcome(nick="alice")
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
    assert c.sent() == ["/format json", "/nick alice", "/join #ops"]
    c.welcome(nick="alice", rooms=("#ops",))
    assert c.sent() == ["/join #dev", "/join #ops", f"/ping {RESTORED_TOKEN}"]
    assert c.session.pending == 1  # held until the server has answered all of that
    assert c.events[-1]["type"] == "welcome" and c.events[-1]["restored"] is True
    c.restored()
    assert c.sent() == ["said while offline"]
    assert c.session.pending == 0


def test_nickname_still_held_by_the_old_connection_is_retried():
    c = Client(nick="alice")
    c.connect()
    c.welcome(nick="alice")
    c.lose()
    c.connect()
    c.sent()
    c.welcome(nick="guest2", timeout=30.0)
    assert c.sent() == [f"/ping {RESTORED_TOKEN}"]  # asked already: its answer follows
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
    assert "/nick bob" in c.sent()
    c.welcome()
    assert c.sent() == [f"/ping {RESTORED_TOKEN}"]  # not asked twice; its answer follows
    c.receive(type="error", code="nick-taken", message="the nickname 'bob' is taken")
    assert c.events[-1]["type"] == "error"
    assert c.status[-1] == "you are chatting as guest1; type /nick NAME to pick another name"
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
    named = Client(nick="alice", room="#tea")  # /nick and /join were sent too
    named.connect()
    named.welcome(
        nick="alice",
        rooms=("#tea",),
        limits={"rate": 5.0, "burst": 10.0, "byte_rate": 16384.0, "flood_timeout": 60.0},
    )
    named.sent()
    for i in range(30):
        named.session.send(f"line {i}")
    assert len([x for x in named.sent() if x.startswith("line")]) == 6
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
    from twisted_chat.core.events import Crowd

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
    wire = json.loads(JSON.encode(event))
    line = system_line(wire)
    assert line == "#lobby: 40 joined: ann, bo (+38); 1 left: cy; 1 renamed: dee -> dora; 5000 here"
    assert TEXT.text(event) == "*** [#lobby] " + line.split(": ", 1)[1]
    hostile = {"type": "crowd", "room": "#x\x1b[2J", "joined": ["\x1b]0;x\x07"], "joined_count": 1}
    assert "\x1b" not in (system_line(hostile) or "x\x1b")


# -- naming yourself: strict (scripts) and interactive ----------------------------------


def test_strict_holds_lines_until_the_nick_and_room_are_confirmed():
    c = Client(nick="ci", room="#ops", strict=True)
    c.connect()
    c.session.send("deploy done")  # a pipe is read before the server answers
    assert c.sent() == ["/format json", "/nick ci", "/join #ops"]
    ready = c.session.when_ready()
    assert not ready.called
    c.welcome(nick="ci", rooms=("#ops",))  # seated as ci in #ops: confirmed
    assert ready.called
    assert c.sent() == ["deploy done"]


def test_strict_taken_nick_sends_nothing_quits_and_fails_with_the_reason():
    c = Client(nick="Frank", room="#ops", strict=True)
    c.connect()
    for line in ("deploy done", "second line"):
        c.session.send(line)
    ready = c.session.when_ready()
    failures: list[str] = []
    ready.addErrback(lambda f: failures.append(f.getErrorMessage()))
    assert c.sent() == ["/format json", "/nick Frank", "/join #ops"]
    c.welcome(nick="guest15")  # a guest in #lobby, never in #ops
    assert c.sent() == []
    taken = "the nickname 'Frank' is taken (or looks too much like one that is)"
    c.receive(type="error", code="nick-taken", message=taken)
    assert c.sent() == ["/quit"]
    assert c.session.fatal == f"cannot talk as Frank: {taken}; nothing was sent"
    assert failures == [c.session.fatal]
    assert not any(e["type"] == "error" for e in c.events)  # told once, in the reason
    assert c.session.send("third line") is False
    assert c.sent() == [] and c.session.pending == 0
    c.receive(type="bye", reason="you quit")
    c.lose()
    assert c.session.closed.called
    assert c.clock.getDelayedCalls() == []


def test_strict_refused_room_sends_nothing_and_fails_with_the_servers_reason():
    c = Client(nick="ci", room="#ops", strict=True)
    c.connect()
    c.session.send("deploy done")
    c.sent()
    c.welcome(nick="ci")  # seated as ci, but in #lobby: #ops was refused
    assert c.sent() == [f"/ping {RESTORED_TOKEN}"]  # collect the refusal, not ask again
    c.receive(type="error", code="room-full", message="#ops is full (at most 2 members)")
    c.restored()
    assert c.sent() == ["/quit"]
    assert c.session.fatal == (
        "cannot talk in #ops: #ops is full (at most 2 members); nothing was sent"
    )


def test_strict_reconnect_holds_lines_while_the_nick_is_asked_back_and_gives_up():
    c = Client(nick="ci", strict=True)
    c.connect()
    c.welcome(nick="ci")
    c.session.send("before")
    c.lose()
    c.session.send("after the drop")
    c.connect()
    c.sent()
    c.welcome(nick="guest2", timeout=10.0)
    c.receive(type="error", code="nick-taken", message="taken")
    assert c.sent() == []  # not as guest2
    c.clock.advance(2.5)
    assert c.sent() == ["/nick ci"]
    c.receive(type="error", code="nick-taken", message="taken")
    for _ in range(20):
        c.clock.advance(2.5)
        c.receive(type="pong", token="hb-x")
        if c.session.fatal:
            break
        assert all(line.startswith(("/nick ci", "/ping hb-")) for line in c.sent())
        c.receive(type="error", code="nick-taken", message="taken")
    assert c.session.fatal == "could not get back the nickname ci; 1 line was not sent"
    assert c.sent()[-1] == "/quit"


def test_strict_reconnect_releases_lines_once_the_nick_is_back():
    c = Client(nick="ci", strict=True)
    c.connect()
    c.welcome(nick="ci")
    c.lose()
    c.session.send("after the drop")
    c.connect()
    c.sent()
    c.welcome(nick="guest2")
    c.receive(type="error", code="nick-taken", message="taken")
    c.clock.advance(5.0)
    assert c.sent() == ["/nick ci"]
    c.receive(type="nick", old="guest2", new="ci")
    assert c.sent() == ["after the drop"]  # already in #lobby, its room: nothing to restore
    assert c.session.fatal is None


def test_interactive_taken_nick_says_which_name_you_have_and_lines_still_go():
    c = Client(nick="Frank")
    c.connect()
    c.session.send("hello")
    c.sent()
    c.welcome(nick="guest15")
    assert c.sent() == [f"/ping {RESTORED_TOKEN}"]  # hello waits for the answer to /nick
    c.receive(type="error", code="nick-taken", message="the nickname 'Frank' is taken")
    assert c.events[-1] == {
        "type": "error",
        "code": "nick-taken",
        "message": "the nickname 'Frank' is taken",
        "ts": 0.0,
    }
    assert c.status == ["you are chatting as guest15; type /nick NAME to pick another name"]
    c.restored()
    assert c.sent() == ["hello"]  # said as guest15, which the user was just told


def test_quit_while_restoring_drops_the_held_lines():
    c = Client(nick="ci", room="#ops", strict=True)
    c.connect()
    c.session.send("not yet")
    c.sent()
    c.welcome(nick="ci")  # #ops not granted: its answer is awaited
    assert c.sent() == [f"/ping {RESTORED_TOKEN}"]
    c.session.quit()
    assert c.sent() == ["/quit"] and c.session.pending == 0
    c.restored()  # the answer still comes
    assert c.sent() == []  # and nothing else goes


def test_lines_are_shown_as_sent_when_they_are_sent():
    c = Client(nick="alice")
    sent: list[tuple[str, str | None]] = []
    c.session.on_sent.append(lambda line: sent.append((line, c.session.nick)))
    c.connect()
    c.session.send("typed while offline")
    assert sent == []
    c.welcome(nick="alice")
    assert sent == [("typed while offline", "alice")]


# -- bounds and limits -------------------------------------------------------------------


def test_a_line_over_the_announced_limit_is_refused_locally():
    c = Client()
    c.connect()
    c.welcome(max_line=10)
    c.sent()
    shown: list[str] = []
    c.session.on_sent.append(shown.append)
    assert c.session.send("x" * 11) is False
    assert c.session.send("é" * 6) is False  # 12 bytes in UTF-8
    assert c.session.send("x" * 10) is True
    assert c.sent() == ["x" * 10] and shown == ["x" * 10]
    assert c.status[0] == "not sent: that line is 11 bytes, longer than the server's limit of 10"
    assert c.session.errors == 2  # a pipe then exits 2: some lines were refused


def test_a_line_queued_before_the_limit_was_known_is_refused_when_due():
    c = Client()
    c.connect()
    c.session.send("y" * 20)
    c.session.send("short")
    c.welcome(max_line=10)
    assert c.sent() == ["/format json", "short"]
    assert "20 bytes" in c.status[0] and c.session.errors == 1


def test_lines_typed_offline_are_bounded():
    c = Client()
    c.session.outbox.max_lines = 3
    assert all(c.session.send(f"line {i}") for i in range(3))
    assert c.session.send("one too many") is False
    assert c.status == ["not connected, and 3 lines are already waiting: this one was not kept"]
    c.session.quit()  # leaving is always possible
    assert list(c.session.outbox)[-1] == "/quit"


def test_piped_input_stops_being_read_while_the_outbox_is_full():
    from twisted_chat.client.app import StdinLines

    c = Client()
    c.session.outbox.max_lines = 4
    reader = StdinLines(c.session)
    stdin = StringTransport()
    reader.makeConnection(stdin)
    reader.dataReceived(b"".join(b"line %d\n" % i for i in range(10)) + b"last, no newline")
    reader.readConnectionLost()
    assert c.session.pending == 4 and stdin.producerState == "paused"
    assert not reader.done.called
    c.connect()
    c.welcome(limits={"rate": 5.0, "burst": 4.0, "byte_rate": 16384.0, "flood_timeout": 60.0})
    for _ in range(40):
        c.clock.advance(0.25)
    lines = [line for line in c.sent() if not line.startswith("/ping ")]
    assert lines == ["/format json", *[f"line {i}" for i in range(10)], "last, no newline"]
    assert stdin.producerState == "producing" and reader.done.called


def test_piped_line_too_long_to_keep_is_skipped_and_counted():
    from twisted_chat.client.app import StdinLines

    c = Client()
    reader = StdinLines(c.session)
    reader.MAX_LENGTH = 8
    reader.makeConnection(StringTransport())
    reader.dataReceived(b"ok\n" + b"z" * 20)
    reader.dataReceived(b"z" * 20 + b"\nfine\n")
    reader.readConnectionLost()
    assert list(c.session.outbox) == ["ok", "fine"]
    assert c.session.errors == 1 and len(c.status) == 1


# -- connections that end before the welcome ---------------------------------------------


def test_certificate_for_another_name_fails_at_once():
    from service_identity import VerificationError
    from service_identity.exceptions import DNSMismatch
    from service_identity.hazmat import DNS_ID
    from twisted.python.failure import Failure

    c = Client()
    fatal: list[str] = []
    c.session.on_fatal.append(fatal.append)
    c.connect()
    assert c.protocol is not None
    mismatch = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("chat.example.org"))])
    c.protocol.connectionLost(Failure(mismatch))
    assert fatal == [
        "the server's TLS certificate is not valid for chat.example.org; "
        "check the host name in --server"
    ]
    assert c.clock.getDelayedCalls() == []


def test_plain_connection_closed_before_any_byte_suggests_tls():
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    c = Client()
    c.session.alternative_server = "tls:chat.example.org:9999"
    early: list[str] = []
    c.session.on_lost_early.append(early.append)
    c.connect()
    assert c.protocol is not None
    c.protocol.connectionLost(Failure(ConnectionDone()))
    assert early == [
        "the server closed the connection before greeting us; is it a TLS port? "
        "try --server tls:chat.example.org:9999"
    ]
    assert c.session.fatal is None  # retried: a proxy before a restarting server does this


def test_refusal_line_is_the_reason_the_attempt_failed():
    c = Client()
    early: list[str] = []
    c.session.on_lost_early.append(early.append)
    p = c.connect()
    p.dataReceived(b"!!! refused: the server is full (10000 connections); try again later\r\n")
    assert c.transport is not None and c.transport.disconnecting  # not waiting for the server
    c.lose()
    assert early == [
        "refused by the server: the server is full (10000 connections); try again later"
    ]


def test_someone_leaving_several_shared_rooms_is_shown_once():
    from twisted_chat.client.render import system_line

    event = {"type": "quit", "room": "#lobby", "rooms": ["#lobby", "#ops"], "nick": "bob"}
    assert system_line(event | {"reason": "bye"}) == "#lobby, #ops: bob quit (bye)"
    assert system_line({"type": "quit", "room": "#ops", "nick": "bob", "reason": ""}) == (
        "#ops: bob quit"
    )


def test_the_client_shows_topics_moderation_bans_and_notices_worded_as_the_server_does():
    from twisted_chat.client.render import system_line
    from twisted_chat.core.events import Bans, Members, Moderation, Network, Notice, Topic, Wall

    room_events = [
        Bans(ts=0, room="#tea", bans=[("carol", "alice", "rude"), ("spam*", "alice", "")]),
        Bans(ts=0, room="#tea", bans=[]),
        Topic(ts=0, room="#tea", topic="cakes", by="alice", locked=True, changed=True),
        Topic(ts=0, room="#tea", topic="cakes", by="alice", set_at=86400.0),
        Topic(ts=0, room="#tea", topic=""),
        Moderation(ts=0, room="#tea", action="ban", by="alice", target="spam*", reason="bots"),
        Moderation(ts=0, room="#tea", action="lock-topic", by="alice"),
        Moderation(ts=0, room="#tea", action="op", by=None, target="bob"),
        Members(ts=0, room="#tea", members=["alice", "bob"], ops=["alice"]),
    ]
    for event in room_events:
        line = system_line(json.loads(JSON.encode(event)))
        assert line is not None, event
        # The client names the room as "#tea: ...", the server's text as "[#tea] ...".
        assert "*** [#tea] " + line.removeprefix("#tea: ") == TEXT.text(event)
    others = [
        Bans(ts=0, room=None, bans=[]),
        Bans(ts=0, room=None, bans=[("203.0.113.0/24", "chief", "spam")]),
        Wall(ts=0, by="chief", text="restart at 6"),
        Notice(ts=0, text="#tea: kicked alice"),
        Network(ts=0, up=False, message="the network is split"),
    ]
    for event in others:
        line = system_line(json.loads(JSON.encode(event)))
        assert line is not None, event
        assert ("*** " + line).casefold() == TEXT.text(event).casefold()
    assert system_line(json.loads(JSON.encode(room_events[-1]))) == "#tea: 2 here: @alice, bob"
    hostile = {"type": "topic", "room": "#x", "topic": "\x1b[2Jhi", "by": "\x1b]0;x\x07"}
    assert "\x1b" not in (system_line(hostile) or "x\x1b")


def test_the_piped_summary_counts_refused_lines_in_words():
    from twisted_chat.client.app import _lines

    assert _lines(1) == "1 of our lines was"
    assert _lines(3) == "3 of our lines were"
