"""One connection's life under the rules every front door shares.

A front door is a Twisted protocol that inherits ``Connection`` and does only what is
about its own bytes: it turns what it reads into lines, hands them to ``_take_lines``
(after charging the bytes with ``_charge``), and lets ``Connection`` do the rest:
the registration deadline, the login phase, seating, input limits and holding back,
dispatching, output gathering and back-pressure, the send-queue bound and the close.
"""

from __future__ import annotations

import contextlib
import enum
from collections import deque
from typing import cast

from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat.core.busylog import BusyLog
from twisted_chat.core.commands import Dispatcher, parse_format
from twisted_chat.core.errors import (
    ChatError,
    InvalidUTF8,
    LineTooLongError,
    LoginFailed,
    LoginRefused,
)
from twisted_chat.core.events import Bye, Event, LoginNeeded, SlowDown
from twisted_chat.core.interfaces import IChatService, ILoginSession
from twisted_chat.core.local import LocalDelivery
from twisted_chat.core.sanitize import clean_text
from twisted_chat.core.service import Member
from twisted_chat.core.tally import Tally
from twisted_chat.fastwrite import can_write_directly, write_now
from twisted_chat.render import TEXT, Renderer, renderer_for
from twisted_chat.rules.admission import Admission
from twisted_chat.rules.limits import InputGovernor, InputLimits, Item, NotALine
from twisted_chat.rules.login import Authenticator
from twisted_chat.rules.output import Batcher, OutputGate

CLOSE_GRACE = 1.0
DEFAULT_SEND_QUEUE = 256 * 1024
DEFAULT_REGISTER_TIMEOUT = 30.0
# How long a new connection may take to say what it is before it is seated as a guest:
# lines sent at once (an HTTP request, or /format, /nick and /join from a client) are
# looked at first, so nobody is shown a browser or a guest that only renames itself.
DEFAULT_SEAT_WAIT = 0.25
SETUP_COMMANDS = (b"/format", b"/nick", b"/join")


class Rules:
    """What the connections of one server share, whichever front door they came through.

    Settings are read when used, not copied into each connection: a connection costs
    one reference to them.
    """

    def __init__(
        self,
        service: IChatService,
        clock: IReactorTime,
        max_line: int = 2048,
        send_queue: int = DEFAULT_SEND_QUEUE,
        limits: InputLimits | None = None,
        flush_interval: float = 0.0,
    ) -> None:
        self.service = service
        self.clock = clock
        self.dispatcher: Dispatcher = service.dispatcher
        self.tally: Tally = service.tally  # counted here as well as in the core
        self.admission = Admission(clock)
        self.batcher = Batcher(service, clock, flush_interval)
        self.batcher.tally = self.tally
        # Room broadcasts to members on plain TCP are gathered for the whole room.
        delivery = getattr(service, "delivery", None)
        if isinstance(delivery, LocalDelivery):
            delivery.gather = self.batcher.gather
        self.max_line = max_line
        self.send_queue = send_queue
        self.limits = limits
        self.authenticator: Authenticator | None = None
        self.register_timeout = DEFAULT_REGISTER_TIMEOUT
        self.connects = BusyLog(Connection.log, clock, "connects")
        self.seat_wait = DEFAULT_SEAT_WAIT
        # TCP_NODELAY on each connection: a write leaves at once, not after the peer
        # acknowledged the one before (--nagle turns it off).
        self.nodelay = True


class Session(enum.Enum):
    """LOGIN: only /login, /format, /ping, /quit (when --auth is set).  OPEN: lines are
    acted on.  CLOSING: the server is closing; input is ignored.  CLOSED: the connection
    is gone; output is dropped."""

    LOGIN = "login"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@implementer(ILoginSession)
class Connection:
    """The shared part of every front door's protocol (an ``IParticipant``).

    Inherit it before the Twisted protocol class; the subclass provides ``transport``
    (a push-producing, consuming transport) and calls ``_opened`` from
    ``connectionMade``, ``_charge`` and ``_take_lines`` from ``dataReceived`` and
    ``_lost`` from ``connectionLost``.
    """

    log = Logger()
    OPEN = Session.OPEN  # for the batcher's quick test
    transport: ITransport | None
    # Slots: with more than 30 attributes an instance dict stops sharing its keys with
    # the class and costs about 1.5 KiB more per connection (tracemalloc, 2000 clients).
    # Twisted's own attributes (transport, factory, connected) still live in __dict__.
    __slots__ = (
        "_abort_call",
        "_attempts",
        "_awaiting_tls",
        "_direct",
        "_fresh",
        "_login_call",
        "_out",
        "_reading_paused",
        "_resume_call",
        "_seat_call",
        "_send_error",
        "_setup",
        "_waiting",
        "address",
        "batcher",
        "clock",
        "format",
        "gate",
        "governor",
        "held_by",
        "member",
        "peer",
        "pending",
        "queue",
        "queued",
        "rules",
        "service",
        "state",
        "why",
    )

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.service = rules.service
        self.clock = rules.clock
        self.batcher: Batcher | None = rules.batcher
        self.format: Renderer = TEXT
        self.state = Session.OPEN
        self.member: Member | None = None
        self.peer = "?"
        self.address: str | None = None  # counted by rules.admission until the end
        self._abort_call: IDelayedCall | None = None
        self.governor = InputGovernor(rules.limits, self.clock.seconds()) if rules.limits else None
        self.held_by = ""  # which limit holds the connection back: "lines" or "bytes"
        self._seat_call: IDelayedCall | None = None
        self._setup: dict[bytes, str] | None = None  # setup lines gathered before seating
        self._fresh = True  # no line read yet
        self.why = ""  # the reason the server gave when it closed the connection
        # Lines read but not yet acted on, and output the transport had no room for; both
        # exist only while needed: an idle deque costs 600 bytes, times 10,000 members.
        self.pending: deque[Item] | None = None
        self._reading_paused = False
        self._resume_call: IDelayedCall | None = None
        self._attempts = 0
        self._waiting = False  # a command is being answered: act on nothing more
        self._login_call: IDelayedCall | None = None
        self._awaiting_tls = False
        self._out: list[Event] | None = None  # output gathered, encoded when written
        self.gate = OutputGate(self)
        self.queue: deque[bytes] | None = None
        self.queued = 0
        self._direct = False  # plain TCP: broadcasts are sent without a reactor turn
        self._send_error: OSError | None = None

    # -- the connection's life ---------------------------------------------------------

    def _opened(self) -> None:
        """The transport is up: start the deadline and flow control, then arrive."""
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        host = getattr(peer, "host", None)
        self.peer = f"{host}:{getattr(peer, 'port', '')}" if host is not None else "unix socket"
        # Every connection must be ready to chat within the deadline, whatever holds it
        # up: a TLS handshake that never ends, a login that never comes.
        timeout = self.rules.register_timeout
        self._login_call = self.clock.callLater(timeout, self._register_timeout)
        if IConsumer.providedBy(transport):
            cast(IConsumer, transport).registerProducer(self.gate, True)
        self._direct = can_write_directly(transport)
        set_nodelay = getattr(transport, "setTcpNoDelay", None)
        if set_nodelay is not None and self.rules.nodelay:
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
        rules = self.rules
        if rules.authenticator is not None:
            self.state = Session.LOGIN
            self._attempts = rules.authenticator.attempts
            self.rules.connects.info("connect {peer}, awaiting login", self.log, peer=self.peer)
            self.deliver(LoginNeeded(ts=self.clock.seconds(), attempts=self._attempts))
        elif rules.seat_wait > 0:
            self._seat_call = self.clock.callLater(rules.seat_wait, self._seat)
        else:
            self._seat()

    def _seat(self, setup: dict[bytes, str] | None = None) -> None:
        """Admit the connection as a member, with what its first lines asked for."""
        if self._seat_call is not None and self._seat_call.active():
            self._seat_call.cancel()
        self._seat_call = None
        if setup is None:  # the wait ended: what setup lines came meanwhile
            setup = self._setup or {}
        self._setup = None
        if self.state is not Session.OPEN or self.transport is None:
            return
        self._cancel_deadline()
        bad_format = False
        if b"/format" in setup:
            try:
                self.set_format(parse_format(setup[b"/format"]))
            except ChatError:
                bad_format = True
        self.member = member = self.service.connect(
            self,
            nick=setup.get(b"/nick"),
            room=setup.get(b"/join"),
            fmt=self.format.name,
            origin=self.peer,
            address=self.address or "",
        )
        self.rules.connects.info(
            "connect {peer} as {nick}", self.log, peer=self.peer, nick=member.nick
        )
        # What could not be granted is replayed as typed, so its error is the usual one;
        # a nickname already granted is a no-op, a room already joined is not repeated.
        dispatcher = self.rules.dispatcher
        if bad_format:
            dispatcher.dispatch(member, "/format " + setup[b"/format"])
        named = True
        asked = setup.get(b"/nick")
        # Granted as asked: replaying it would be a no-op that validates it all again.
        if asked is not None and (asked != member.nick or member.logged_in):
            dispatcher.dispatch(member, "/nick " + asked)
            named = self.service.nicks_match(member.nick, asked)
        room = setup.get(b"/join")
        # Under a name it did not ask for, it does not go where it asked: that room would
        # see it as someone else.
        if named and room is not None and not self.service.is_member_of(member, room):
            dispatcher.dispatch(member, "/join " + room)

    def _set_up(self, lines: list[Item]) -> bool:
        """``_setting_up`` inside a batch: the welcome, the join and what the room shows
        a newcomer go out in one write (three or more otherwise, in a burst of arrivals
        the largest share of each one's cost)."""
        batcher = self.batcher
        if batcher is None:
            return self._setting_up(lines)
        batcher.begin_batch()
        try:
            return self._setting_up(lines)
        finally:
            batcher.end_batch()

    def _setting_up(self, lines: list[Item]) -> bool:
        """Before seating: take the setup lines from ``lines``; True once it is seated.

        Setup lines may come in several reads (a browser sends each as its own message):
        they are gathered until a ``/join`` (the last a client sends), all three, any other
        line, or the end of the wait, whichever comes first.
        """
        setup = self._setup if self._setup is not None else {}
        self._setup = None
        self._setup_lines(lines, setup)
        if lines or b"/join" in setup or len(setup) == len(SETUP_COMMANDS):
            self._seat(setup)
            return True
        self._setup = setup
        return False

    def _setup_lines(self, lines: list[Item], setup: dict[bytes, str]) -> None:
        """Move the /format, /nick and /join lines (one each) that open ``lines`` into
        ``setup``."""
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

    def _cancel_deadline(self) -> None:
        if self._login_call is not None and self._login_call.active():
            self._login_call.cancel()
        self._login_call = None

    def _register_timeout(self) -> None:
        self._login_call = None
        timeout = self.rules.register_timeout
        if self._awaiting_tls and self.transport is not None:
            # Nothing can be said over TLS before the handshake: just end it.
            self.why = f"no TLS handshake within {timeout:g} s"
            self.state = Session.CLOSING
            abort_transport(self.transport)
        elif self.state is Session.LOGIN:
            self.rules.tally.disconnect("login")
            self.close(Bye(ts=self.clock.seconds(), reason=f"no login within {timeout:g} s"))

    def _lost(self, reason: Failure) -> None:
        """The transport is gone: stop every timer, give back the slot, tell the core."""
        if self.state in (Session.OPEN, Session.LOGIN):  # not closed by us: by the client
            self.rules.tally.disconnect("lost")
        self.state = Session.CLOSED
        for call in (self._abort_call, self._resume_call, self._login_call, self._seat_call):
            if call is not None and call.active():
                call.cancel()
        self._abort_call = self._resume_call = self._login_call = self._seat_call = None
        self.pending = None
        if self.address is not None:
            self.rules.admission.released(self.address)
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

    # -- login (only with --auth) ------------------------------------------------------

    def login(self, name: str, password: str) -> defer.Deferred[None]:
        """``ILoginSession.login``: the dispatcher waits for it, and so does reading."""
        return defer.ensureDeferred(self._login(name, password))

    def prompt(self) -> None:
        self.deliver(LoginNeeded(ts=self.clock.seconds(), attempts=self._attempts))

    async def _login(self, name: str, password: str) -> None:
        """Check a login; a refusal the connection survives fails with its ``ChatError``,
        which the dispatcher tells."""
        authenticator = self.rules.authenticator
        assert authenticator is not None
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
            self.rules.tally.login_failures += 1
            if self._attempts <= 0:
                self.rules.tally.disconnect("login")
                self.close(Bye(ts=self.clock.seconds(), reason="too many failed logins"))
                return
            raise LoginFailed(f"this login cannot be used as a nickname: {e.message}") from None
        try:
            login = await authenticator.check(nick, password, self.address or self.peer)
        except LoginRefused as e:
            if self.state is Session.LOGIN:
                self._tell(e)  # before the close, which ends all output
                self.rules.tally.disconnect("login")
                self.close(Bye(ts=self.clock.seconds(), reason="login refused"))
            return
        except LoginFailed as e:
            self._attempts -= 1
            self.rules.tally.login_failures += 1
            self.log.info("failed login from {peer} as {name}", peer=self.peer, name=nick)
            if self.state is not Session.LOGIN:
                return  # closed (its deadline passed) while it was made to wait
            if self._attempts <= 0:
                self.rules.tally.disconnect("login")
                self.close(Bye(ts=self.clock.seconds(), reason="too many failed logins"))
                return
            left = f"{self._attempts} attempt{'s' if self._attempts > 1 else ''} left"
            raise LoginFailed(f"{e.message} ({left})") from None
        if self.state is not Session.LOGIN:
            return  # the connection went away while the password was checked
        mid = await self.service.claim_login(login)  # over the network too: may wait
        if self.state is not Session.LOGIN:
            self.service.release_login(login, mid)
            return
        self._cancel_deadline()
        self.state = Session.OPEN
        self.member = self.service.connect(
            self, login=login, origin=self.peer, mid=mid, address=self.address or ""
        )
        self.log.info("login {peer} as {nick}", peer=self.peer, nick=login)

    def _tell(self, error: ChatError) -> None:
        self.rules.dispatcher.tell(self, error)

    # -- input -------------------------------------------------------------------------

    def _charge(self, nbytes: int) -> bool:
        """Count ``nbytes`` just read against the limits; False: ignore them (closing)."""
        self.rules.tally.bytes_in += nbytes
        if self.state not in (Session.OPEN, Session.LOGIN) or self._awaiting_tls:
            return False
        if self.member is not None:
            self.service.touch(self.member)
        if self.governor is not None and self.governor.received(nbytes, self.clock.seconds()):
            self.held_by = "bytes"  # whatever the bytes are, reading waits for the budget
        return True

    def _take_lines(self, lines: list[Item]) -> None:
        """Lines the front door framed (maybe none): act on them as the limits allow."""
        if lines:
            self._fresh = False
            if self._seat_call is not None and not self._set_up(lines):
                return  # only setup lines so far: more may follow within the wait
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
        while self.pending and not self._waiting:
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
            if isinstance(item, bytes):
                result = self._line(item)
                if result is not None and not result.called:
                    # A command answered later (a login check, a claim elsewhere): read
                    # nothing more and act on nothing more until it is done.
                    self._waiting = True
                    result.addBoth(self._answered)
            elif isinstance(item, NotALine):
                item.act()
            elif self.state is not Session.LOGIN:
                self._too_long()
        if not self.pending:
            self.pending = None
        if self.state not in (Session.OPEN, Session.LOGIN):
            return
        if self._waiting:
            # A command is being answered (a login may be made to wait for seconds): read
            # nothing more until it is, or lines would pile up past every limit.
            self._pause_reading()
            return
        if governor is not None:
            wait = governor.reading_wait(now)
            if wait > 0:
                self.held_by = "bytes"
                self._hold(now, wait)
                return
            governor.release(now)
        self.held_by = ""
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            cast(IPushProducer, self.transport).resumeProducing()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            cast(IPushProducer, self.transport).pauseProducing()

    def _hold(self, now: float, wait: float) -> None:
        """Stop reading for ``wait`` seconds; disconnect a connection held back too long."""
        limits = self.rules.limits
        assert limits is not None and self.governor is not None
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
            self.rules.tally.disconnect("flood")
            self._abuse(reason)
            return
        if new_episode and self.held_by == "lines":
            self.deliver(SlowDown(ts=now, rate=limits.rate, waiting=waiting))
        self._pause_reading()
        if self.member is not None:
            self.service.touch(self.member)  # it is sending, just too fast: alive
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        # Look again at least every second: a held connection is alive, and the heartbeat
        # rule must keep hearing so while a large debt is paid off.
        self._resume_call = self.clock.callLater(min(max(wait, 0.001), 1.0), self._drain)

    def _line(self, line: bytes) -> defer.Deferred[None] | None:
        dispatcher = self.rules.dispatcher
        if self.state is Session.LOGIN:
            return dispatcher.dispatch_login(self, line.decode("utf-8", errors="replace"))
        assert self.member is not None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("utf-8", errors="replace")
            dispatcher.report(
                self.member,
                InvalidUTF8(
                    "that line was not valid UTF-8; the bad bytes were replaced with \ufffd"
                ),
            )
        return dispatcher.dispatch(self.member, text)

    def _answered(self, result: object) -> None:
        """The command the connection waited for is done: go on with its lines."""
        self._waiting = False
        if self.state is not Session.CLOSED:
            self._drain()

    def _too_long(self) -> None:
        assert self.member is not None
        self.rules.dispatcher.report(
            self.member,
            LineTooLongError(f"line longer than {self.rules.max_line} bytes; it was dropped"),
        )

    # -- IParticipant ------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        if self.state not in (Session.OPEN, Session.LOGIN) or self.transport is None:
            return
        out = self._out
        if out is not None:
            # Output is being gathered (an input turn, or a flush the batcher delays):
            # keep order, and write once per recipient when the batcher flushes.
            out.append(event)
            return
        batcher = self.batcher
        if batcher is not None and (batcher.batch_depth or batcher.casts):
            # (A room broadcast waiting to be written may include this member.)
            self._out = [event]
            batcher.dirty.append(self)
            return
        self._send(self.format.encode(event))

    def nudge(self) -> None:
        """Nothing to ask for by default; a front door whose peer can answer by itself
        (a telnet timing mark, a WebSocket ping) overrides this."""

    def flush_out(self) -> None:
        batcher = self.batcher
        if batcher is not None and batcher.casts and not batcher.flushing:
            batcher.flush()  # room broadcasts gathered before this output go first
            return
        out, self._out = self._out, None
        if out and self.state in (Session.OPEN, Session.LOGIN) and self.transport is not None:
            renderer = self.format
            if len(out) == 1:
                self._send(renderer.encode(out[0]))
            else:
                self._send(b"".join([renderer.encode(event) for event in out]))

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.rules.tally.bytes_out += len(data)
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
        if self.queued > self.rules.send_queue:
            self.queue = None
            self.queued = 0
            self._out = None
            self.rules.tally.disconnect("not_reading")
            self._abuse("send queue exceeded: not reading")

    def flush_queue(self) -> None:
        """The transport has room again: hand it what waited, until it is full again."""
        while self.queue and not self.gate.paused and self.transport is not None:
            data = self.queue.popleft()
            self.queued -= len(data)
            self.transport.write(data)
        if not self.queue:
            self.queue = None

    def set_format(self, name: str) -> None:
        renderer = renderer_for(name)  # raises UnsupportedFormat before anything changes
        self.flush_out()  # what was said before the switch is rendered the old way
        self.format = renderer

    def close(self, final: Event | None) -> None:
        if self.state not in (Session.OPEN, Session.LOGIN) or self.transport is None:
            return
        self.flush_out()
        if final is not None and isinstance(final, Bye):
            self.why = final.reason
        self._end(self.format.encode(final) if final is not None else b"")

    def _end(self, last: bytes) -> None:
        """Write ``last``, stop reading, close, and abort if the peer stalls the close."""
        assert self.transport is not None
        if last:
            self.rules.tally.bytes_out += len(last)
            self.transport.write(last)
        self.state = Session.CLOSING
        # Read nothing more: whatever the peer still sends is ignored anyway, and a
        # flooder's megabytes would otherwise be copied in, 64 KiB a turn, until it goes.
        self._pause_reading()
        self.transport.loseConnection()
        # loseConnection waits for the peer to take our buffer; never wait for long.
        self._abort_call = self.clock.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if self.state is Session.CLOSING and self.transport is not None:
            abort_transport(self.transport)


def abort_transport(transport: ITransport) -> None:
    """Close at once (an RST), where the transport can; otherwise close as usual."""
    abort = getattr(transport, "abortConnection", None) or transport.loseConnection
    abort()


def _is_ping(item: Item) -> bool:
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
