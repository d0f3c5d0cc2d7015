"""Misbehaving peers on the line protocol: each one may cost only itself.

Unit level, on ``StringTransport`` and ``task.Clock``; the same attacks over real sockets
are in ``tests/test_e2e.py`` and the chaos test.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.testing import StringTransport

from tests.doubles import ProtocolHarness
from twisted_chat.doors.framing import SUB_MAX, TelnetError, TelnetFilter
from twisted_chat.rules.limits import InputGovernor, InputLimits

LIMITS = InputLimits(
    rate=5.0, burst=10.0, byte_rate=16384.0, byte_burst=65536.0, flood_timeout=20.0
)


# -- telnet negotiation ---------------------------------------------------------------


def test_each_option_is_answered_once_per_connection():
    f = TelnetFilter()
    assert f.feed(b"\xff\xfd\x01" * 90 + b"hi" + b"\xff\xfb\x03" * 90, now=0.0) == b"hi"
    assert bytes(f.replies) == b"\xff\xfc\x01\xff\xfe\x03"
    f.replies.clear()
    f.feed(b"\xff\xfd\x01\xff\xfb\x03", now=10.0)
    assert f.replies == b""


def test_a_flood_of_commands_is_refused_before_any_is_parsed():
    f = TelnetFilter()
    f.feed(b"\xff\xf1" * 150, now=0.0)  # 150 NOPs: within the burst
    f.feed(b"\xff\xf1" * 100, now=5.0)  # 5 s later: 100 more have been allowed again
    try:
        f.feed(b"\xff\xfd\x01" * 21845, now=5.0)  # 64 KiB of DO: 11 ms of parsing
    except TelnetError as e:
        assert str(e).startswith("telnet negotiation flood")
    else:
        raise AssertionError("a negotiation flood was parsed")


def test_commands_split_across_reads_are_understood():
    f = TelnetFilter()
    out = b"".join(f.feed(bytes([b])) for b in b"a\xff\xfd\x05b\xff\xfa\x18\x00xy\xff\xf0c\xff")
    out += f.feed(b"\xffd")
    assert out == b"abcd"
    assert bytes(f.replies) == b"\xff\xfc\x05"


def test_escaped_iac_inside_a_subnegotiation_does_not_end_it():
    f = TelnetFilter()
    assert f.feed(b"\xff\xfa\x18\xff\xff\xff\xf0ok") == b"ok"


def test_an_unterminated_subnegotiation_is_bounded():
    f = TelnetFilter()
    f.feed(b"\xff\xfa\x18" + b"x" * (SUB_MAX - 1))
    try:
        f.feed(b"x")
    except TelnetError as e:
        assert "subnegotiation" in str(e)
    else:
        raise AssertionError("an endless subnegotiation was accepted")


def test_answers_to_our_timing_mark_are_counted_not_answered():
    f = TelnetFilter()
    f.feed(b"\xff\xfb\x06\xff\xfc\x06")
    assert f.marks == 2 and f.replies == b""


def test_a_peer_that_never_reads_cannot_grow_our_output_with_negotiation():
    h = ProtocolHarness(limits=LIMITS)
    h.rules.send_queue = 4096
    mallory = h.connect("mallory")
    mallory.protocol.gate.pauseProducing()  # its transport is full: it does not read
    before = len(mallory.output())
    every_option = [bytes((255, 253, option)) for option in range(256)]
    for _ in range(3):  # asking for every option three times, within the command rate
        for i in range(0, 256, 16):
            mallory.send(b"".join(every_option[i : i + 16]))
            h.clock.advance(1.0)
    assert len(mallory.output()) - before == 0
    assert mallory.protocol.queued == 256 * 3  # answered once each, and queued, not written
    mallory.send(b"".join(every_option))  # all at once: a flood
    assert mallory.transport.disconnecting


def test_an_endless_subnegotiation_disconnects_with_a_reason():
    h = ProtocolHarness(limits=LIMITS)
    mallory = h.connect("mallory")
    bob = h.connect("bob")
    bob.new_lines()
    mallory.send(b"\xff\xfa\x18")
    mallory.send(b"z" * 4096)
    assert mallory.transport.disconnecting
    assert bob.new_lines() == [
        f"*** [#lobby] mallory lost connection (telnet subnegotiation longer than {SUB_MAX} bytes)"
    ]


# -- the flood timer ------------------------------------------------------------------


def test_server_stalls_do_not_restart_the_flood_timer():
    """10 lines/s against a limit of 5, with the server stalling 0.6 s every 2 s."""
    h = ProtocolHarness(limits=LIMITS, timeout=1000.0)
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    now = 0.0
    while now < 40 and alice.protocol.member is not None and alice.protocol.member.present:
        if alice.transport.producerState == "producing":
            alice.send(b"spam\n")
        step = 0.6 if int(now * 10) % 20 == 0 else 0.1
        h.clock.advance(step)
        now += step
    assert "*** [#lobby] alice lost connection (flooding: held at 5 lines/s for 20 s)" in (
        bob.new_lines()
    )
    assert now < 25


def test_a_client_below_the_rate_is_never_flooding():
    h = ProtocolHarness(limits=LIMITS, timeout=1000.0)
    alice = h.connect("alice")
    bob = h.connect("bob")
    bob.new_lines()
    for i in range(600):  # 4.5 lines/s for 133 s, with bursts of 10 every 20 s
        alice.send(b"steady\n" * (10 if i % 90 == 0 else 1))
        h.clock.advance(1 / 4.5)
    assert alice.protocol.member is not None and alice.protocol.member.present
    assert not any("flooding" in line for line in bob.new_lines())


def test_the_governor_measures_being_held_not_the_last_refill():
    g = InputGovernor(LIMITS, now=0.0)
    assert g.hold(0.0) is True
    g.release(0.1)
    assert g.hold(0.8) is False  # released briefly (a stall): the same episode
    assert g.held_for(5.0) == 5.0
    g.release(5.0)
    assert g.held_for(7.5) == 0.0  # free for longer than the gap: over
    assert g.hold(7.5) is True


# -- limits before login ----------------------------------------------------------------


def _login_harness() -> ProtocolHarness:
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

    from twisted_chat.rules.login import Authenticator

    h = ProtocolHarness(limits=LIMITS)
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    h.rules.authenticator = Authenticator([checker], h.clock, attempts=3, failure_floor=0)
    return h


def test_the_send_queue_is_enforced_before_login():
    h = _login_harness()
    h.rules.send_queue = 4096
    conn = h.connect()
    conn.protocol.gate.pauseProducing()
    conn.new_lines()
    for _ in range(200):
        if conn.transport.disconnecting:
            break
        conn.send(b"/format text\n")  # each answered with the login prompt
        h.clock.advance(0.25)
    assert conn.transport.disconnecting
    assert conn.new_lines()[-1] == "*** Disconnected: send queue exceeded: not reading"
    assert conn.protocol.queued == 0


def test_a_connection_must_register_within_the_deadline_from_accept():
    h = _login_harness()
    h.rules.register_timeout = 20.0
    conn = h.connect()
    conn.new_lines()
    h.clock.advance(19.9)
    assert not conn.transport.disconnecting
    h.clock.advance(0.1)
    assert conn.new_lines() == ["*** Disconnected: no login within 20 s"]


def test_a_plain_connection_is_registered_at_once_and_leaves_no_timer():
    h = ProtocolHarness()
    h.connect("alice")
    assert h.clock.getDelayedCalls() == []


class _TLSTransport(StringTransport):
    """A transport that says it is TLS, and whose handshake never completes."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


def test_a_tls_connection_that_never_completes_its_handshake_is_dropped():
    from twisted.internet.address import IPv4Address
    from twisted.internet.interfaces import ISSLTransport
    from zope.interface import directlyProvides

    h = ProtocolHarness()
    h.rules.register_timeout = 20.0
    addr = IPv4Address("TCP", "127.0.0.1", 50000)
    protocol = h.factory.buildProtocol(addr)
    assert protocol is not None
    transport = _TLSTransport()
    directlyProvides(transport, ISSLTransport)
    protocol.makeConnection(transport)
    assert h.rules.admission.per_address["127.0.0.1"] == 1
    h.clock.advance(20.0)
    assert transport.aborted and transport.value() == b""
    protocol.connectionLost()
    assert h.rules.admission.per_address["127.0.0.1"] == 0 and h.service.members == {}


# -- reconnecting in a loop ---------------------------------------------------------------


def test_new_connections_from_one_address_are_rate_limited():
    from twisted.internet.address import IPv4Address

    from twisted_chat.doors.line import Refusal

    h = ProtocolHarness()
    h.rules.admission.connect_rate = 10.0
    here, there = IPv4Address("TCP", "10.0.0.1", 1), IPv4Address("TCP", "10.0.0.2", 1)
    built = [h.factory.buildProtocol(here) for _ in range(25)]
    refused = [p for p in built if isinstance(p, Refusal)]
    assert len(refused) == 5  # a burst of 20, then no more this instant
    assert "too many new connections from your address" in refused[0].reason
    assert not isinstance(h.factory.buildProtocol(there), Refusal)  # others unaffected
    h.clock.advance(0.1)
    assert not isinstance(h.factory.buildProtocol(here), Refusal)  # one more per 0.1 s
    assert isinstance(h.factory.buildProtocol(here), Refusal)
    h.clock.advance(1.0)
    for _ in range(10):  # the second's ten
        assert not isinstance(h.factory.buildProtocol(here), Refusal)
    later = h.factory.buildProtocol(here)  # told why over a second ago: now held, silently
    assert isinstance(later, Refusal) and not later.tell and later.hold


class _Abortable(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def test_a_refused_connection_is_told_then_held_unread_before_it_is_closed():
    """A client reconnecting whenever it is closed costs one accept per hold."""
    from twisted.internet.address import IPv4Address

    from twisted_chat.doors.line import Refusal
    from twisted_chat.rules.admission import REFUSAL_HOLD

    h = ProtocolHarness()
    h.rules.admission.max_per_address = 1
    here = IPv4Address("TCP", "10.0.0.1", 1)
    h.factory.buildProtocol(here)
    refusal = h.factory.buildProtocol(here)
    assert isinstance(refusal, Refusal)
    transport = _Abortable()
    refusal.makeConnection(transport)
    told = b"!!! refused: too many connections from your address (at most 1)\r\n"
    assert transport.value() == told
    assert transport.producerState == "paused"  # nothing it sends is read
    assert h.rules.admission.held == 1 and h.rules.admission.per_address["10.0.0.1"] == 1
    h.clock.advance(REFUSAL_HOLD - 0.01)
    assert not transport.disconnecting
    h.clock.advance(0.01)
    assert transport.disconnecting and not transport.aborted
    refusal.connectionLost()
    assert h.rules.admission.held == 0 and h.clock.getDelayedCalls() == []


def test_held_refusals_are_bounded_and_then_closed_at_once():
    from twisted.internet.address import IPv4Address

    from twisted_chat.doors.line import Refusal
    from twisted_chat.rules.admission import MAX_HELD_REFUSALS

    h = ProtocolHarness()
    h.rules.admission.max_per_address = 1
    here = IPv4Address("TCP", "10.0.0.1", 1)
    h.factory.buildProtocol(here)
    held = []
    for _ in range(MAX_HELD_REFUSALS):
        refusal = h.factory.buildProtocol(here)
        assert isinstance(refusal, Refusal)
        refusal.makeConnection(_Abortable())
        held.append(refusal)
    assert h.rules.admission.held == MAX_HELD_REFUSALS
    told = h.factory.buildProtocol(here)  # still in its second of saying why: closed at once
    assert isinstance(told, Refusal) and not told.hold
    transport = _Abortable()
    told.makeConnection(transport)
    assert transport.value().startswith(b"!!! refused:") and transport.disconnecting
    h.clock.advance(1.0)  # past that second: nothing to say and no room, so no transport
    assert h.factory.buildProtocol(here) is None
    held[0].connectionLost()
    assert isinstance(h.factory.buildProtocol(here), Refusal)  # room again


def test_over_tls_a_refused_connection_never_gets_tls_state():
    from twisted.internet import endpoints
    from twisted.internet.address import IPv4Address
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.testing import MemoryReactor
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from twisted_chat.doors.line import ChatLineProtocol, Refusal, RefusingTLSFactory
    from twisted_chat.tap import listen

    h = ProtocolHarness()
    h.rules.admission.max_per_address = 1
    reactor = MemoryReactor()
    endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, CertificateOptions(), interface="::1")
    listen(endpoint, h.factory)
    ((port, tls, _, interface),) = reactor.tcpServers  # plain TCP, our own TLS wrapper
    assert isinstance(tls, RefusingTLSFactory) and interface == "::1"
    here = IPv4Address("TCP", "10.0.0.1", 1)
    first = tls.buildProtocol(here)
    assert isinstance(first, TLSMemoryBIOProtocol)
    assert isinstance(first.wrappedProtocol, ChatLineProtocol)
    # Over the limit: held on plain TCP, since no reason can be said before a handshake.
    held = tls.buildProtocol(here)
    assert isinstance(held, Refusal) and not held.tell
    transport = StringTransport()
    held.makeConnection(transport)
    assert transport.value() == b"" and h.rules.admission.held == 1


def test_connection_rate_memory_is_bounded():
    from twisted.internet.address import IPv4Address

    from twisted_chat.rules.admission import MAX_TRACKED_ADDRESSES

    h = ProtocolHarness()
    h.rules.admission.connect_rate = 10.0
    for i in range(MAX_TRACKED_ADDRESSES + 500):
        address = IPv4Address("TCP", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1)
        protocol = h.factory.buildProtocol(address)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        protocol.connectionLost()
    assert len(h.rules.admission._arrivals) == MAX_TRACKED_ADDRESSES


# -- found in a second hostile trial -------------------------------------------------------


def test_a_huge_msg_target_costs_no_unicode_work_and_is_not_echoed_whole(monkeypatch):
    import twisted_chat.core.service as service_module

    calls: list[str] = []
    real = service_module.skeletons

    def counting(name: str) -> tuple[str, ...]:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(service_module, "skeletons", counting)
    h = ProtocolHarness()
    alice = h.connect("alice")
    calls.clear()
    alice.send(("/msg " + "\ufdfa" * 680 + " x\n").encode())
    (error,) = alice.new_lines()
    assert error.startswith("!!! no-such-nick: nobody is called") and len(error) < 100
    assert calls == []  # far longer than any nickname: never normalised or folded
    alice.send(("/join #" + "\ufdfa" * 600 + "\n").encode())
    assert alice.new_lines()[0].startswith("!!! room-invalid: a room name is at most 32")


def test_ipv6_addresses_are_counted_by_their_64():
    from twisted.internet.address import IPv6Address

    from twisted_chat.doors.line import Refusal

    h = ProtocolHarness()
    h.rules.admission.max_per_address = 20
    built = [
        h.factory.buildProtocol(IPv6Address("TCP", f"2001:db8::{i:x}", 1)) for i in range(1, 26)
    ]
    assert sum(isinstance(p, Refusal) for p in built) == 5


def test_a_refusal_over_tls_is_an_abort_without_a_handshake():
    from twisted.internet.interfaces import ISSLTransport
    from zope.interface import directlyProvides

    from twisted_chat.doors.line import Refusal

    class Aborted(StringTransport):
        aborted = False

        def abortConnection(self) -> None:
            self.aborted = True

    from twisted_chat.rules.admission import REFUSAL_HOLD, Refused

    h = ProtocolHarness()
    transport = Aborted()
    directlyProvides(transport, ISSLTransport)
    refused = Refused("the server is full", tell=True, hold=True)
    Refusal(refused, h.rules.admission, h.clock).makeConnection(transport)
    h.clock.advance(REFUSAL_HOLD)
    assert transport.aborted and transport.value() == b""


def test_refusals_are_logged_once_per_address_per_ten_seconds():
    from twisted.internet.address import IPv4Address
    from twisted.logger import globalLogPublisher

    h = ProtocolHarness()
    h.rules.admission.max_per_address = 1
    here = IPv4Address("TCP", "10.0.0.9", 1)
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)  # type: ignore[arg-type]
    try:
        h.factory.buildProtocol(here)  # accepted: now at the limit
        for _ in range(500):
            h.factory.buildProtocol(here)
        h.clock.advance(10.0)
        h.factory.buildProtocol(here)
    finally:
        globalLogPublisher.removeObserver(seen.append)  # type: ignore[arg-type]
    lines = [e for e in seen if e.get("log_format", "").startswith("refused {host}")]
    assert [e["more"] for e in lines] == ["", " (499 more refused since the last line)"]


def test_lines_sent_while_a_login_is_checked_stop_the_reading():
    h = _login_harness()
    assert h.rules.authenticator is not None
    h.rules.authenticator.failure_floor = 5.0  # a slow answer, as when throttled
    conn = h.connect()
    conn.new_lines()
    conn.send(b"/login alice wrong\n" + b"/ping\n" * 40)
    assert conn.transport.producerState == "paused"
    for _ in range(50):
        conn.send(b"/ping\n" * 40)  # read anyway (a transport may deliver what it has)
    h.clock.advance(5.0)
    lines = conn.new_lines()
    assert lines[0] == "!!! login-failed: wrong name or password (2 attempts left)"
    assert conn.transport.disconnecting  # and the pile-up is a flood, as anywhere else


def test_a_login_name_that_cannot_be_a_nickname_costs_an_attempt():
    h = _login_harness()
    conn = h.connect()
    conn.new_lines()
    for _ in range(3):
        conn.send(b"/login admin pw\n")
    assert conn.new_lines()[-1] == "*** Disconnected: too many failed logins"


def test_other_protocols_and_sloppy_http_never_reach_a_room():
    h = ProtocolHarness()
    h.rules.seat_wait = 0.25
    bob = h.connect("bob")
    bob.new_lines()
    for first in (
        b"SSH-2.0-OpenSSH_9.2p1\r\n",
        b"get / http/1.1\r\n",
        b"GET  /  HTTP/1.1 \r\n",
        b"OPTIONS sip:bob@example.org SIP/2.0\r\n",
        b"OPTIONS rtsp://example.org/x RTSP/1.0\r\n",
    ):
        from tests.doubles import Connection

        conn = Connection(h.factory, next(h._ports))
        conn.send(first)
        assert conn.transport.disconnecting, first
    h.clock.advance(5)
    assert bob.new_lines() == []


def test_a_flood_of_refusals_pauses_accepting_for_a_moment():
    from twisted.internet.address import IPv4Address

    from twisted_chat.rules.admission import ACCEPT_PAUSE, REFUSAL_BURST

    class Port:
        reading = True
        pauses = 0

        def stopReading(self) -> None:
            self.reading = False
            self.pauses += 1

        def startReading(self) -> None:
            self.reading = True

    h = ProtocolHarness()
    h.rules.admission.max_per_address = 1
    port, other = Port(), Port()  # every listening port pauses: the limits are shared
    h.rules.admission.listening(port)
    h.rules.admission.listening(other)
    here = IPv4Address("TCP", "10.0.0.7", 1)
    h.factory.buildProtocol(here)  # accepted: now at the limit
    for _ in range(int(REFUSAL_BURST)):
        h.factory.buildProtocol(here)
    assert port.reading  # within the burst
    for _ in range(50):
        h.factory.buildProtocol(here)
    assert not port.reading and port.pauses == 1  # paused once, however many more
    assert not other.reading and other.pauses == 1
    h.clock.advance(ACCEPT_PAUSE)
    assert port.reading and other.reading and h.clock.getDelayedCalls() == []
    for _ in range(300):  # paused again; then the ports close: no pause outlives them
        h.factory.buildProtocol(here)
    assert not port.reading
    h.rules.admission.closing(port)
    h.rules.admission.closing(other)
    assert h.rules.admission.ports == [] and h.clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_a_port_accepts_a_bounded_number_of_connections_per_turn():
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from twisted_chat.tap import MAX_ACCEPTS, BoundedAcceptPort, listen

    h = ProtocolHarness()
    port = yield listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), h.factory)
    try:
        assert isinstance(port, BoundedAcceptPort)
        assert port.numberAccepts == MAX_ACCEPTS  # Twisted starts at 100
        port.numberAccepts += 20  # what Twisted does after a turn that took all it could
        assert port.numberAccepts == MAX_ACCEPTS
    finally:
        yield port.stopListening()
