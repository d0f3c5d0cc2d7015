"""The line protocol: an adapter between a TCP connection and the chat core.

It owns only what is about bytes and connections (telnet filtering, framing, decoding,
rendering, closing); every decision about chat is the core's, reached through the
dispatcher.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import cast

from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat.core.commands import Dispatcher, parse_format
from twisted_chat.core.errors import (
    ChatError,
    InvalidUTF8,
    LineTooLongError,
    LoginFailed,
    LoginInUse,
    LoginRefused,
    LoginRequired,
)
from twisted_chat.core.events import Bye, Event, Format, LoginNeeded, SlowDown
from twisted_chat.core.interfaces import IParticipant
from twisted_chat.core.sanitize import clean_text
from twisted_chat.core.service import ChatService, Member
from twisted_chat.doors.framing import (
    DO,
    IAC,
    TIMING_MARK,
    LineFramer,
    LineTooLong,
    TelnetError,
    TelnetFilter,
)
from twisted_chat.fastwrite import can_write_directly, write_now
from twisted_chat.rules.limits import InputGovernor, InputLimits, TokenBucket
from twisted_chat.rules.login import Authenticator, network_key

CLOSE_GRACE = 1.0
DEFAULT_SEND_QUEUE = 256 * 1024
DEFAULT_REGISTER_TIMEOUT = 30.0
MAX_TRACKED_ADDRESSES = 10_000  # connection-rate buckets kept, least recently seen dropped
# Refusals a second the server makes before it stops accepting for ACCEPT_PAUSE: each one
# costs an accept() (and on a TLS port an OpenSSL connection) before it can be refused,
# so a client reconnecting as fast as it can would otherwise take the whole core.
REFUSAL_BUDGET = 200.0
# Refusals in a row before the budget applies.  Smaller bursts pause more often, and the
# listen queue then overflows: measured, a newcomer waited 7.6 s at 20, 30-80 ms at 200.
REFUSAL_BURST = 200.0
ACCEPT_PAUSE = 0.05
HOLD_AFTER = 4  # recipients a flush must reach before later output is held (see end_batch)
REFUSAL_LOG_EVERY = 10.0  # seconds between log lines about one refused address
REFUSAL_TELL_FOR = 1.0  # after one, its refusals say why for this long, then just close
# How long a new connection may take to say what it is before it is seated as a guest:
# lines sent at once (an HTTP request, or /format, /nick and /join from a client) are
# looked at first, so nobody is shown a browser or a guest that only renames itself.
DEFAULT_SEAT_WAIT = 0.25
# The request line of HTTP (and of RTSP and SIP, which look alike), however spaced or cased.
HTTP_REQUEST = re.compile(rb"(?i)[a-z]{3,10}\s+\S+\s+(?:http|rtsp|sip)/\d(?:\.\d)?\s*")
OTHER_PROTOCOL = re.compile(rb"SSH-\d\.\d-")  # an SSH client's first line
SETUP_COMMANDS = (b"/format", b"/nick", b"/join")
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS ClientHello record: not typed by people


class Session(enum.Enum):
    """LOGIN: only /login, /format, /ping, /quit (when --auth is set).  OPEN: lines are
    acted on.  CLOSING: the server is closing; input is ignored.  CLOSED: the connection
    is gone; output is dropped."""

    LOGIN = "login"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@implementer(IPushProducer)
class OutputGate:
    """Registered with the transport so it tells us when its buffer is full.

    While paused, the protocol keeps output in its own queue, bounded by the send-queue
    limit; a member that lets it overflow is not reading and is disconnected.
    """

    __slots__ = ("paused", "protocol")

    def __init__(self, protocol: ChatLineProtocol) -> None:
        self.protocol = protocol
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.protocol.flush_queue()

    def stopProducing(self) -> None:
        self.paused = True


@implementer(IParticipant, IHandshakeListener)
class ChatLineProtocol(LineReceiver):
    log = Logger()
    delimiter = b"\n"
    # Slots: with more than 30 attributes an instance dict stops sharing its keys with
    # the class and costs about 1.5 KiB more per connection (tracemalloc, 2000 clients).
    # Twisted's own attributes (transport, factory, connected) still live in __dict__.
    __slots__ = (
        "_abort_call",
        "_attempts",
        "_awaiting_tls",
        "_checking",
        "_direct",
        "_fresh",
        "_login_call",
        "_out",
        "_reading_paused",
        "_resume_call",
        "_seat_call",
        "_send_error",
        "address",
        "authenticator",
        "batcher",
        "clock",
        "dispatcher",
        "format",
        "framer",
        "gate",
        "governor",
        "held_by",
        "limits",
        "member",
        "peer",
        "pending",
        "queue",
        "queued",
        "register_timeout",
        "seat_wait",
        "send_queue_limit",
        "service",
        "state",
        "telnet",
        "why",
    )

    def __init__(
        self,
        service: ChatService,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        max_line: int,
        send_queue: int = DEFAULT_SEND_QUEUE,
        limits: InputLimits | None = None,
        authenticator: Authenticator | None = None,
        register_timeout: float = DEFAULT_REGISTER_TIMEOUT,
        seat_wait: float = 0.0,
    ) -> None:
        self.service = service
        self.dispatcher = dispatcher
        self.clock = clock
        self.MAX_LENGTH = max_line
        self.framer = LineFramer(max_line)
        self.telnet = TelnetFilter()
        self.format = Format.TEXT
        self.state = Session.OPEN
        self.member: Member | None = None
        self.peer = "?"
        self.address: str | None = None  # counted against the factory's limits
        self._abort_call: IDelayedCall | None = None
        self.send_queue_limit = send_queue
        self.limits = limits
        self.governor = InputGovernor(limits, clock.seconds()) if limits else None
        self.held_by = ""  # which limit holds the connection back: "lines" or "bytes"
        self.register_timeout = register_timeout
        self.seat_wait = seat_wait
        self._seat_call: IDelayedCall | None = None
        self._fresh = True  # no line read yet
        self.why = ""  # the reason the server gave when it closed the connection
        # Lines read but not yet acted on, and output the transport had no room for; both
        # exist only while needed: an idle deque costs 600 bytes, times 10,000 members.
        self.pending: deque[bytes | LineTooLong] | None = None
        self._reading_paused = False
        self._resume_call: IDelayedCall | None = None
        self.authenticator = authenticator
        self._attempts = 0
        self._checking = False
        self._login_call: IDelayedCall | None = None
        self._awaiting_tls = False
        self._out: list[Event] | None = None  # output gathered, encoded when written
        self.batcher: ChatFactory | None = None  # set by the factory that built us
        self.gate = OutputGate(self)
        self.queue: deque[bytes] | None = None
        self.queued = 0
        self._direct = False  # plain TCP: broadcasts are sent without a reactor turn
        self._send_error: OSError | None = None

    # -- connection --------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        host = getattr(peer, "host", None)
        self.peer = f"{host}:{getattr(peer, 'port', '')}" if host is not None else "unix socket"
        # Every connection must be ready to chat within the deadline, whatever holds it
        # up: a TLS handshake that never ends, a login that never comes.
        self._login_call = self.clock.callLater(self.register_timeout, self._register_timeout)
        if IConsumer.providedBy(transport):
            cast(IConsumer, transport).registerProducer(self.gate, True)
        self._direct = can_write_directly(transport)
        set_nodelay = getattr(transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            with contextlib.suppress(OSError):  # not a TCP socket: nothing to tune
                set_nodelay(True)
        if ISSLTransport.providedBy(transport):
            # Seat the member only once TLS is up: a failed handshake (an untrusted
            # certificate) must not show up in #lobby as a guest joining and leaving.
            self._awaiting_tls = True
            return
        self._arrive()

    def handshakeCompleted(self) -> None:
        if self._awaiting_tls and self.state is Session.OPEN:
            self._awaiting_tls = False
            self.log.info("TLS handshake with {peer} completed", peer=self.peer)
            self._arrive()

    def _arrive(self) -> None:
        """The connection can talk: ask for a login, or seat it once it has had its say."""
        if self.authenticator is not None:
            self.state = Session.LOGIN
            self._attempts = self.authenticator.attempts
            self.log.info("connect {peer}, awaiting login", peer=self.peer)
            self.deliver(LoginNeeded(ts=self.clock.seconds(), attempts=self._attempts))
        elif self.seat_wait > 0:
            self._seat_call = self.clock.callLater(self.seat_wait, self._seat)
        else:
            self._seat()

    def _seat(self, setup: dict[bytes, str] | None = None) -> None:
        """Admit the connection as a member, with what its first lines asked for."""
        if self._seat_call is not None and self._seat_call.active():
            self._seat_call.cancel()
        self._seat_call = None
        if self.state is not Session.OPEN or self.transport is None:
            return
        self._cancel_deadline()
        setup = setup or {}
        fmt, bad_format = self.format, False
        if b"/format" in setup:
            try:
                fmt = parse_format(setup[b"/format"])
            except ChatError:
                bad_format = True
            self.set_format(fmt)
        self.member = member = self.service.connect(
            self, nick=setup.get(b"/nick"), room=setup.get(b"/join"), fmt=fmt, origin=self.peer
        )
        self.log.info("connect {peer} as {nick}", peer=self.peer, nick=member.nick)
        # What could not be granted is replayed as typed, so its error is the usual one;
        # a nickname already granted is a no-op, a room already joined is not repeated.
        if bad_format:
            self.dispatcher.dispatch(member, "/format " + setup[b"/format"])
        named = True
        if b"/nick" in setup:
            self.dispatcher.dispatch(member, "/nick " + setup[b"/nick"])
            named = self.service.nicks_match(member.nick, setup[b"/nick"])
        room = setup.get(b"/join")
        # Under a name it did not ask for, it does not go where it asked: that room would
        # see it as someone else.
        if named and room is not None and not self.service.is_member_of(member, room):
            self.dispatcher.dispatch(member, "/join " + room)

    def _setup_lines(self, lines: list[bytes | LineTooLong]) -> dict[bytes, str]:
        """Take the /format, /nick and /join lines (one each) that open the input."""
        setup: dict[bytes, str] = {}
        while lines:
            line = lines[0]
            if not isinstance(line, bytes):
                break
            command, _, rest = line.partition(b" ")
            command = command.lower()
            if command not in SETUP_COMMANDS or command in setup:
                break
            try:
                setup[command] = rest.decode("utf-8").strip()
            except UnicodeDecodeError:
                break
            lines.pop(0)
        return setup

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

    # -- login (only with --auth) ------------------------------------------------------

    def _login_line(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").strip()
        command, _, rest = text.partition(" ")
        command = command.lower()
        now = self.clock.seconds()
        if not text:
            return
        if command == "/login":
            name, _, password = rest.strip().partition(" ")
            if not name or not password:
                self._tell(LoginRequired("usage: /login NAME PASSWORD"))
                return
            self._checking = True
            d = defer.ensureDeferred(self._login(name, password))
            d.addErrback(lambda f: self.log.failure("login failed unexpectedly", f))
        elif command == "/format":
            try:
                self.set_format(parse_format(rest))
            except ChatError as e:
                self._tell(e)
                return
            self.deliver(LoginNeeded(ts=now, attempts=self._attempts))
        elif command == "/ping":
            self.deliver(self.service.pong(rest))
        elif command == "/quit":
            self.close(Bye(ts=now, reason="you quit"))
        else:
            self._tell(LoginRequired("log in first: /login NAME PASSWORD"))

    async def _login(self, name: str, password: str) -> None:
        assert self.authenticator is not None
        try:
            try:
                nick = self.service.login_nick(name)  # before the password: reveals nothing
            except ChatError as e:
                self.log.info(
                    "refused login from {peer} as {name}: {why}",
                    peer=self.peer,
                    name=clean_text(name)[:40],
                    why=e.message,
                )
                self._attempts -= 1  # it costs an attempt like any other refusal
                if self._attempts <= 0:
                    self.close(Bye(ts=self.clock.seconds(), reason="too many failed logins"))
                    return
                self._tell(LoginFailed(f"this login cannot be used as a nickname: {e.message}"))
                return
            try:
                login = await self.authenticator.check(nick, password, self.address or self.peer)
            except LoginRefused as e:
                if self.state is Session.LOGIN:
                    self._tell(e)
                    self.close(Bye(ts=self.clock.seconds(), reason="login refused"))
                return
            except LoginFailed as e:
                self._attempts -= 1
                self.log.info("failed login from {peer} as {name}", peer=self.peer, name=nick)
                if self.state is not Session.LOGIN:
                    return  # closed (its deadline passed) while it was made to wait
                if self._attempts <= 0:
                    self.close(Bye(ts=self.clock.seconds(), reason="too many failed logins"))
                else:
                    left = f"{self._attempts} attempt{'s' if self._attempts > 1 else ''} left"
                    self._tell(LoginFailed(f"{e.message} ({left})"))
                return
            if self.state is not Session.LOGIN:
                return  # the connection went away while the password was checked
            nick = login
            if self.service.nick_in_use(nick):
                self._tell(LoginInUse(f"{nick} (or a name that looks like it) is logged in"))
                return
            self._cancel_deadline()
            self.state = Session.OPEN
            self.member = self.service.connect(self, login=nick, origin=self.peer)
            self.log.info("login {peer} as {nick}", peer=self.peer, nick=nick)
        finally:
            self._checking = False
            if self.state is not Session.CLOSED:
                self._drain()

    def _cancel_deadline(self) -> None:
        if self._login_call is not None and self._login_call.active():
            self._login_call.cancel()
        self._login_call = None

    def _register_timeout(self) -> None:
        self._login_call = None
        timeout = self.register_timeout
        if self._awaiting_tls and self.transport is not None:
            # Nothing can be said over TLS before the handshake: just end it.
            self.why = f"no TLS handshake within {timeout:g} s"
            self.state = Session.CLOSING
            _abort_transport(self.transport)
        elif self.state is Session.LOGIN:
            self.close(Bye(ts=self.clock.seconds(), reason=f"no login within {timeout:g} s"))

    def _tell(self, error: ChatError) -> None:
        self.dispatcher.tell(self, error)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.state = Session.CLOSED
        for call in (self._abort_call, self._resume_call, self._login_call, self._seat_call):
            if call is not None and call.active():
                call.cancel()
        self._abort_call = self._resume_call = self._login_call = self._seat_call = None
        self.pending = None
        if self.address is not None and isinstance(self.factory, ChatFactory):
            self.factory.released(self.address)
            self.address = None
        if self._send_error is not None and reason.check(ierror.ConnectionDone):
            # A send found the socket reset first; the read then only saw its end.
            reason = Failure(ierror.ConnectionLost(str(self._send_error)))
        if self.member is not None:
            self.service.connection_lost(self.member, _describe(reason))
        elif self._awaiting_tls and not self.why:
            self.log.warn(
                "TLS handshake with {peer} failed: {reason}",
                peer=self.peer,
                reason=_describe(reason),
            )
        else:
            self.log.info(
                "disconnect {peer} before login: {reason}",
                peer=self.peer,
                reason=self.why or _describe(reason),
            )

    def dataReceived(self, data: bytes) -> None:
        if self.state not in (Session.OPEN, Session.LOGIN) or self._awaiting_tls:
            return
        if self.member is not None:
            self.service.touch(self.member)
        if self._fresh and data[:1] == TLS_HANDSHAKE and self.member is None:
            self._not_a_chat_client(None, "a TLS handshake on a plain port")
            return
        if self.governor is not None and self.governor.received(len(data), self.clock.seconds()):
            self.held_by = "bytes"  # whatever the bytes are, reading waits for the budget
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
            self._fresh = False
            first = lines[0]
            if isinstance(first, bytes) and HTTP_REQUEST.fullmatch(first):
                self._not_a_chat_client(first)
                return
            if isinstance(first, bytes) and OTHER_PROTOCOL.match(first):
                self._not_a_chat_client(None, "an SSH client")
                return
            if self._seat_call is not None:
                self._seat(self._setup_lines(lines))
        if lines:
            if self.pending is None:
                self.pending = deque(lines)
            else:
                self.pending.extend(lines)
        if lines or self.held_by:
            self._drain()

    def _abuse(self, reason: str) -> None:
        self.pending = None
        if self.member is not None:
            self.service.drop(self.member, reason)
        else:
            self.close(Bye(ts=self.clock.seconds(), reason=reason))

    def _drain(self) -> None:
        """Act on pending lines as fast as the input limits allow; pause reading if not.

        Output caused by these lines is written once per recipient when they are done:
        one ``write`` per member per input chunk instead of one per line.
        """
        batcher = self.batcher
        if batcher is None:
            self._drain_lines()
            return
        batcher.begin_batch()
        try:
            self._drain_lines()
        finally:
            batcher.end_batch()

    def _drain_lines(self) -> None:
        self._resume_call = None
        now = self.clock.seconds()
        governor = self.governor
        while self.pending and not self._checking:
            if self.state not in (Session.OPEN, Session.LOGIN):
                self.pending = None
                return
            item = self.pending[0]
            if governor is not None:
                wait = governor.admit(now, heartbeat=_is_ping(item))
                if wait > 0:
                    self.held_by = "lines"
                    self._hold(now, wait)
                    return
            self.pending.popleft()
            if self.state is Session.LOGIN:
                if isinstance(item, bytes):
                    self._login_line(item)
            elif isinstance(item, bytes):
                self.lineReceived(item)
            else:
                self.lineLengthExceeded(b"")
        if not self.pending:
            self.pending = None
        if self.state not in (Session.OPEN, Session.LOGIN):
            return
        if self._checking:
            # A login is being checked (it may be made to wait for seconds): read nothing
            # more until it is answered, or lines would pile up past every limit.
            if not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                cast(IPushProducer, self.transport).pauseProducing()
            return
        if governor is not None:
            wait = governor.reading_wait(now)
            if wait > 0:
                self.held_by = "bytes"
                self._hold(now, wait)
                return
            if not self._checking:
                governor.release(now)
        self.held_by = ""
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            cast(IPushProducer, self.transport).resumeProducing()

    def _hold(self, now: float, wait: float) -> None:
        """Stop reading for ``wait`` seconds; disconnect a connection held back too long."""
        assert self.limits is not None and self.governor is not None
        limits = self.limits
        waiting = len(self.pending) if self.pending else 0
        new_episode = self.governor.hold(now)
        held = self.governor.held_for(now)
        if waiting / limits.rate > limits.flood_timeout or held > limits.flood_timeout:
            if waiting / limits.rate > limits.flood_timeout:
                reason = (
                    f"flooding: {waiting} lines at once, over "
                    f"{limits.flood_timeout:g} s of sending at {limits.rate:g} lines/s"
                )
            elif self.held_by == "bytes":
                reason = (
                    f"flooding: held at {limits.byte_rate:g} bytes/s for {limits.flood_timeout:g} s"
                )
            else:
                reason = f"flooding: held at {limits.rate:g} lines/s for {limits.flood_timeout:g} s"
            self._abuse(reason)
            return
        if new_episode and self.held_by == "lines":
            self.deliver(SlowDown(ts=now, rate=limits.rate, waiting=waiting))
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            cast(IPushProducer, self.transport).pauseProducing()
        if self.member is not None:
            self.service.touch(self.member)  # it is sending, just too fast: alive
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        # Look again at least every second: a held connection is alive, and the heartbeat
        # rule must keep hearing so while a large debt is paid off.
        self._resume_call = self.clock.callLater(min(max(wait, 0.001), 1.0), self._drain)

    def lineReceived(self, line: bytes) -> None:
        assert self.member is not None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("utf-8", errors="replace")
            self.dispatcher.report(
                self.member,
                InvalidUTF8(
                    "that line was not valid UTF-8; the bad bytes were replaced with \ufffd"
                ),
            )
        self.dispatcher.dispatch(self.member, text)

    def lineLengthExceeded(self, line: bytes) -> None:
        assert self.member is not None
        self.dispatcher.report(
            self.member,
            LineTooLongError(f"line longer than {self.MAX_LENGTH} bytes; it was dropped"),
        )

    # -- IParticipant ------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        if self.state not in (Session.OPEN, Session.LOGIN) or self.transport is None:
            return
        out = self._out
        if out is not None:
            # Output is being gathered (an input turn, or a flush the factory delays):
            # keep order, and write once per recipient when the factory flushes.
            out.append(event)
            return
        batcher = self.batcher
        if batcher is not None and batcher.batch_depth:
            self._out = [event]
            batcher.dirty.append(self)
            return
        self._send(event.encode(self.format))

    def nudge(self) -> None:
        """Ask a telnet client for a timing mark, which it answers by itself.

        So a person reading on telnet stays without typing.  Not in JSON (programs
        ping), and not to a peer known to send bare LF lines (``nc``), which would show
        the three bytes; a peer not known either way is asked, once per silence.
        """
        if self.state is not Session.OPEN or self.transport is None:
            return
        if self.format is not Format.TEXT:
            return
        endings = self.framer.endings
        if not self.telnet.seen and endings == LineFramer.LF:
            return
        self._send(bytes((IAC, DO, TIMING_MARK)))

    def flush_out(self) -> None:
        out, self._out = self._out, None
        if out and self.state in (Session.OPEN, Session.LOGIN) and self.transport is not None:
            fmt = self.format
            if len(out) == 1:
                self._send(out[0].encode(fmt))
            else:
                self._send(b"".join([event.encode(fmt) for event in out]))

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.gate.paused and not self.queue:
            if self._direct:
                error = write_now(self.transport, data)
                if error is not None and self._send_error is None:
                    self._send_error = error
            else:
                self.transport.write(data)
            return
        if self.queue is None:
            self.queue = deque()
        self.queue.append(data)
        self.queued += len(data)
        if self.queued > self.send_queue_limit:
            self.queue = None
            self.queued = 0
            self._out = None
            self._abuse("send queue exceeded: not reading")

    def flush_queue(self) -> None:
        """The transport has room again: hand it what waited, until it is full again."""
        while self.queue and not self.gate.paused and self.transport is not None:
            data = self.queue.popleft()
            self.queued -= len(data)
            self.transport.write(data)
        if not self.queue:
            self.queue = None

    def set_format(self, fmt: Format) -> None:
        self.flush_out()  # what was said before the switch is rendered the old way
        self.format = fmt

    def close(self, final: Event | None) -> None:
        if self.state not in (Session.OPEN, Session.LOGIN) or self.transport is None:
            return
        self.flush_out()
        if final is not None and isinstance(final, Bye):
            self.why = final.reason
        self._end(final.encode(self.format) if final is not None else b"")

    def _end(self, last: bytes) -> None:
        """Write ``last``, stop reading, close, and abort if the peer stalls the close."""
        assert self.transport is not None
        if last:
            self.transport.write(last)
        self.state = Session.CLOSING
        # Read nothing more: whatever the peer still sends is ignored anyway, and a
        # flooder's megabytes would otherwise be copied in, 64 KiB a turn, until it goes.
        if not self._reading_paused:
            self._reading_paused = True
            cast(IPushProducer, self.transport).pauseProducing()
        self.transport.loseConnection()
        # loseConnection waits for the peer to take our buffer; never wait for long.
        self._abort_call = self.clock.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if self.state is Session.CLOSING and self.transport is not None:
            _abort_transport(self.transport)


def _abort_transport(transport: ITransport) -> None:
    """Close at once (an RST), where the transport can; otherwise close as usual."""
    abort = getattr(transport, "abortConnection", None) or transport.loseConnection
    abort()


def _is_ping(item: bytes | LineTooLong) -> bool:
    return (
        isinstance(item, bytes)
        and item[:5].lower() == b"/ping"
        and (len(item) == 5 or item[5:6] == b" ")
    )


def _describe(reason: Failure) -> str:
    if reason.check(ierror.ConnectionDone):
        return "connection closed"
    if reason.check(ierror.ConnectionLost):
        return "connection reset"
    if reason.check(ierror.ConnectionAborted):
        return "connection aborted"
    return str(reason.getErrorMessage())


class ChatFactory(ServerFactory):
    """Holds the shared chat service; each connection gets a protocol bound to it."""

    protocol = ChatLineProtocol
    log = Logger()
    noisy = False  # no "Starting factory <... at 0x...>" lines: the listener says it

    def logPrefix(self) -> str:
        return "groupchat"

    def __init__(
        self,
        service: ChatService,
        clock: IReactorTime,
        max_line: int = 2048,
        send_queue: int = DEFAULT_SEND_QUEUE,
        limits: InputLimits | None = None,
        flush_interval: float = 0.0,
    ) -> None:
        self.service = service
        self.dispatcher = Dispatcher(service)
        self.flush_interval = flush_interval
        self._last_flush = float("-inf")
        self._last_flush_size = 0
        self._flush_call: IDelayedCall | None = None
        self.clock = clock
        self.max_line = max_line
        self.send_queue = send_queue
        self.limits = limits
        self.authenticator: Authenticator | None = None
        self.register_timeout = DEFAULT_REGISTER_TIMEOUT
        self.seat_wait = DEFAULT_SEAT_WAIT

        self.batch_depth = 0
        self.dirty: list[ChatLineProtocol] = []
        self.max_clients: int | None = None
        self.max_per_address: int | None = None
        # New connections per second from one address (bursts of twice that): a client
        # reconnecting in a loop costs an accept and a refusal, not a session each time.
        self.connect_rate: float | None = None
        self._arrivals: OrderedDict[str, TokenBucket] = OrderedDict()
        self._refusal_log: OrderedDict[str, list[float]] = OrderedDict()
        # The listening port, set once listening, so a flood of refusals can pause it.
        self.listening_port: object | None = None
        self._refusals: TokenBucket | None = None
        self._accept_resume: IDelayedCall | None = None
        self._pauses = 0
        self.total = 0
        self.per_address: Counter[str] = Counter()

    def buildProtocol(self, addr: object) -> Protocol | None:
        # An IPv6 host usually holds a whole /64: counted as one address, not 2**64.
        host = network_key(str(getattr(addr, "host", "local")))
        refusal = self._refusal(host)
        if refusal is not None:
            self._count_refusal()
            if not self._log_refusal(host, refusal):
                # Told why a moment ago and back already: the listening port closes the
                # socket before any transport exists, the cheapest refusal there is.
                return None
            return Refusal(refusal, self.clock)
        proto = ChatLineProtocol(
            self.service,
            self.dispatcher,
            self.clock,
            self.max_line,
            self.send_queue,
            self.limits,
            self.authenticator,
            self.register_timeout,
            self.seat_wait,
        )
        proto.factory = self
        proto.batcher = self
        proto.address = host
        self.total += 1
        self.per_address[host] += 1
        return proto

    def begin_batch(self) -> None:
        self.batch_depth += 1
        self.service.begin_batch()

    def end_batch(self) -> None:
        """Flush what was gathered, unless the last flush was under ``flush_interval`` ago.

        Under a steady stream of input (one line per read), writing at once costs one
        ``send()`` per member per line; holding output for at most ``flush_interval``
        turns that into one per member per interval.  A line after a quiet spell still
        goes out at once.
        """
        self.service.end_batch()
        if self.batch_depth > 1:
            self.batch_depth -= 1
            return
        try:
            if self._flush_call is not None:
                return  # a flush is already due; what was gathered waits for it
            wait = self._last_flush + self.flush_interval - self.clock.seconds()
            # Hold only after a flush that reached several members: a stream of single
            # answers (pongs, errors, one connection's own traffic) is not the sustained
            # broadcast the hold coalesces, and must not delay everyone else's lines.
            if wait > 0 and self.dirty and self._last_flush_size >= HOLD_AFTER:
                self._flush_call = self.clock.callLater(wait, self._timed_flush)
                return
            self.flush()
        finally:
            self.batch_depth = 0

    def _timed_flush(self) -> None:
        self._flush_call = None
        try:
            self.flush()
        except Exception:
            self.log.failure("delayed flush failed")

    def flush(self) -> None:
        """Write out everything gathered; output caused while flushing joins in."""
        if not self.dirty:
            return
        self._last_flush = self.clock.seconds()
        self.batch_depth += 1
        written = 0
        try:
            while self.dirty:
                dirty, self.dirty = self.dirty, []
                written += len(dirty)
                for protocol in dirty:
                    protocol.flush_out()
        finally:
            self.batch_depth -= 1
            self._last_flush_size = written

    def _refusal(self, host: str) -> str | None:
        if self.max_clients is not None and self.total >= self.max_clients:
            return f"the server is full ({self.max_clients} connections); try again later"
        if self.max_per_address is not None and self.per_address[host] >= self.max_per_address:
            return f"too many connections from your address (at most {self.max_per_address})"
        if self.connect_rate is not None:
            now = self.clock.seconds()
            bucket = self._arrivals.get(host)
            if bucket is None:
                bucket = self._arrivals[host] = TokenBucket(
                    self.connect_rate, 2 * self.connect_rate, now
                )
                if len(self._arrivals) > MAX_TRACKED_ADDRESSES:
                    self._arrivals.popitem(last=False)  # the longest unseen: full again
            else:
                self._arrivals.move_to_end(host)
            if bucket.wait(now) > 0:
                return (
                    "too many new connections from your address "
                    f"(at most {self.connect_rate:g} a second); wait a moment"
                )
            bucket.take(now)
        return None

    def _count_refusal(self) -> None:
        """Over ``REFUSAL_BUDGET`` refusals a second (bursts of ``REFUSAL_BURST``), stop
        accepting for ``ACCEPT_PAUSE``.

        Members keep their latency; newcomers wait a few milliseconds in the kernel's
        listen queue.
        """
        now = self.clock.seconds()
        if self._refusals is None:
            self._refusals = TokenBucket(REFUSAL_BUDGET, REFUSAL_BURST, now)
        self._refusals.take(now)
        if self._refusals.tokens >= 0 or self._accept_resume is not None:
            return
        port = self.listening_port
        stop = getattr(port, "stopReading", None)
        start = getattr(port, "startReading", None)
        if stop is None or start is None:
            return
        stop()
        self._pauses += 1
        if self._pauses == 1 or self._pauses % 100 == 0:
            self.log.warn(
                "refusing over {budget:g} connections a second: not accepting for "
                "{pause:g} s at a time ({pauses} pauses so far)",
                budget=REFUSAL_BUDGET,
                pause=ACCEPT_PAUSE,
                pauses=self._pauses,
            )
        self._accept_resume = self.clock.callLater(ACCEPT_PAUSE, self._resume_accepting, start)

    def stop_pausing(self) -> None:
        """The port is closing: no pause may outlive it."""
        self.listening_port = None
        if self._accept_resume is not None and self._accept_resume.active():
            self._accept_resume.cancel()
        self._accept_resume = None

    def _resume_accepting(self, start: Callable[[], None]) -> None:
        self._accept_resume = None
        try:
            start()
        except Exception:
            self.log.failure("resuming accepting failed")

    def _log_refusal(self, host: str, reason: str) -> bool:
        """One line per address per ``REFUSAL_LOG_EVERY`` seconds, with a count of the rest.

        An address refused thousands of times a second must not fill the disk.  True
        when the refused peer should be told why: the first time in a while.
        """
        now = self.clock.seconds()
        entry = self._refusal_log.get(host)
        if entry is not None and now < entry[0]:
            entry[1] += 1
            return now - (entry[0] - REFUSAL_LOG_EVERY) < REFUSAL_TELL_FOR
        self._refusal_log[host] = [now + REFUSAL_LOG_EVERY, 0]
        self._refusal_log.move_to_end(host)
        if len(self._refusal_log) > MAX_TRACKED_ADDRESSES:
            self._refusal_log.popitem(last=False)
        more = entry[1] if entry is not None else 0
        self.log.warn(
            "refused {host}: {reason}{more}",
            host=host,
            reason=reason,
            more=f" ({more} more refused since the last line)" if more else "",
        )
        return True

    def released(self, host: str) -> None:
        self.total -= 1
        self.per_address[host] -= 1
        if self.per_address[host] <= 0:
            del self.per_address[host]


class RefusingTLSFactory(TLSMemoryBIOFactory):
    """TLS that asks the chat factory first, so a refused connection costs no TLS state.

    Twisted's own wrapper builds an OpenSSL connection for every accepted socket before
    the wrapped factory is asked; under a flood of refused connections that was most of
    the server's work.  A refusal cannot be said before a handshake anyway, so every
    refused connection is closed unanswered.
    """

    def buildProtocol(self, addr: IAddress | None) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None or isinstance(inner, Refusal):
            return None
        return self.protocol(self, inner)


class Refusal(Protocol):
    """Says in one line why the connection is refused, then closes it.

    Over TLS the line waits for a handshake the peer may never start: the connection is
    aborted after a short grace whatever happens.
    """

    def __init__(self, reason: str, clock: IReactorTime) -> None:
        self.reason = reason
        self.clock = clock
        self._abort_call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        if ISSLTransport.providedBy(self.transport):
            # Saying why would first cost a TLS handshake: the cost a flood of refused
            # connections is meant to be spared.
            self._abort()
            return
        self.transport.write(f"!!! refused: {self.reason}\r\n".encode())
        self.transport.loseConnection()
        self._abort_call = self.clock.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if self.transport is not None:
            _abort_transport(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
