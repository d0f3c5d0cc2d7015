"""The reference: the least a Twisted broadcast server can be.

A LineReceiver and a set of clients, nothing else: what our server's features cost is
measured against this.  Run: ``python -m bench.minimal_server PORT``.
"""

from __future__ import annotations

import sys

from twisted.internet import protocol, reactor
from twisted.protocols.basic import LineReceiver


class Broadcast(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.factory.clients.add(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: object = None) -> None:
        self.factory.clients.discard(self)  # type: ignore[attr-defined]

    def lineReceived(self, line: bytes) -> None:
        data = line + b"\n"
        for client in self.factory.clients:  # type: ignore[attr-defined]
            if client is not self:
                client.transport.write(data)


class BroadcastFactory(protocol.ServerFactory):
    protocol = Broadcast

    def __init__(self) -> None:
        self.clients: set[Broadcast] = set()


if __name__ == "__main__":
    port = reactor.listenTCP(  # type: ignore[attr-defined]
        int(sys.argv[1]), BroadcastFactory(), backlog=1024, interface="127.0.0.1"
    )
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]
