"""Direct sends on a real loopback socket: nothing lost or reordered when the kernel is full."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.testing import StringTransport

from twisted_chat.fastwrite import can_write_directly, write_now

CHUNK = 4096
COUNT = 2000  # 8 MB: far beyond the socket buffers, so most sends are partial or refused


def _payload(n: int) -> bytes:
    return f"{n:08d}".encode().ljust(CHUNK, b".")


class Blaster(protocol.Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.factory.direct.append(can_write_directly(self.transport))
        for n in range(COUNT):
            write_now(self.transport, _payload(n))
        self.transport.loseConnection()


class BlasterFactory(protocol.ServerFactory):
    protocol = Blaster

    def __init__(self) -> None:
        self.direct: list[bool] = []


class Collector(protocol.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(b"".join(self.chunks))


@pytest_twisted.inlineCallbacks
def test_direct_sends_keep_every_byte_in_order_past_a_full_socket():
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    factory = BlasterFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        collector = Collector()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)  # type: ignore[attr-defined]
        yield endpoint.connect(protocol.Factory.forProtocol(lambda: collector))
        data = yield collector.done.addTimeout(20, reactor)
    finally:
        yield port.stopListening()
    assert factory.direct == [True]
    assert len(data) == CHUNK * COUNT
    assert data == b"".join(_payload(n) for n in range(COUNT))


class Inspector(protocol.Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.factory.seen.callback(self.transport)
        self.transport.loseConnection()


class InspectorFactory(protocol.ServerFactory):
    protocol = Inspector

    def __init__(self) -> None:
        self.seen: defer.Deferred[object] = defer.Deferred()


@pytest_twisted.inlineCallbacks
def test_the_installed_twisted_still_offers_what_write_now_reads():
    """CI installs the newest Twisted: if a release renames what ``write_now`` reads, this
    fails and names it, instead of the server quietly losing its fast path."""
    from twisted.internet import reactor, tcp
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from twisted_chat.fastwrite import missing

    factory = InspectorFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)  # type: ignore[attr-defined]
        client = yield endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
        transport = yield factory.seen.addTimeout(10, reactor)
        client.transport.loseConnection()
    finally:
        yield port.stopListening()
    assert type(transport) is tcp.Server, type(transport)
    assert missing(transport) == [], f"Twisted no longer has {missing(transport)}"
    assert isinstance(transport.dataBuffer, bytes) and isinstance(transport.offset, int)
    assert isinstance(transport._tempDataBuffer, list)
    assert transport.TLS is False and transport._writeDisconnected is False
    assert can_write_directly(transport)


def test_a_tcp_transport_without_those_attributes_is_refused_and_said_once():
    from twisted.internet import tcp
    from twisted.logger import capturedLogs

    from twisted_chat import fastwrite

    stripped = tcp.Server.__new__(tcp.Server)  # no __init__: none of its attributes
    fastwrite._warned.clear()
    with capturedLogs() as events:
        assert not can_write_directly(stripped)
        assert not can_write_directly(stripped)
    warnings = [e for e in events if "without the fast path" in e["log_format"]]
    assert len(warnings) == 1 and "socket" in warnings[0]["missing"]
    fastwrite._warned.clear()


def test_only_plain_tcp_is_written_directly():
    assert not can_write_directly(StringTransport())


class FakeSocket:
    def __init__(self, takes: int | None = None, error: OSError | None = None) -> None:
        self.takes, self.error, self.sent = takes, error, b""

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        n = len(data) if self.takes is None else min(self.takes, len(data))
        self.sent += data[:n]
        return n


class FakeTransport:
    """The attributes of ``tcp.Connection`` that ``write_now`` reads, and its ``write``."""

    def __init__(self, sock: FakeSocket) -> None:
        self.socket = sock
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer: list[bytes] = []
        self._writeDisconnected = False
        self.TLS = False
        self.connected = True
        self.disconnecting = False
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self._tempDataBuffer.append(data)


def test_write_now_sends_at_once_only_when_nothing_waits_before_it():
    t = FakeTransport(FakeSocket())
    assert write_now(t, b"one") is None
    assert (t.socket.sent, t.written) == (b"one", [])
    t._tempDataBuffer.append(b"queued")  # Twisted holds earlier bytes: keep the order
    write_now(t, b"two")
    assert (t.socket.sent, t.written) == (b"one", [b"two"])


def test_write_now_hands_the_rest_of_a_partial_send_to_twisted():
    t = FakeTransport(FakeSocket(takes=2))
    write_now(t, b"hello")
    assert (t.socket.sent, t.written) == (b"he", [b"llo"])
    write_now(t, b"again")  # the rest is queued now: this goes behind it
    assert t.written == [b"llo", b"again"]


def test_write_now_reports_a_reset_and_leaves_the_close_to_twisted():
    t = FakeTransport(FakeSocket(error=ConnectionResetError(104, "reset")))
    error = write_now(t, b"x")
    assert isinstance(error, ConnectionResetError)
    assert t.written == [b"x"]
    blocked = FakeTransport(FakeSocket(error=BlockingIOError()))
    assert write_now(blocked, b"y") is None and blocked.written == [b"y"]


def test_write_now_leaves_tls_and_closing_transports_to_twisted():
    for attribute, value in (("TLS", True), ("disconnecting", True), ("connected", False)):
        t = FakeTransport(FakeSocket())
        setattr(t, attribute, value)
        write_now(t, b"z")
        assert (t.socket.sent, t.written) == (b"", [b"z"]), attribute
