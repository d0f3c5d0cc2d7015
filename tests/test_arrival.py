"""How a connection arrives: its first lines are looked at before anyone is told of it."""

from __future__ import annotations

import json

from tests.doubles import Connection, ProtocolHarness

SEAT_WAIT = 0.25


def _harness() -> ProtocolHarness:
    h = ProtocolHarness()
    h.rules.seat_wait = SEAT_WAIT
    return h


def _arrive(h: ProtocolHarness) -> Connection:
    conn = Connection(h.factory, next(h._ports))
    return conn


def test_an_http_request_gets_an_http_answer_and_never_reaches_a_room():
    h = _harness()
    bob = h.connect("bob")
    bob.new_lines()
    browser = _arrive(h)
    browser.send(b"GET /secret HTTP/1.1\r\nHost: x\r\nCookie: session=abc\r\n\r\n")
    answer = browser.output()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"This is a groupchat server" in answer and b"groupchat 0.1.0" not in answer
    assert browser.transport.disconnecting
    h.clock.advance(5)
    assert bob.new_lines() == []
    assert len(h.service.members) == 1


def test_a_slow_http_client_is_answered_in_http_and_dropped():
    h = _harness()
    bob = h.connect("bob")
    browser = _arrive(h)
    h.clock.advance(SEAT_WAIT)  # seated as a guest before it said anything
    bob.new_lines()
    browser.send(b"POST / HTTP/1.0\r\n")
    assert b"HTTP/1.1 400 Bad Request" in browser.output()
    assert bob.new_lines()[-1].endswith("lost connection (not a chat client: an HTTP request)")


def test_setup_lines_sent_at_once_seat_the_client_where_it_asked():
    h = _harness()
    lobby = h.connect("lobbyist")
    ops = h.connect("opsie")
    ops.send(b"/join #ops\n")
    lobby.new_lines()
    ops.new_lines()
    notifier = _arrive(h)
    notifier.send(b"/format json\n/nick ci\n/join #ops\ndeploy done\n/quit\n")
    events = [json.loads(line) for line in notifier.new_lines()]
    assert events[0]["type"] == "welcome"
    assert (events[0]["nick"], events[0]["rooms"], events[0]["format"]) == ("ci", ["#ops"], "json")
    assert not any(e["type"] == "error" for e in events), events
    assert lobby.new_lines() == []  # #lobby never heard of it
    assert ops.new_lines() == [
        "*** [#ops] ci joined (2 here)",
        "[#ops] <ci> deploy done",
        "*** [#ops] ci quit",
    ]


def test_setup_that_cannot_be_granted_is_answered_after_the_welcome():
    h = _harness()
    h.connect("frank")
    late = _arrive(h)
    late.send(b"/nick carol\n/join bad room\n")
    lines = late.new_lines()
    assert lines[0] == "*** Welcome to groupchat 0.1.0, carol! You are in #lobby."
    errors = [line for line in lines if line.startswith("!!!")]
    assert len(errors) == 1 and errors[0].startswith("!!! bad-arguments: usage: /join #room")


def test_a_taken_nickname_keeps_the_newcomer_out_of_the_room_it_named():
    h = _harness()
    frank = h.connect("frank")
    frank.send(b"/join #ops\n")
    frank.new_lines()
    late = _arrive(h)
    late.send(b"/nick Frank\n/join #ops\n")
    lines = late.new_lines()
    assert lines[0].startswith("*** Welcome to groupchat 0.1.0, guest")
    errors = [line for line in lines if line.startswith("!!!")]
    assert len(errors) == 1 and errors[0].startswith("!!! nick-taken: the nickname 'Frank'")
    member = late.protocol.member
    assert member is not None and list(member.rooms) == ["#lobby"]
    assert not any("[#ops]" in line for line in frank.new_lines())


def test_a_quiet_connection_is_seated_as_a_guest_after_the_wait():
    h = _harness()
    bob = h.connect("bob")
    bob.new_lines()
    quiet = _arrive(h)
    assert quiet.output() == b""
    h.clock.advance(SEAT_WAIT)
    assert quiet.new_lines()[0].startswith("*** Welcome to groupchat 0.1.0, guest")
    assert bob.new_lines()[0].endswith("joined (2 here)")
    assert h.clock.getDelayedCalls() == []


def test_a_connection_gone_before_it_was_seated_leaves_nothing_behind():
    h = _harness()
    gone = _arrive(h)
    gone.protocol.connectionLost()
    assert h.clock.getDelayedCalls() == []
    assert h.service.members == {} and h.rules.admission.total == 0


def test_a_tls_client_on_the_plain_port_is_closed_without_reaching_a_room():
    h = _harness()
    bob = h.connect("bob")
    bob.new_lines()
    tls = _arrive(h)
    tls.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(200)) + b"\n\n")
    assert tls.transport.disconnecting
    assert tls.output() == b"!!! refused: this port speaks plain text, not TLS\r\n"
    h.clock.advance(5)
    assert bob.new_lines() == [] and len(h.service.members) == 1


def test_escape_sequences_in_a_refused_request_do_not_reach_the_log():
    from twisted.logger import globalLogPublisher

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)  # type: ignore[arg-type]
    try:
        h = _harness()
        browser = _arrive(h)
        browser.send(b"GET /\x1b[2J\x1b[31mFAKE HTTP/1.1\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(seen.append)  # type: ignore[arg-type]
    requests = [e["request"] for e in seen if "request" in e]
    assert requests == ["GET /FAKE HTTP/1.1"]


def test_setup_lines_in_separate_reads_within_the_wait_count_too():
    # A browser sends each line as its own WebSocket message; a reload must not show
    # the member in #lobby on its way back to its room.
    h = _harness()
    lobby = h.connect("lobbyist")
    lobby.new_lines()
    client = _arrive(h)
    client.send(b"/format json\n")
    h.clock.advance(0.05)
    client.send(b"/nick zed\n")
    assert client.output() == b"" and len(h.service.members) == 1  # not seated yet
    h.clock.advance(0.05)
    client.send(b"/join #dev\n")  # a /join ends the setup: seated at once
    welcome = json.loads(client.new_lines()[0])
    assert (welcome["nick"], welcome["rooms"]) == ("zed", ["#dev"])
    h.clock.advance(1)
    assert lobby.new_lines() == []  # #lobby never saw it


def test_a_lone_setup_line_is_applied_when_the_wait_ends_and_any_other_line_ends_it_early():
    h = _harness()
    named = _arrive(h)
    named.send(b"/nick solo\n")
    assert named.output() == b""
    h.clock.advance(SEAT_WAIT)
    assert "solo" in named.new_lines()[0]
    talker = _arrive(h)
    talker.send(b"/nick chatty\n")
    talker.send(b"hello\n")  # not a setup line: seated now, then the line is said
    lines = talker.new_lines()
    assert "chatty" in lines[0]
    assert len(h.service.members) == 2
