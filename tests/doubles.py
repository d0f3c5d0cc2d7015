"""Test doubles that declare the interfaces they stand in for, so they cannot drift."""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet import task
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_chat.core.events import Event
from twisted_chat.core.interfaces import IParticipant
from twisted_chat.core.service import ChatService, HeartbeatPolicy, Member
from twisted_chat.doors.line import ChatFactory, ChatLineProtocol
from twisted_chat.render import TEXT, Renderer, renderer_for
from twisted_chat.rules.connection import Rules
from twisted_chat.rules.limits import InputLimits

TELNET_COMMAND = re.compile(rb"\xff[\xfb-\xfe].")


@implementer(IParticipant)
class RecordingParticipant:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed: list[Event | None] = []
        self.format: Renderer = TEXT
        self.nudges = 0

    def deliver(self, event: Event) -> None:
        self.events.append(event)

    def close(self, final: Event | None) -> None:
        self.closed.append(final)

    def set_format(self, name: str) -> None:
        self.format = renderer_for(name)

    def nudge(self) -> None:
        self.nudges += 1

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]

    def texts(self) -> list[str]:
        return [TEXT.text(e) for e in self.events]

    def clear(self) -> None:
        self.events.clear()


class Harness:
    """A chat service on a fake clock, with helpers to seat recording participants."""

    def __init__(self, **policy: Any) -> None:
        self.clock = task.Clock()
        self.service = ChatService(self.clock, HeartbeatPolicy(**policy))
        self.people: dict[str, tuple[Member, RecordingParticipant]] = {}

    def add(self, nick: str) -> tuple[Member, RecordingParticipant]:
        participant = RecordingParticipant()
        verifyObject(IParticipant, participant)
        member = self.service.connect(participant)
        self.service.set_nick(member, nick)
        participant.clear()
        self.people[nick] = (member, participant)
        return member, participant


class Connection:
    """One protocol instance on a StringTransport, reading what the server wrote."""

    def __init__(self, factory: ChatFactory, port: int) -> None:
        self.clock = factory.rules.clock
        self.transport = StringTransport(peerAddress=_addr(port))
        protocol = factory.buildProtocol(_addr(port))
        assert isinstance(protocol, ChatLineProtocol)
        self.protocol = protocol
        self.protocol.makeConnection(self.transport)
        self._read = 0

    def send(self, data: bytes) -> None:
        """As the reactor reads it: the output is written at the end of the iteration."""
        self.protocol.dataReceived(data)
        self.clock.advance(0)  # type: ignore[attr-defined]  # a task.Clock in tests

    def output(self) -> bytes:
        return self.transport.value()

    def new_lines(self) -> list[str]:
        data = self.transport.value()
        fresh, self._read = data[self._read :], len(data)
        fresh = TELNET_COMMAND.sub(b"", fresh)  # what a telnet client would not show
        return [line.decode("utf-8") for line in fresh.split(b"\r\n") if line]

    def new_json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.new_lines()]


def _addr(port: int) -> Any:
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", "127.0.0.1", port)


class ProtocolHarness:
    def __init__(
        self,
        max_line: int = 2048,
        limits: InputLimits | None = None,
        network: Any = None,
        clock: task.Clock | None = None,
        history: Any = None,
        **policy: Any,
    ) -> None:
        self.clock = task.Clock() if clock is None else clock
        self.service = ChatService(
            self.clock, HeartbeatPolicy(**policy), max_line=max_line, limits=limits,
            network=network, history=history,
        )  # fmt: skip
        self.rules = Rules(self.service, self.clock, max_line=max_line, limits=limits)
        self.rules.send_queue = 1 << 20
        self.rules.seat_wait = 0.0  # seated at connect; tests of the wait set it
        self.factory = ChatFactory(self.rules)
        self._ports = iter(range(40000, 50000))

    def connect(self, nick: str | None = None) -> Connection:
        conn = Connection(self.factory, next(self._ports))
        if nick is not None:
            conn.send(f"/nick {nick}\r\n".encode())
        if conn.protocol.member is None and self.rules.seat_wait:
            self.clock.advance(self.rules.seat_wait)  # a lone /nick waits for a /join
        conn.new_lines()
        return conn
