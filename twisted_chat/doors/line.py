"""The line protocol: the front door for telnet, nc and the terminal client.

Only what is about its bytes lives here: telnet negotiation, line framing, noticing
another protocol (HTTP, TLS, SSH) on the port, telnet timing marks as a heartbeat.
Everything else (limits, login, seating, output, closing) is ``rules.Connection``'s.
"""

from __future__ import annotations

import re
from typing import cast

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat.core.sanitize import clean_text
from twisted_chat.doors.framing import (
    DO,
    IAC,
    TIMING_MARK,
    LineFramer,
    TelnetError,
    TelnetFilter,
)
from twisted_chat.render import TEXT
from twisted_chat.rules.admission import REFUSAL_HOLD, Admission, Refused
from twisted_chat.rules.connection import CLOSE_GRACE, Connection, Rules, Session, abort_transport
from twisted_chat.rules.limits import Item

# The request line of HTTP (and of RTSP and SIP, which look alike), however spaced or cased.
HTTP_REQUEST = re.compile(rb"(?i)[a-z]{3,10}\s+\S+\s+(?:http|rtsp|sip)/\d(?:\.\d)?\s*")
OTHER_PROTOCOL = re.compile(rb"SSH-\d\.\d-")  # an SSH client's first line
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS ClientHello record: not typed by people


@implementer(IHandshakeListener)
class ChatLineProtocol(Connection, LineReceiver):
    delimiter = b"\n"
    __slots__ = ("framer", "telnet")

    def __init__(self, rules: Rules) -> None:
        Connection.__init__(self, rules)
        self.framer = LineFramer(rules.max_line)
        self.telnet = TelnetFilter()

    def connectionMade(self) -> None:
        self._opened()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.rules.tally.closed("line")
        self._lost(reason)

    def dataReceived(self, data: bytes) -> None:
        if not self._charge(len(data)):
            return
        if self._fresh and data[:1] == TLS_HANDSHAKE and self.member is None:
            self._not_a_chat_client(None, "a TLS handshake on a plain port")
            return
        try:
            data = self.telnet.feed(data, self.clock.seconds())
        except TelnetError as e:
            self._abuse(str(e))
            return
        if self.telnet.replies:
            replies = bytes(self.telnet.replies)
            self.telnet.replies.clear()
            self._send(replies)  # counted against the send queue like any output
        lines = self.framer.feed(data)
        if lines and self._fresh:
            first = lines[0]
            if isinstance(first, bytes) and HTTP_REQUEST.fullmatch(first):
                self._fresh = False
                self._not_a_chat_client(first)
                return
            if isinstance(first, bytes) and OTHER_PROTOCOL.match(first):
                self._fresh = False
                self._not_a_chat_client(None, "an SSH client")
                return
        self._take_lines(cast(list[Item], lines))  # lines only: no NotALine from telnet

    def nudge(self) -> None:
        """Ask a telnet client for a timing mark, which it answers by itself.

        So a person reading on telnet stays without typing.  Not in JSON (programs
        ping), and not to a peer known to send bare LF lines (``nc``), which would show
        the three bytes; a peer not known either way is asked, once per silence.
        """
        if self.state is not Session.OPEN or self.transport is None:
            return
        if self.format is not TEXT:
            return
        endings = self.framer.endings
        if not self.telnet.seen and endings == LineFramer.LF:
            return
        self._send(bytes((IAC, DO, TIMING_MARK)))

    def _not_a_chat_client(self, line: bytes | None, what: str = "") -> None:
        """An HTTP request (``line``) or another protocol (``what``) on the chat port.

        Answered in HTTP for a browser.  A TLS client gets one plain line: it cannot show
        it, but reading it fails its handshake at once ("wrong version number") instead of
        leaving it to wait and retry.  Either way no room hears of it.
        """
        assert self.transport is not None
        if line is None:
            reason = f"not a chat client: {what}"
            self.log.info("{what} from {peer} refused", what=what, peer=self.peer)
            speaks = "TLS" if "TLS" in what else "SSH"
            answer = f"!!! refused: this port speaks plain text, not {speaks}\r\n".encode()
        else:
            reason = "not a chat client: an HTTP request"
            self.log.info(
                "HTTP request from {peer} refused: {request}",
                peer=self.peer,
                request=clean_text(line[:80].decode("ascii", "replace")),
            )
            body = (
                b"This is a groupchat server: a chat for telnet, nc and the groupchat client, "
                b"not a web server.\r\n"
                b"Connect with: telnet HOST PORT, nc HOST PORT, "
                b"or python -m twisted_chat.client --server HOST:PORT\r\n"
            )
            head = (
                "HTTP/1.1 400 Bad Request\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            answer = head + body
        self.pending = None
        if self._seat_call is not None and self._seat_call.active():
            self._seat_call.cancel()
        self._seat_call = None
        self.why = reason
        if self.member is not None:  # seated before its request arrived: a slow client
            self._send(answer)
            self.service.drop(self.member, reason)
            return
        self._end(answer)


class ChatFactory(ServerFactory):
    """The line protocol's front door: admits a connection under the shared rules and
    builds its protocol.  The chat service it serves is ``rules.service``."""

    protocol = ChatLineProtocol
    log = Logger()
    noisy = False  # no "Starting factory <... at 0x...>" lines: the listener says it

    def logPrefix(self) -> str:
        return "groupchat"

    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    def buildProtocol(self, addr: object) -> Protocol | None:
        host, refused = self.rules.admission.admit(addr)
        if refused is not None:
            if not (refused.tell or refused.hold):
                # Nothing to say and no room to hold it: the listening port closes the
                # socket before any transport exists, the cheapest refusal there is.
                return None
            return Refusal(refused, self.rules.admission, self.rules.clock)
        self.rules.tally.opened("line")
        proto = ChatLineProtocol(self.rules)
        proto.factory = self
        proto.address = host
        return proto


class RefusingTLSFactory(TLSMemoryBIOFactory):
    """TLS that asks the chat factory first, so a refused connection costs no TLS state.

    Twisted's own wrapper builds an OpenSSL connection for every accepted socket before
    the wrapped factory is asked; under a flood of refused connections that was most of
    the server's work.  A refusal cannot be said before a handshake, so a refused
    connection is held (or closed) on plain TCP without a word.
    """

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        if isinstance(inner, Refusal):
            if not inner.hold:
                return None
            inner.tell = False
            return inner
        return self.protocol(self, inner)


class Refusal(Protocol):
    """A refused connection: says why in one line, reads nothing, and is closed after
    ``REFUSAL_HOLD`` (at once when ``hold`` is False).

    Over TLS nothing is said: saying it would first cost a handshake, the very cost a
    flood of refused connections is meant to be spared.
    """

    def __init__(self, refused: Refused, admission: Admission, clock: IReactorTime) -> None:
        self.reason = refused.reason
        self.tell = refused.tell
        self.hold = refused.hold
        self.admission = admission
        self.clock = clock
        self._call: IDelayedCall | None = None
        self._holding = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        IPushProducer(self.transport).pauseProducing()  # whatever it sends stays unread
        if ISSLTransport.providedBy(self.transport):
            self.tell = False
        if self.tell:
            self.transport.write(self.answer())
        self._hold_or_close()

    def _hold_or_close(self) -> None:
        if self.hold:
            self._holding = True
            self.admission.held += 1
            self._call = self.clock.callLater(REFUSAL_HOLD, self._close)
        else:
            self._close()

    def answer(self) -> bytes:
        """What a refused peer is told, in its door's protocol."""
        return f"!!! refused: {self.reason}\r\n".encode()

    def _close(self) -> None:
        """Close, leaving the line a moment to leave; a silent refusal is aborted."""
        self._call = None
        if self.transport is None:
            return
        if not self.tell:
            abort_transport(self.transport)
            return
        self.transport.loseConnection()
        self._call = self.clock.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._call = None
        if self.transport is not None:
            abort_transport(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._holding:
            self._holding = False
            self.admission.held -= 1
