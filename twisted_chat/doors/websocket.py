"""The WebSocket front door: the browser client's way in, over ``--web``'s ``/ws``.

One text message is one line as typed; one event is one message, in the JSON rendering
unless the member asks for text.  wsproto (what ``Twisted[websocket]`` installs) checks
the handshake; frames are read and written by ``wsframes``.  Twisted's own
``twisted.web.websocket`` would not give what the rules need: every byte read is charged
before it is parsed, a message is never held past ``--max-line`` (it reassembles
messages without a bound), a pong is output like any other and counts against the send
queue, and an event is framed once for all its recipients, as the line door renders it
once (server frames are not masked, so every recipient gets the same bytes).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from twisted_chat.core.errors import NotText
from twisted_chat.core.events import Event
from twisted_chat.core.sanitize import clean_text
from twisted_chat.doors.wsframes import (
    BINARY,
    CLOSE,
    FAIL,
    NO_CODE,
    PING,
    PONG,
    TEXT,
    FrameReader,
    close_code,
    close_frame,
    frame,
)
from twisted_chat.render import JSON, Renderer
from twisted_chat.render import TEXT as TEXT_RENDERING
from twisted_chat.rules.connection import Connection, Rules, Session
from twisted_chat.rules.limits import TOO_LONG, Item, NotALine

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

NORMAL, GOING_AWAY = 1000, 1001
_QUIET_CLOSES = (NORMAL, GOING_AWAY, NO_CODE)


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
    base = TEXT_RENDERING

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

    __slots__ = ("_frames", "_partial", "_peer_closed", "_size", "_skipping", "_started")

    def __init__(self, rules: Rules, started: float) -> None:
        Connection.__init__(self, rules)
        self.format = WS_JSON
        self._frames = FrameReader()
        self._partial = ""  # the text message being received, while unfinished
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
        lines: list[Item] = []
        for opcode, payload, finished in self._frames.feed(data):
            if opcode == TEXT:
                assert isinstance(payload, str)
                self._text(payload, bool(finished), lines)
            elif opcode == PING:
                # Answered in its turn, at the line rate: a flood of pings is held back
                # like a flood of lines, and its pongs count against the send queue.
                assert isinstance(payload, bytes)
                lines.append(NotALine(partial(self._send, frame(payload, PONG))))
            elif opcode == BINARY:
                lines.append(NotALine(self._not_text))
            elif opcode in (CLOSE, FAIL):
                self._take_lines(lines)  # what came before the close is acted on
                if opcode == CLOSE:
                    assert isinstance(payload, bytes)
                    self._closed_by_peer(*close_code(payload))
                else:
                    assert isinstance(payload, str)
                    self._broken(payload, int(finished))
                return
        self._take_lines(lines)

    def _not_text(self) -> None:
        self._tell(NotText("binary messages are not read here: send text"))

    def _text(self, data: str, finished: bool, lines: list[Item]) -> None:
        """Gather a message's pieces up to the line limit; a finished one is lines.

        Into one string, however many pieces it comes in: a message of thousands of
        one-character fragments must cost what its characters cost, no more.
        """
        if not self._skipping:
            self._size += len(data)
            if self._size > self.rules.max_line:
                self._skipping = True
                self._partial = ""
            elif finished:
                self._split(self._partial + data if self._partial else data, lines)
                self._partial = ""
            elif data:
                self._partial += data
        if finished:
            if self._skipping:
                lines.append(TOO_LONG)
            self._size = 0
            self._skipping = False

    def _split(self, text: str, lines: list[Item]) -> None:
        """A message is a line as typed; a pasted one with line breaks is several."""
        limit = self.rules.max_line
        for line in text.encode("utf-8").split(b"\n"):
            line = line.removesuffix(b"\r")
            lines.append(line if len(line) <= limit else TOO_LONG)

    def _closed_by_peer(self, code: int, reason: str) -> None:
        """A close frame: the tab went away.  Answered with its code, then closed."""
        if code not in _QUIET_CLOSES:
            self.log.info(
                "WebSocket from {peer} closed: {code} {reason}",
                peer=self.peer,
                code=code,
                reason=clean_text(reason)[:123],  # the peer's words: no control characters
            )
        self._peer_closed = True
        self._finish(close_frame(NORMAL if code == NO_CODE else code))

    def _broken(self, reason: str, code: int) -> None:
        """Frames no client may send: say why in a close frame, and end."""
        self.log.info(
            "WebSocket from {peer} broke the protocol: {reason}", peer=self.peer, reason=reason
        )
        self.why = f"WebSocket protocol error: {reason}"
        self._finish(close_frame(code, reason))

    def _finish(self, close: bytes) -> None:
        """End with ``close``, the close frame this end calls for, instead of ours."""
        if self.state not in (Session.OPEN, Session.LOGIN) or self.transport is None:
            return  # already closing (the lines before it may have quit)
        self.pending = None
        self._out = None
        Connection._end(self, close)

    def set_format(self, name: str) -> None:
        super().set_format(name)
        self.format = FRAMED[self.format.name]

    def _end(self, last: bytes) -> None:
        """Close with a close frame after ``last``, saying why when there is a why."""
        Connection._end(self, last + close_frame(NORMAL, self.why))
