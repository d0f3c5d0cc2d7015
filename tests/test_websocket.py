"""The --web door on StringTransports with a fake clock: HTTP in, WebSocket frames out.

The client side is wsproto's, so every frame the tests send is what a real WebSocket
client sends (masked), and every frame the server writes is parsed as a browser would.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.doubles import ProtocolHarness
from twisted_chat.doors.web import (
    MAX_BODY,
    WebChannel,
    WebSite,
    content_security_policy,
    normalize_origin,
    origin_allowed,
)
from twisted_chat.doors.websocket import ChatWebSocket
from twisted_chat.doors.wsframes import frame
from twisted_chat.rules.connection import Session
from twisted_chat.rules.limits import InputLimits

HOST = "chat.test:8080"
ORIGIN = "http://chat.test:8080"


class WebHarness(ProtocolHarness):
    def __init__(self, origins: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site = WebSite(self.rules, origins)
        self.site.startFactory()

    def browser(self, nick: str | None = None, **kwargs: Any) -> Browser:
        b = Browser(self.site, next(self._ports), **kwargs)
        assert b.accepted, b.rejected
        if nick is not None:
            b.say(f"/nick {nick}")
        b.events()
        return b


def _addr(port: int) -> IPv4Address:
    return IPv4Address("TCP", "127.0.0.1", port)


class Browser:
    """A WebSocket client (wsproto's) on a StringTransport to the site."""

    def __init__(
        self, site: WebSite, port: int, origin: str | None = ORIGIN, path: str = "/ws"
    ) -> None:
        self.site = site
        self.transport = StringTransport(peerAddress=_addr(port))
        channel = site.buildProtocol(_addr(port))
        self.channel = channel
        channel.makeConnection(self.transport)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._read = 0
        self.accepted = False
        self.rejected: list[Any] = []
        self.closed: CloseConnection | None = None
        headers = [] if origin is None else [(b"origin", origin.encode())]
        self.send_raw(self.ws.send(Request(host=HOST, target=path, extra_headers=headers)))
        self.first = self.events()  # the handshake, and what came at once (a welcome)

    @property
    def protocol(self) -> ChatWebSocket:
        proto = self.channel.socket
        assert isinstance(proto, ChatWebSocket)
        return proto

    def send_raw(self, data: bytes) -> None:
        self.channel.dataReceived(data)  # the channel's, or the socket's once upgraded
        self.site.rules.clock.advance(0)  # type: ignore[attr-defined]  # the iteration ends

    def say(self, text: str) -> None:
        self.send_raw(self.ws.send(TextMessage(text)))

    def events(self) -> list[Any]:
        data = self.transport.value()
        fresh, self._read = data[self._read :], len(data)
        self.ws.receive_data(fresh)
        out: list[Any] = []
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, (RejectConnection, RejectData)):
                self.rejected.append(event)
            elif isinstance(event, CloseConnection):
                self.closed = event
            out.append(event)
        return out

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events() if isinstance(e, TextMessage)]

    def lost(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


def http(site: WebSite, request: bytes, port: int = 30000) -> tuple[StringTransport, bytes]:
    transport = StringTransport(peerAddress=_addr(port))
    channel = site.buildProtocol(_addr(port))
    channel.makeConnection(transport)
    channel.dataReceived(request)
    return transport, transport.value()


def test_a_browser_gets_the_welcome_as_one_json_event_per_message():
    h = WebHarness()
    b = Browser(h.site, 1)
    assert b.accepted
    messages = [e for e in b.first if isinstance(e, TextMessage)]
    kinds = [json.loads(m.data)["type"] for m in messages]
    assert kinds[:2] == ["welcome", "join"]
    assert all(not m.data.endswith("\n") for m in messages)
    assert json.loads(messages[0].data)["format"] == "json"


def test_a_browser_and_a_line_user_talk_in_one_room():
    h = WebHarness()
    alice = h.browser("alice")
    bob = h.connect("bob")
    alice.say("/join #tea")
    bob.send(b"/join #tea\r\n")
    alice.json()
    bob.new_lines()
    alice.say("hello from the browser")
    assert bob.new_lines() == ["[#tea] <alice> hello from the browser"]
    bob.send(b"hello from nc\r\n")
    said = [e for e in alice.json() if e["type"] == "message"]
    assert [(e["nick"], e["text"], e["room"]) for e in said] == [("bob", "hello from nc", "#tea")]


def test_members_share_one_framed_copy_of_each_event():
    h = WebHarness()
    a, b, c = h.browser("a"), h.browser("b"), h.browser("c")
    for x in (a, b, c):
        x.events()
    marker = len(b.transport.value())
    a.say("one copy")
    framed = b.transport.value()[marker:]
    assert framed == c.transport.value()[-len(framed) :]
    assert framed[:1] == b"\x81"  # a final text frame, unmasked


def test_a_pasted_message_with_line_breaks_is_several_lines():
    h = WebHarness()
    alice, bob = h.browser("alice"), h.browser("bob")
    alice.say("first\r\nsecond\n\nthird")
    texts = [e["text"] for e in bob.json() if e["type"] == "message"]
    assert texts == ["first", "second", "third"]


def test_a_message_over_the_line_limit_is_dropped_with_an_error_and_never_kept():
    h = WebHarness(max_line=100)
    alice, bob = h.browser("alice"), h.browser("bob")
    # One message in many fragments, far over the limit: nothing past the limit is kept.
    ws = alice.ws
    for _ in range(50):
        alice.send_raw(ws.send(TextMessage("x" * 60, message_finished=False)))
        proto = alice.protocol
        assert len(proto._partial) <= 100
    alice.send_raw(ws.send(TextMessage("end")))
    errors = [e for e in alice.json() if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["line-too-long"]
    alice.say("y" * 100)  # exactly the limit: fine, and the session goes on
    assert [e["text"] for e in bob.json() if e["type"] == "message"] == ["y" * 100]


def test_a_binary_message_gets_an_error_and_the_session_goes_on():
    h = WebHarness()
    alice, bob = h.browser("alice"), h.browser("bob")
    alice.send_raw(alice.ws.send(BytesMessage(b"\x00\x01")))
    assert [e["code"] for e in alice.json() if e["type"] == "error"] == ["not-text"]
    alice.say("still here")
    assert [e["text"] for e in bob.json() if e["type"] == "message"] == ["still here"]


def test_a_ping_is_answered_through_the_send_queue():
    h = WebHarness()
    alice = h.browser("alice")
    alice.protocol.gate.pauseProducing()  # the peer reads nothing: output must queue
    alice.send_raw(alice.ws.send(Ping(b"abc")))
    assert alice.protocol.queued > 0
    alice.protocol.gate.resumeProducing()
    assert any(isinstance(e, Pong) and e.payload == b"abc" for e in alice.events())


def test_a_peer_that_does_not_read_is_dropped_at_the_send_queue_bound():
    h = WebHarness()
    h.rules.send_queue = 4096
    alice, bob = h.browser("alice"), h.browser("bob")
    bob.protocol.gate.pauseProducing()
    for i in range(20):
        h.clock.advance(1)
        alice.say(f"message {i} " + "z" * 300)
    assert bob.protocol.state is Session.CLOSING
    assert "send queue exceeded" in bob.protocol.why


def test_a_closed_tab_leaves_at_once_and_the_room_is_told():
    h = WebHarness()
    alice, bob = h.browser("alice"), h.browser("bob")
    alice.send_raw(alice.ws.send(CloseConnection(code=1001)))
    assert alice.closed is None
    events = alice.events()
    assert any(isinstance(e, CloseConnection) for e in events)  # answered
    assert alice.transport.disconnecting
    alice.lost()
    kinds = [e["type"] for e in bob.json()]
    assert "disconnect" in kinds or "quit" in kinds
    assert not h.service.nick_in_use("alice")


def test_quit_ends_with_bye_then_a_close_frame_saying_why():
    h = WebHarness()
    alice = h.browser("alice")
    alice.say("/quit")
    events = alice.events()
    byes = [json.loads(e.data) for e in events if isinstance(e, TextMessage)]
    assert byes[-1]["type"] == "bye"
    assert alice.closed is not None and alice.closed.code == 1000
    assert alice.closed.reason == "you quit"


def test_a_silent_browser_is_removed_by_the_heartbeat_rule():
    h = WebHarness(timeout=30.0, sweep=1.0)
    h.service.startService()
    alice, bob = h.browser("alice"), h.browser("bob")
    for _ in range(31):
        h.clock.advance(1)
        bob.say("/ping")
    assert not h.service.nick_in_use("alice")
    assert any(e["type"] == "timeout" for e in bob.json())
    alice.events()
    assert alice.closed is not None and "heartbeat" in (alice.closed.reason or "")
    h.service.stopService()


def test_format_text_is_framed_text():
    h = WebHarness()
    alice, bob = h.browser("alice"), h.browser("bob")
    bob.say("/format text")
    bob.events()
    alice.say("hi")
    texts = [e.data for e in bob.events() if isinstance(e, TextMessage)]
    assert texts == ["[#lobby] <alice> hi"]


def test_frames_that_break_the_protocol_close_the_connection():
    h = WebHarness()
    alice, bob = h.browser("alice"), h.browser("bob")
    alice.send_raw(frame(b"unmasked from a client"))  # clients must mask
    alice.events()
    assert alice.closed is not None and alice.closed.code == 1002
    assert alice.protocol.state is Session.CLOSING
    alice.lost()
    assert any(e["type"] == "disconnect" and e["nick"] == "alice" for e in bob.json())


def test_invalid_utf8_in_a_text_message_closes_with_1007():
    h = WebHarness()
    alice = h.browser("alice")
    masked = bytes((0x81, 0x80 | 2, 0, 0, 0, 0)) + b"\xff\xfe"  # mask of zeros
    alice.send_raw(masked)
    alice.events()
    assert alice.closed is not None and alice.closed.code == 1007


def test_limits_count_every_byte_and_hold_a_fast_sender():
    limits = InputLimits(rate=5, burst=5, byte_rate=1000, byte_burst=2000, flood_timeout=60)
    h = WebHarness(limits=limits)
    alice, bob = h.browser("alice"), h.browser("bob")
    for i in range(12):
        alice.say(f"line {i}")
    assert len([e for e in bob.json() if e["type"] == "message"]) == 4  # /nick took one
    assert any(e["type"] == "slow-down" for e in alice.json())
    h.clock.pump([0.1] * 30)
    assert len([e for e in bob.json() if e["type"] == "message"]) == 8  # paced, none lost


def test_another_sites_page_is_refused_and_the_same_host_or_listed_origins_are_not():
    h = WebHarness(origins=("https://chat.example.com",))
    evil = Browser(h.site, 1, origin="https://evil.example")
    assert not evil.accepted
    assert evil.rejected and evil.rejected[0].status_code == 403
    assert Browser(h.site, 2, origin=ORIGIN).accepted
    assert Browser(h.site, 3, origin="https://chat.example.com").accepted
    assert Browser(h.site, 4, origin=None).accepted  # not a browser page


@pytest.mark.parametrize(
    ("origin", "host", "secure", "allowed"),
    [
        ("http://chat.test:8080", "chat.test:8080", False, True),
        ("HTTP://Chat.Test:8080/", "chat.test:8080", False, True),
        ("http://chat.test", "chat.test:80", False, True),
        ("https://chat.test", "chat.test", True, True),
        ("http://chat.test:8081", "chat.test:8080", False, False),
        ("http://chat.test.evil", "chat.test", False, False),
        ("null", "chat.test", False, False),
        ("http://localhost:8080", None, False, False),
    ],
)
def test_same_host_rule(origin, host, secure, allowed):
    assert origin_allowed(origin, host, frozenset(), secure) is allowed


def test_web_origin_values_are_checked():
    assert normalize_origin("https://Chat.Example.com/") == "https://chat.example.com"
    assert normalize_origin("*") == "*"
    for bad in ("chat.example.com", "ftp://x", "https://x/path"):
        with pytest.raises(ValueError):
            normalize_origin(bad)


def test_security_headers_and_only_get_for_pages():
    h = WebHarness()
    _, answer = http(h.site, b"GET /nothing HTTP/1.1\r\nHost: chat.test:8080\r\n\r\n")
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 404")
    assert b"content-security-policy: default-src 'none'" in head
    assert b"frame-ancestors 'none'" in head
    assert b"x-content-type-options: nosniff" in head
    assert b"server: groupchat" in head
    _, answer = http(h.site, b"POST /ws HTTP/1.1\r\nHost: chat.test:8080\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405")


def test_the_policy_names_the_socket_only_for_a_well_formed_host():
    assert b"connect-src 'self' ws://chat.test:8080 wss://chat.test:8080;" in (
        content_security_policy("chat.test:8080")
    )
    assert b"connect-src 'self';" in content_security_policy("x; script-src *")


def test_a_plain_get_of_the_socket_says_what_it_is():
    h = WebHarness()
    _, answer = http(h.site, b"GET /ws HTTP/1.1\r\nHost: chat.test:8080\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 426 Upgrade Required")
    assert b"open the page at / in a browser" in answer


def test_a_request_body_is_never_kept():
    h = WebHarness()
    body = b"x" * (MAX_BODY * 4)
    transport, answer = http(
        h.site,
        b"POST / HTTP/1.1\r\nHost: chat.test\r\nContent-Length: 99999999\r\n\r\n" + body,
    )
    assert answer.startswith(b"HTTP/1.1 413")
    assert transport.disconnecting


def test_connections_count_across_doors_and_the_web_refusal_says_why():
    h = WebHarness()
    h.rules.admission.max_per_address = 2
    line = h.connect("bob")
    web = h.browser("alice")
    transport, answer = http(h.site, b"GET / HTTP/1.1\r\nHost: chat.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503")
    assert b"too many connections from your address (at most 2)" in answer
    web.lost()  # the WebSocket's end gives back its slot
    assert h.rules.admission.total == 1
    line.protocol.connectionLost(Failure(ConnectionDone()))
    assert h.rules.admission.total == 0


def test_a_refused_websocket_is_told_why_in_a_close_frame_its_page_can_see():
    h = WebHarness()
    h.rules.admission.max_per_address = 1
    first = h.browser("alice")
    refused = Browser(h.site, 99)
    assert refused.accepted  # the upgrade, only to say why
    assert refused.closed is not None and refused.closed.code == 1013
    assert refused.closed.reason == "refused: too many connections from your address (at most 1)"
    assert h.rules.admission.total == 1 and h.rules.admission.held == 1
    h.clock.advance(2.0)  # held like any refusal, then closed
    assert refused.transport.disconnecting
    first.lost()


def test_files_are_served_one_request_per_connection():
    h = WebHarness()
    transport, answer = http(h.site, b"GET /nothing HTTP/1.1\r\nHost: chat.test\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in answer
    assert transport.disconnecting


def test_an_http_connection_has_a_deadline_from_accept():
    h = WebHarness()
    transport, _ = http(h.site, b"GET /ws HTTP/1.1\r\nHost: chat.te")  # and then nothing
    h.clock.advance(h.rules.register_timeout - 0.1)
    assert not transport.disconnecting
    h.clock.advance(0.2)
    assert transport.disconnecting


def test_the_login_deadline_of_a_websocket_counts_from_accept():
    from tests.test_auth import memory_auth

    h = WebHarness()
    h.rules.authenticator = memory_auth(h.clock)
    transport = StringTransport(peerAddress=_addr(5))
    channel = h.site.buildProtocol(_addr(5))
    assert isinstance(channel, WebChannel)
    channel.makeConnection(transport)
    h.clock.advance(20)  # a slow page: its upgrade comes 20 s after accept
    ws = WSConnection(ConnectionType.CLIENT)
    channel.dataReceived(ws.send(Request(host=HOST, target="/ws")))
    h.clock.advance(h.rules.register_timeout - 20 - 0.1)
    assert not transport.disconnecting
    h.clock.advance(0.2)
    assert transport.disconnecting
    ws.receive_data(transport.value())
    events = list(ws.events())
    text = [json.loads(e.data) for e in events if isinstance(e, TextMessage)]
    assert text[0]["type"] == "login-required"
    assert text[-1]["type"] == "bye" and "no login within" in text[-1]["reason"]


def test_a_login_over_the_websocket():
    from tests.test_auth import memory_auth

    h = WebHarness()
    h.rules.authenticator = memory_auth(h.clock, failure_floor=0)
    alice = Browser(h.site, 7)
    assert json.loads(alice.first[-1].data)["type"] == "login-required"
    alice.say("/login alice secret")
    h.clock.advance(1)
    welcome = alice.json()[0]
    assert welcome["type"] == "welcome" and welcome["nick"] == "alice" and welcome["logged_in"]


def test_malformed_upgrades_get_an_answer_and_no_traceback():
    h = WebHarness()
    key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    upgrade = b"Upgrade: websocket\r\nConnection: Upgrade\r\n" + key
    transport, answer = http(h.site, b"GET /ws HTTP/1.1\r\n" + upgrade + b"\r\n")  # no Host
    assert answer.startswith(b"HTTP/1.1 426") and transport.disconnecting
    bad_origin = b"Host: chat.test\r\nOrigin: http://[x\r\n"
    _, answer = http(h.site, b"GET /ws HTTP/1.1\r\n" + bad_origin + upgrade + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 403")
    assert not origin_allowed("http://[x", "[x", frozenset())
    assert not origin_allowed("http://chat.test:99999", "chat.test:99999", frozenset())


def test_binary_and_ping_frames_are_held_to_the_line_rate_like_lines():
    limits = InputLimits(rate=5, burst=5, byte_rate=1e6, byte_burst=1e6, flood_timeout=60)
    h = WebHarness(limits=limits)
    alice = h.browser("alice")
    alice.json()
    empty_binary = alice.ws.send(BytesMessage(b""))
    alice.send_raw(empty_binary * 75 + alice.ws.send(Ping(b"p")) * 75)
    errors = [e for e in alice.json() if e["type"] == "error"]
    assert len(errors) <= 5  # the burst, not 75 errors for 450 bytes of input
    h.clock.pump([0.5] * 10)
    later = [e for e in alice.json() if e["type"] == "error"]
    assert 15 <= len(later) <= 30  # paced at 5 a second
    assert alice.protocol.state is Session.OPEN
    bob = h.browser("bob")
    bob.send_raw(bob.ws.send(BytesMessage(b"")) * 400)  # 80 s of sending at once
    assert bob.protocol.state is Session.CLOSING
    assert "lines at once, over 60 s of sending at 5 lines/s" in bob.protocol.why


def test_an_endless_message_of_empty_or_tiny_fragments_costs_nothing_more():
    h = WebHarness(max_line=100)
    alice, bob = h.browser("alice"), h.browser("bob")
    ws = alice.ws
    alice.send_raw(ws.send(TextMessage("start ", message_finished=False)))
    alice.send_raw(b"".join(ws.send(TextMessage("", message_finished=False)) for _ in range(5000)))
    assert alice.protocol._partial == "start "  # 5,000 frames, not one piece kept each
    alice.send_raw(b"".join(ws.send(TextMessage("€", message_finished=False)) for _ in range(30)))
    assert alice.protocol._partial == "start " + "€" * 30  # one string, not 30 pieces
    alice.send_raw(ws.send(TextMessage("!")))
    assert [e["text"] for e in bob.json() if e["type"] == "message"] == ["start " + "€" * 30 + "!"]


def test_frames_sent_right_behind_the_upgrade_request_are_read():
    h = WebHarness()
    transport = StringTransport(peerAddress=_addr(9))
    channel = h.site.buildProtocol(_addr(9))
    channel.makeConnection(transport)
    ws = WSConnection(ConnectionType.CLIENT)
    request = ws.send(Request(host=HOST, target="/ws"))
    frames = b"".join(masked_text(t) for t in ("/nick early", "/join #early"))
    channel.dataReceived(request + frames)
    assert h.service.nick_in_use("early")
    member = channel.socket.member if channel.socket is not None else None
    assert member is not None and h.service.is_member_of(member, "#early")


def masked_text(text: str) -> bytes:
    payload = text.encode()
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload  # a mask of zeros


def test_head_of_the_socket_and_oversized_bodies_get_one_answer():
    h = WebHarness()
    _, answer = http(h.site, b"HEAD /ws HTTP/1.1\r\nHost: chat.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405")
    body = b"x" * (MAX_BODY * 3)
    _, answer = http(
        h.site,
        b"POST /ws HTTP/1.1\r\nHost: chat.test\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    )
    assert answer.startswith(b"HTTP/1.1 413") and answer.count(b"HTTP/1.1") == 1


def test_a_head_of_too_many_headers_is_refused():
    h = WebHarness()
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(100))
    transport, answer = http(h.site, b"GET / HTTP/1.1\r\nHost: chat.test\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and transport.disconnecting


def test_a_foreign_origin_is_logged_once_per_address_per_ten_seconds():
    from twisted.logger import formatEvent, globalLogPublisher

    h = WebHarness()
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)  # type: ignore[arg-type]
    try:
        for _ in range(50):
            assert not Browser(h.site, 1, origin="https://evil.example").accepted
        h.clock.advance(10.5)
        Browser(h.site, 1, origin="https://evil.example")
    finally:
        globalLogPublisher.removeObserver(seen.append)  # type: ignore[arg-type]
    lines = [formatEvent(e) for e in seen if "may not connect" in formatEvent(e)]
    assert len(lines) == 2
    assert lines[1].endswith("(49 more refused since the last line)")
