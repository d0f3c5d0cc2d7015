"""The WebSocket front door: the browser client's way in, over ``--web``'s ``/ws``.

One text message is one line as typed; one event is one message, in the JSON rendering
unless the member asks for text.  wsproto (what ``Twisted[websocket]`` installs) parses
the handshake and the frames; the rest is ours, for what the rules need and Twisted's
own ``twisted.web.websocket`` does not give: every byte read is charged before it is
parsed, a message is never held past ``--max-line`` (it reassembles messages without a
bound), a pong is output like any other and counts against the send queue, and an
event is framed once for all its recipients, as the line door renders it once (server
frames are not masked, so every recipient gets the same bytes).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from twisted_chat.core.errors import NotText
from twisted_chat.core.events import Event
from twisted_chat.render import JSON, TEXT, Renderer
from twisted_chat.rules.connection import Connection, Rules
from twisted_chat.rules.limits import TOO_LONG, LineTooLong

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

NORMAL, GOING_AWAY = 1000, 1001
_QUIET_CLOSES = (NORMAL, GOING_AWAY, 1005)  # 1005: a close frame with no code


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unfragmented, unmasked frame (RFC 6455 5.2): what a server sends."""
    n = len(payload)
    head = 0x80 | opcode
    if n < 126:
        return bytes((head, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", head, 126, n) + payload
    return struct.pack("!BBQ", head, 127, n) + payload


class _Framed(Renderer):
    """A rendering with each event in its own text frame, cached on the event like the
    line renderings, so a room's recipients share one framed copy."""

    base: Renderer

    def line(self, event: Event) -> bytes:
        data = self.base.encode(event)
        return frame(data[:-2] if data.endswith(b"\r\n") else data)


class FramedJson(_Framed):
    name = "json"
    base = JSON

    def encode(self, event: Event) -> bytes:
        wire = event.ws_json_wire
        if wire is None:
            wire = event.ws_json_wire = self.render(event)
        return wire


class FramedText(_Framed):
    name = "text"
    base = TEXT

    def encode(self, event: Event) -> bytes:
        wire = event.ws_text_wire
        if wire is None:
            wire = event.ws_text_wire = self.render(event)
        return wire


WS_JSON, WS_TEXT = FramedJson(), FramedText()
FRAMED: dict[str, Renderer] = {"json": WS_JSON, "text": WS_TEXT}


class ChatWebSocket(Connection, Protocol):
    """One browser (or other WebSocket client), after the HTTP upgrade.

    Its transport is the TCP (or TLS) connection the HTTP request came on, so reading
    pauses, back-pressure and direct writes work as for the line door.
    """

    __slots__ = ("_parts", "_peer_closed", "_size", "_skipping", "_started", "_ws")

    def __init__(self, rules: Rules, ws: WSConnection, started: float) -> None:
        Connection.__init__(self, rules)
        self.format = WS_JSON
        self._ws = ws
        self._parts: list[str] | None = None  # the text message being received
        self._size = 0
        self._skipping = False  # the message is over the limit: dropped up to its end
        self._started = started  # when the TCP connection was accepted
        self._peer_closed = False  # it sent a close frame: whatever follows is a clean end

    def connectionMade(self) -> None:
        self._opened()
        if self._awaiting_tls:
            self.handshakeCompleted()  # the HTTP request already came over TLS
        # The registration deadline counts from the TCP accept, not from the upgrade.
        call: IDelayedCall | None = self._login_call
        if call is not None and call.active():
            spent = self.clock.seconds() - self._started
            call.reset(max(0.0, self.rules.register_timeout - spent))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # A tab that said goodbye and closed its socket at once leaves a reset behind.
        self._lost(connectionDone if self._peer_closed else reason)

    def dataReceived(self, data: bytes) -> None:
        if not self._charge(len(data)):
            return
        ws = self._ws
        ws.receive_data(data)
        lines: list[bytes | LineTooLong] = []
        for event in ws.events():
            if isinstance(event, TextMessage):
                self._text(event.data, event.message_finished, lines)
            elif isinstance(event, Ping):
                self._send(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._closed_by_peer(event)
                return
            elif isinstance(event, BytesMessage) and event.message_finished:
                self._take_lines(lines)
                lines = []
                self._tell(NotText("binary messages are not read here: send text"))
        self._take_lines(lines)

    def _text(self, data: str, finished: bool, lines: list[bytes | LineTooLong]) -> None:
        """Gather a message's pieces up to the line limit; a finished one is lines."""
        if not self._skipping:
            self._size += len(data)
            if self._size > self.rules.max_line:
                self._skipping = True
                self._parts = None
            elif finished and self._parts is None:
                self._split(data, lines)
            else:
                if self._parts is None:
                    self._parts = []
                self._parts.append(data)
                if finished:
                    self._split("".join(self._parts), lines)
        if finished:
            if self._skipping:
                lines.append(TOO_LONG)
            self._parts = None
            self._size = 0
            self._skipping = False

    def _split(self, text: str, lines: list[bytes | LineTooLong]) -> None:
        """A message is a line as typed; a pasted one with line breaks is several."""
        limit = self.rules.max_line
        for line in text.encode("utf-8").split(b"\n"):
            line = line.removesuffix(b"\r")
            lines.append(line if len(line) <= limit else TOO_LONG)

    def _closed_by_peer(self, event: CloseConnection) -> None:
        """A close frame: the tab went away (or the frames made no sense: wsproto says
        so with a close of its own, 1002 or 1007)."""
        if event.code not in _QUIET_CLOSES:
            self.log.info(
                "WebSocket from {peer} closed: {code} {reason}",
                peer=self.peer,
                code=event.code,
                reason=event.reason,
            )
        self._peer_closed = True
        answer = b""
        if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            answer = self._ws.send(event.response())
        self.pending = None
        self._out = None
        self._end(answer)

    def set_format(self, name: str) -> None:
        super().set_format(name)
        self.format = FRAMED[self.format.name]

    def _end(self, last: bytes) -> None:
        """Close with a close frame after ``last``, saying why when there is a why."""
        ws = self._ws
        if ws.state is ConnectionState.OPEN:
            reason = truncate_utf8(self.why, 123)  # a close frame holds 125 bytes
            last += ws.send(CloseConnection(code=NORMAL, reason=reason))
        Connection._end(self, last)


def truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def accept(ws_handshake: Any) -> tuple[bytes, WSConnection]:
    """The 101 response for an upgrade request wsproto accepted, and the connection.

    No subprotocol and no extension is agreed: a compressed frame would cost inflating
    before its size is known.
    """
    from wsproto.events import AcceptConnection

    response = ws_handshake.send(AcceptConnection())
    connection = ws_handshake.connection
    assert connection is not None
    return response, connection
