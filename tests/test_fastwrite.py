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


def test_only_plain_tcp_is_written_directly():
    assert not can_write_directly(StringTransport())
