"""A second front door, written as the docs say, gets every rule of the first for free."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.doubles import ProtocolHarness, _addr
from twisted_chat.rules.connection import Connection, Rules
from twisted_chat.rules.limits import InputLimits


class MessageDoor(Connection, Protocol):
    """Each write from the peer is one message (as a WebSocket frame would be)."""

    def connectionMade(self) -> None:
        self._opened()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._charge(len(data)):
            self._take_lines([data])


class MessageDoorFactory(ServerFactory):
    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    def buildProtocol(self, addr: Any) -> Protocol | None:
        host, refused = self.rules.admission.admit(addr)
        if refused is not None:
            return None
        door = MessageDoor(self.rules)
        door.factory = self
        door.address = host
        return door


def open_door(h: ProtocolHarness, port: int) -> tuple[MessageDoor, StringTransport]:
    door = MessageDoorFactory(h.rules).buildProtocol(_addr(port))
    assert isinstance(door, MessageDoor)
    transport = StringTransport(peerAddress=_addr(port))
    door.makeConnection(transport)
    return door, transport


def test_a_new_door_shares_rooms_limits_and_admission_with_the_line_protocol():
    h = ProtocolHarness(limits=InputLimits(rate=2.0, burst=2.0))
    h.rules.admission.max_per_address = 3
    telnet = h.connect("alice")
    door, transport = open_door(h, 1)
    door.dataReceived(b"/nick carol")
    h.clock.advance(0)
    assert b"carol" in transport.value()
    door.dataReceived(b"hello from the other door")
    h.clock.advance(0)
    assert telnet.new_lines()[-1] == "[#lobby] <carol> hello from the other door"
    telnet.send(b"hi carol\r\n")
    assert transport.value().endswith(b"[#lobby] <alice> hi carol\r\n")
    door.dataReceived(b"one")  # the line rate holds it back like any connection
    h.clock.advance(0)
    assert b"Slow down" in transport.value()
    # Connections through either door count against the same per-address limit.
    open_door(h, 2)
    assert MessageDoorFactory(h.rules).buildProtocol(_addr(3)) is None
    assert h.rules.admission.per_address["127.0.0.1"] == 3
