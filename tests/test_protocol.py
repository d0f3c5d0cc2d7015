"""The line adapter on a StringTransport with a fake clock: bytes in, bytes out."""

from __future__ import annotations

import json
from typing import Any

from tests.doubles import ProtocolHarness


def test_greeting_explains_commands_heartbeat_and_guest_nick():
    h = ProtocolHarness(interval=10.0, timeout=30.0)
    conn = h.connect()
    text = conn.output().decode()
    assert "Welcome to groupchat" in text and "guest1" in text
    assert "/nick NAME" in text and "/join #room" in text and "/help" in text
    assert "every 10 s" in text and "after 30 s of silence" in text
    assert "You are in #lobby" in text


def test_lf_and_crlf_lines_and_bare_cr_never_passes():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send(b"lf only\nsecond\r\nwith\rcr\r\n")
    assert alice.new_lines() == [
        "[#lobby] <bob> lf only",
        "[#lobby] <bob> second",
        "[#lobby] <bob> withcr",
    ]
    assert b"\rc" not in alice.output()


def test_line_split_across_reads_and_utf8_split_across_reads():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    data = "héllo wörld\n".encode()
    for i in range(len(data)):
        bob.send(data[i : i + 1])
    assert alice.new_lines() == ["[#lobby] <bob> héllo wörld"]


def test_overlong_line_is_refused_with_the_limit_and_session_continues():
    h = ProtocolHarness(max_line=100)
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send(b"x" * 101 + b"\nfine\n")
    errors = bob.new_lines()
    assert errors == ["!!! line-too-long: line longer than 100 bytes; it was dropped"]
    assert alice.new_lines() == ["[#lobby] <bob> fine"]
    exactly = b"y" * 100
    bob.send(exactly + b"\r\n")
    assert alice.new_lines() == ["[#lobby] <bob> " + "y" * 100]


def test_unterminated_flood_does_not_grow_memory_and_reports_once():
    h = ProtocolHarness(max_line=100)
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    for _ in range(1000):
        bob.send(b"z" * 1000)
        assert bob.protocol.framer.buffered <= 101
    bob.send(b"tail of the flood\nafter\n")
    assert bob.new_lines() == ["!!! line-too-long: line longer than 100 bytes; it was dropped"]
    assert alice.new_lines() == ["[#lobby] <bob> after"]


def test_invalid_utf8_is_replaced_with_an_error_and_never_disconnects():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send(b"caf\xe9 \xc3\x28\n")
    assert bob.new_lines()[0].startswith("!!! invalid-utf8:")
    (line,) = alice.new_lines()
    assert line.startswith("[#lobby] <bob> caf\ufffd")
    assert not bob.transport.disconnecting


def test_escape_sequences_and_bidi_are_removed_before_others_see_them():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send("\x1b[2J\x1b[H\x1b]0;title\x07ok\u202eevil\x9b31m\n".encode())
    out = alice.output().decode()
    assert "\x1b" not in out and "\u202e" not in out and "\x9b" not in out and "\x07" not in out
    assert alice.new_lines() == ["[#lobby] <bob> okevil"]


def test_no_user_line_looks_like_a_server_line():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send(b"hi\r*** server: alice was banned\n")
    bob.send("x\u2028*** fake\u0085*** fake2\n".encode())
    for line in alice.new_lines():
        assert line.startswith("[#lobby] <bob> ")


def test_telnet_negotiation_is_consumed_and_refused():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.transport.clear()
    bob.send(b"\xff\xfd\x01\xff\xfb\x03\xff\xfa\x18\x01\xff\xf0hel")
    bob.send(b"lo\xff\xf1\r\n")
    assert alice.new_lines() == ["[#lobby] <bob> hello"]
    assert bob.output().startswith(b"\xff\xfc\x01\xff\xfe\x03")


def test_unknown_command_points_to_help_and_empty_lines_are_ignored():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send(b"\n   \r\n/frobnicate now\n")
    (error,) = bob.new_lines()
    assert error.startswith("!!! unknown-command:") and "/help" in error
    assert alice.new_lines() == []


def test_double_slash_sends_a_literal_slash():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send(b"//shrug\n")
    assert alice.new_lines() == ["[#lobby] <bob> /shrug"]


def test_commands_end_to_end_through_the_dispatcher():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.send(b"/join #ops\n")
    bob.send(b"/join #ops\n/me waves\n/msg alice hi there\n/who\n/rooms\n/ping t1\n")
    lines = alice.new_lines()
    assert "[#ops] * bob waves" in lines
    assert "[PM bob -> alice] hi there" in lines
    out = bob.new_lines()
    assert "*** [#ops] 2 here: @alice, bob" in out  # the first in is its operator
    assert "*** Rooms: #lobby (2), #ops (2)" in out
    assert out[-1] == "*** pong t1"
    bob.send(b"/nick\n/msg alice\n/join\n/format xml\n")
    codes = [line.split(":")[0] for line in bob.new_lines()]
    assert codes == ["!!! bad-arguments"] * 3 + ["!!! bad-format"]


def test_json_rendering_after_format_json():
    h = ProtocolHarness(interval=7.0, timeout=21.0)
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    alice.send(b"/format json\n")
    (welcome,) = alice.new_json()
    assert welcome["type"] == "welcome" and welcome["nick"] == "alice"
    assert welcome["heartbeat"]["interval"] == 7.0 and welcome["heartbeat"]["timeout"] == 21.0
    bob.send(b"hello json\n/me jumps\n/nick bobby\n/quit gone\n")
    events = alice.new_json()
    assert [e["type"] for e in events] == ["message", "action", "nick", "quit"]
    assert events[0] == {
        "type": "message",
        "ts": events[0]["ts"],
        "room": "#lobby",
        "nick": "bob",
        "text": "hello json",
    }
    assert events[3]["reason"] == "gone"
    alice.send(b"/bogus\n/ping x\n")
    assert [e["type"] for e in alice.new_json()] == ["error", "pong"]
    for line in alice.output().split(b"\r\n")[-3:]:
        if line:
            json.loads(line)


def test_quit_closes_and_aborts_after_grace_if_peer_does_not_read():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send(b"/quit see you\nthis is ignored\n")
    assert bob.new_lines()[-1] == "*** Disconnected: you quit"
    assert bob.transport.disconnecting
    assert alice.new_lines() == ["*** [#lobby] bob quit (see you)"]
    h.clock.advance(1.0)
    assert bob.transport.disconnecting  # StringTransport records the abort as a disconnect
    bob.protocol.connectionLost()
    assert alice.new_lines() == []
    assert h.clock.getDelayedCalls() == []


def test_connection_dropping_mid_line_tells_rooms_once():
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    bob.send(b"half a li")
    bob.protocol.connectionLost(Failure(ConnectionLost("reset")))
    assert alice.new_lines() == ["*** [#lobby] bob lost connection (connection reset)"]
    alice.send(b"still talking\n")
    assert h.service.nicks.owner("bob") is None


def test_broadcast_to_a_closed_transport_costs_others_nothing():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    carol = h.connect("carol")
    carol.new_lines()
    bob.transport.loseConnection()  # gone at the TCP level, connectionLost not yet delivered
    alice.send(b"anyone\n")
    assert carol.new_lines() == ["[#lobby] <alice> anyone"]


def test_heartbeat_timeout_closes_the_connection_via_the_clock():
    h = ProtocolHarness(timeout=3.0, sweep=1.0, warning=1.0)
    h.service.startService()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.new_lines()
    for _ in range(5):
        alice.send(b"/ping\n")
        h.clock.advance(1.0)
    lines = bob.new_lines()
    assert any("send any line" in line for line in lines)
    assert lines[-1].startswith("*** Disconnected: no heartbeat for")
    assert bob.transport.disconnecting
    assert any("bob timed out" in line for line in alice.new_lines())
    h.service.stopService()


def test_part_accepts_a_room_name_without_hash_and_otherwise_a_reason():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    alice.send(b"/join #ops\n")
    bob.send(b"/join ops\n")
    alice.new_lines()
    bob.send(b"/part ops\n")
    assert alice.new_lines() == ["*** [#ops] bob left"]
    bob.send(b"/join #ops\n/part brb lunch\n")  # not a room bob is in: the reason
    assert alice.new_lines()[-1] == "*** [#ops] bob left (brb lunch)"
    bob.send(b"/part #lobby now\n")
    assert alice.new_lines() == ["*** [#lobby] bob left (now)"]


def test_format_without_argument_is_bad_arguments():
    h = ProtocolHarness()
    alice = h.connect("alice")
    alice.send(b"/format\n")
    assert alice.new_lines()[0].startswith("!!! bad-arguments: usage: /format json|text")


def test_member_that_stops_reading_is_dropped_when_its_send_queue_overflows():
    h = ProtocolHarness(max_line=2048)
    h.rules.send_queue = 8192
    alice = h.connect("alice")
    bob = h.connect("bob")
    carol = h.connect("carol")
    bob.protocol.gate.pauseProducing()  # what the transport does when bob stops reading
    line = b"x" * 1000 + b"\n"
    alice.send(line * 5)
    assert bob.protocol.queued > 0 and bob.protocol.member is not None
    assert bob.protocol.member.present  # a short stall is fine
    alice.send(line * 5)
    assert not bob.protocol.member.present
    lines = carol.new_lines()
    assert "*** [#lobby] bob lost connection (send queue exceeded: not reading)" in lines
    assert sum(1 for x in lines if x.startswith("[#lobby] <alice>")) == 10  # carol got all


def test_queued_output_is_flushed_in_order_when_the_reader_catches_up():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.protocol.gate.pauseProducing()
    alice.send(b"one\ntwo\nthree\n")
    assert bob.new_lines() == []
    bob.protocol.gate.resumeProducing()
    assert bob.new_lines() == [
        "[#lobby] <alice> one",
        "[#lobby] <alice> two",
        "[#lobby] <alice> three",
    ]
    assert bob.protocol.queued == 0


def test_connections_over_the_limits_are_refused_with_a_reason():
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from twisted_chat.rules.admission import REFUSAL_HOLD

    h = ProtocolHarness()
    h.rules.admission.max_per_address = 2
    h.rules.admission.max_clients = 3
    first, second = h.connect(), h.connect()  # both from 127.0.0.1

    def attempt(host: str) -> StringTransport:
        transport = StringTransport()
        protocol = h.factory.buildProtocol(IPv4Address("TCP", host, 5000))
        assert protocol is not None
        protocol.makeConnection(transport)
        return transport

    refused = attempt("127.0.0.1")
    assert refused.value() == b"!!! refused: too many connections from your address (at most 2)\r\n"
    h.clock.advance(REFUSAL_HOLD)  # held open a moment, unread, then closed
    assert refused.disconnecting
    other = attempt("10.0.0.7")  # another address still gets in
    assert b"Welcome to groupchat" in other.value()
    full = attempt("10.0.0.8")
    assert b"the server is full (3 connections)" in full.value()
    first.protocol.connectionLost()
    assert b"Welcome" in attempt("127.0.0.1").value()  # a freed slot is reusable
    assert h.rules.admission.total == 3 and h.rules.admission.per_address["127.0.0.1"] == 2
    second.protocol.connectionLost()
    assert h.rules.admission.per_address["127.0.0.1"] == 1


def _login_harness():
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

    from twisted_chat.rules.login import Authenticator

    h = ProtocolHarness()
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret", bob=b"hunter2")
    h.rules.authenticator = Authenticator([checker], h.clock, attempts=3, failure_floor=0)
    return h


def test_login_required_then_admitted_under_the_login_name():
    h = _login_harness()
    conn = h.connect()
    assert conn.output().startswith(b"*** Welcome to groupchat. This server needs a login")
    conn.new_lines()
    conn.send(b"hello\n/join #x\n")
    assert [x.split(":")[0] for x in conn.new_lines()] == ["!!! login-required"] * 2
    assert h.service.members == {}
    conn.send(b"/login alice secret\n")
    lines = conn.new_lines()
    assert lines[0] == "*** Welcome to groupchat 0.1.0, alice! You are in #lobby."
    assert "/nick NAME" not in lines[1]  # the nickname is fixed: not offered
    conn.send(b"/nick mallory\n/login alice secret\n")
    answers = conn.new_lines()
    assert answers[0].startswith("!!! nick-reserved: you are logged in as alice")
    assert answers[1] == "!!! not-needed: you are already logged in as alice"


def test_wrong_password_does_not_reveal_the_name_and_attempts_are_limited():
    h = _login_harness()
    conn = h.connect()
    conn.new_lines()
    conn.send(b"/login alice nope\n/login nosuchuser nope\n")
    assert conn.new_lines() == [
        "!!! login-failed: wrong name or password (2 attempts left)",
        "!!! login-failed: wrong name or password (1 attempt left)",
    ]
    conn.send(b"/login bob nope\n")
    assert conn.new_lines() == ["*** Disconnected: too many failed logins"]
    assert conn.transport.disconnecting


def test_a_logged_in_name_cannot_be_taken_twice():
    h = _login_harness()
    first = h.connect()
    first.send(b"/login alice secret\n")
    second = h.connect()
    second.new_lines()
    second.send(b"/login alice secret\n")
    expected = "!!! login-in-use: alice (or a name that looks like it) is logged in"
    assert second.new_lines() == [expected]


def test_json_login_exchange_and_login_timeout():
    h = _login_harness()
    h.rules.register_timeout = 5.0
    conn = h.connect()
    conn.new_lines()
    conn.send(b"/format json\n")
    assert conn.new_json() == [{"type": "login-required", "ts": 0.0, "attempts": 3}]
    h.clock.advance(5.0)
    assert conn.new_json()[0] == {"type": "bye", "ts": 5.0, "reason": "no login within 5 s"}


def test_an_exception_in_one_members_command_is_logged_and_only_that_member_is_told(
    logged_errors,
):
    logged_errors.expected = True
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    original = h.service.act

    def broken(member, raw):
        if member.nick == "alice":
            raise RuntimeError("bug in /me")
        original(member, raw)

    h.service.act = broken  # type: ignore[method-assign]
    alice.send(b"/me breaks\n")
    assert alice.new_lines()[-1] == "!!! error: internal error; the server has logged it"
    assert [e["log_format"] for e in logged_errors.events] == ["command from {nick} failed"]
    alice.send(b"still here\n")  # the session goes on
    bob.send(b"/me is fine\n")
    assert bob.new_lines() == ["[#lobby] <alice> still here"]
    assert alice.new_lines() == ["[#lobby] * bob is fine"]


def test_output_of_one_input_chunk_is_written_once_per_recipient_in_order():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    writes: list[bytes] = []
    original = bob.transport.write

    def counting(data: bytes) -> None:
        writes.append(data)
        original(data)

    bob.transport.write = counting  # type: ignore[method-assign]
    alice.send(b"one\ntwo\nthree\n")
    assert len(writes) == 1
    assert bob.new_lines() == [
        "[#lobby] <alice> one",
        "[#lobby] <alice> two",
        "[#lobby] <alice> three",
    ]
    alice.send(b"/quit bye\n")  # the closing line follows what was gathered before it
    assert bob.new_lines() == ["*** [#lobby] alice quit (bye)"]


def test_one_turn_is_rendered_per_recipient_format_and_format_switch_keeps_earlier_lines():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    carol = h.connect("carol")
    bob.send(b"/format json\n")
    bob.new_lines()
    alice.new_lines()
    alice.send(b"one\ntwo\n")
    assert [(m["type"], m["text"]) for m in bob.new_json()] == [
        ("message", "one"),
        ("message", "two"),
    ]
    assert carol.new_lines()[-2:] == ["[#lobby] <alice> one", "[#lobby] <alice> two"]
    carol.send(b"/who\n/format json\n")
    lines = carol.new_lines()
    assert (
        lines[0] == "*** [#lobby] 3 here: alice, bob, carol"
    )  # answered before the switch: still text
    assert json.loads(lines[1])["type"] == "welcome"


def test_lines_read_in_one_reactor_iteration_reach_each_member_in_one_write():
    h = ProtocolHarness()
    alice, bob, carol = h.connect("alice"), h.connect("bob"), h.connect("carol")
    carol.new_lines()
    writes: list[bytes] = []
    write = carol.transport.write

    def counted(data: bytes) -> None:
        writes.append(data)
        write(data)

    carol.transport.write = counted  # type: ignore[method-assign]
    # Two members' lines, read in one iteration (before the reactor runs its calls).
    alice.protocol.dataReceived(b"from alice\r\n")
    bob.protocol.dataReceived(b"from bob\r\n")
    assert writes == []
    h.clock.advance(0)  # the iteration ends: no wait was added
    assert writes == [b"[#lobby] <alice> from alice\r\n[#lobby] <bob> from bob\r\n"]
    alice.send(b"later\r\n")  # the next iteration: written at its end, again
    assert carol.new_lines()[-1] == "[#lobby] <alice> later"


def direct(*conns: Any) -> None:
    """As on plain TCP: the batcher writes room broadcasts to these itself (a socket
    whose ``send`` takes everything, appending to the transport's output)."""
    for conn in conns:
        transport = conn.transport

        class Sock:
            def send(self, data: bytes, transport: Any = transport) -> int:
                transport.io.write(data)
                return len(data)

        transport.socket = Sock()
        transport.dataBuffer, transport.offset, transport._tempDataBuffer = b"", 0, []
        transport.TLS = transport.disconnecting = transport._writeDisconnected = False
        conn.protocol._direct = True


def test_room_lines_of_one_iteration_keep_each_members_order_on_the_fast_path():
    h = ProtocolHarness()
    alice, bob, carol, dave = (h.connect(n) for n in ("alice", "bob", "carol", "dave"))
    direct(alice, bob, carol, dave)
    for conn in (alice, bob, carol, dave):
        conn.new_lines()
    # dave's own answer waits before the room's lines; bob then writes to carol.
    dave.protocol.dataReceived(b"/ping 1\r\n")
    alice.protocol.dataReceived(b"one\r\n")
    bob.protocol.dataReceived(b"two\r\n/msg carol psst\r\n")
    h.clock.advance(0)
    assert carol.new_lines() == [
        "[#lobby] <alice> one",
        "[#lobby] <bob> two",
        "[PM bob -> carol] psst",
    ]
    assert dave.new_lines() == ["*** pong 1", "[#lobby] <alice> one", "[#lobby] <bob> two"]
    assert alice.new_lines() == ["[#lobby] <bob> two"]  # never her own line back
    assert bob.new_lines() == ["[#lobby] <alice> one", "[PM bob -> carol] psst"]
    # Quitting right after a line: it is written before the goodbye.
    alice.protocol.dataReceived(b"three\r\n")
    carol.protocol.dataReceived(b"/quit\r\n")
    h.clock.advance(0)
    lines = carol.new_lines()
    assert lines == ["[#lobby] <alice> three", "*** Disconnected: you quit"]


def test_flush_interval_holds_output_under_load_but_not_after_a_quiet_spell():
    h = ProtocolHarness()
    h.rules.batcher.flush_interval = 0.002
    alice = h.connect("alice")
    bob = h.connect("bob")
    for nick in ("carol", "dave", "erin"):  # a room where one line reaches 4 members
        h.connect(nick)
    h.clock.pump([0.002, 1])  # the joins' held flush, then a quiet second
    bob.new_lines()
    alice.send(b"first\n")
    assert bob.new_lines() == ["[#lobby] <alice> first"]  # quiet before: at once
    alice.send(b"second\n")
    alice.send(b"third\n")
    assert bob.new_lines() == []  # held: the last flush, to 4 members, was under 2 ms ago
    h.clock.advance(0.002)
    assert bob.new_lines() == ["[#lobby] <alice> second", "[#lobby] <alice> third"]
    h.clock.advance(0.002)
    alice.send(b"/quit\n")  # a close writes what was held first
    assert bob.new_lines() == ["*** [#lobby] alice quit"]


def test_answers_to_one_connection_do_not_hold_everyone_elses_lines():
    h = ProtocolHarness()
    h.rules.batcher.flush_interval = 0.002
    pinger = h.connect("pinger")
    alice = h.connect("alice")
    bob = h.connect("bob")
    h.clock.pump([0.002, 1])
    bob.new_lines()
    pinger.send(b"/ping 1\n")  # a flush that reaches one connection
    alice.send(b"hello\n")  # right after it: not held for the interval
    assert bob.new_lines() == ["[#lobby] <alice> hello"]


def test_a_stray_key_or_space_before_a_command_does_not_post_it_to_the_room():
    h = ProtocolHarness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    alice.send(b"\x0c/join #secret\n /msg bob my password\n\x1b[A/nick ally\n")
    assert [x for x in bob.new_lines() if x.startswith("[#lobby]")] == []
    assert alice.protocol.member is not None and alice.protocol.member.nick == "ally"
    assert "#secret" in alice.protocol.member.rooms


def test_guest_names_cannot_log_in_and_the_refusal_is_logged():
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.logger import globalLogPublisher

    from twisted_chat.rules.login import Authenticator

    h = ProtocolHarness()
    checker = InMemoryUsernamePasswordDatabaseDontUse(guest3=b"pw")
    h.rules.authenticator = Authenticator([checker], h.clock, failure_floor=0)
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)  # type: ignore[arg-type]
    try:
        conn = h.connect()
        conn.new_lines()
        conn.send(b"/login guest3 pw\n")
    finally:
        globalLogPublisher.removeObserver(seen.append)  # type: ignore[arg-type]
    assert conn.new_lines()[0].startswith("!!! login-failed: this login cannot be used")
    assert [e["name"] for e in seen if e.get("log_format", "").startswith("refused login")] == [
        "guest3"
    ]


def test_a_command_answered_later_holds_the_connections_next_lines_in_order(monkeypatch):
    from twisted.internet import defer

    from twisted_chat.core import commands
    from twisted_chat.core.errors import NickTaken

    pending: list[defer.Deferred[None]] = []

    def slow(svc, member, args):
        d: defer.Deferred[None] = defer.Deferred()
        pending.append(d)
        return d

    monkeypatch.setitem(commands.COMMANDS, "slow", commands.Command("/slow", "test", slow))
    h = ProtocolHarness()
    alice, bob = h.connect("alice"), h.connect("bob")
    alice.send(b"/slow\r\nafter the slow one\r\n/slow\r\nlast\r\n")
    assert bob.new_lines() == []  # nothing said while /slow is being answered
    assert alice.transport.producerState == "paused"  # and nothing more read
    pending[0].callback(None)
    h.clock.advance(0)  # the end of the reactor iteration: output is written
    assert bob.new_lines() == ["[#lobby] <alice> after the slow one"]
    assert alice.transport.producerState == "paused"  # the second /slow now
    pending[1].errback(NickTaken("taken, later"))  # a domain error, told as usual
    h.clock.advance(0)
    assert alice.new_lines()[-1] == "!!! nick-taken: taken, later"
    assert bob.new_lines() == ["[#lobby] <alice> last"]
    assert alice.transport.producerState == "producing"


def test_before_login_lines_are_read_by_the_same_parser():
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

    from twisted_chat.rules.login import Authenticator

    h = ProtocolHarness()
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    h.rules.authenticator = Authenticator([checker], h.clock)
    conn = h.connect()
    conn.send(b"\x0c  /PING tok\r\n")  # a stray key and spaces, as for a member
    assert conn.new_lines() == ["*** pong tok"]
    conn.send(b"/who\r\nhello\r\n")
    assert conn.new_lines() == [
        "!!! login-required: log in first: /login NAME PASSWORD",
        "!!! login-required: log in first: /login NAME PASSWORD",
    ]


def test_members_of_both_renderings_each_get_theirs_on_the_fast_path():
    h = ProtocolHarness()
    alice, bob, carol, dave = (h.connect(n) for n in ("alice", "bob", "carol", "dave"))
    bob.send(b"/format json\r\n")
    direct(alice, bob, carol, dave)
    for conn in (alice, bob, carol, dave):
        conn.new_lines()
    alice.protocol.dataReceived(b"one\r\n")
    dave.protocol.dataReceived(b"two\r\n")
    h.clock.advance(0)
    assert carol.new_lines() == ["[#lobby] <alice> one", "[#lobby] <dave> two"]
    assert [(e["nick"], e["text"]) for e in bob.new_json()] == [("alice", "one"), ("dave", "two")]
    assert alice.new_lines() == ["[#lobby] <dave> two"]
