"""Client-side chat logic: the JSON line protocol, heartbeats and what survives reconnects.

Nothing here touches a terminal or the real reactor: the user interface receives events
and status lines through callbacks, and time comes from an injected clock, so the whole
reconnect-and-restore behaviour is tested with ``StringTransport`` and ``task.Clock``.

After each welcome the client restores the session (nickname, rooms, current room) and
holds the user's lines until the server has answered every restoring command: a ``/ping``
sent after them is the barrier (the server answers a connection's lines in order).  So a
line never goes out under a name or in a room the server has not confirmed yet.  In
*strict* mode (scripts), a nickname or room the server refuses ends the session: nothing
is sent under another name, the client quits cleanly and says why.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from twisted_chat.client.diagnose import ended_before_welcome, why_lost
from twisted_chat.core.names import skeleton
from twisted_chat.core.sanitize import clean_text
from twisted_chat.rules.limits import TokenBucket

Event = dict[str, Any]
WELCOME_WAIT = 10.0
HEARTBEAT_PREFIX = "hb-"
RESTORED_TOKEN = HEARTBEAT_PREFIX + "restored"  # the barrier after the restoring commands
OUTBOX_LINES = 1000  # lines waiting to be sent (typed offline, or read ahead from a pipe)
OUTBOX_BYTES = 4 << 20


class SessionFailed(Exception):
    """The session cannot go on; the message says why."""


class Outbox:
    """The user's lines not yet sent, in order; bounded in lines and in bytes."""

    def __init__(self, max_lines: int = OUTBOX_LINES, max_bytes: int = OUTBOX_BYTES) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._lines: deque[str] = deque()
        self.size = 0  # bytes, UTF-8

    def __len__(self) -> int:
        return len(self._lines)

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)

    @property
    def full(self) -> bool:
        return len(self._lines) >= self.max_lines or self.size >= self.max_bytes

    @property
    def low(self) -> bool:
        """Down to half the bound: a paused reader may go on."""
        return len(self._lines) <= self.max_lines // 2 and self.size <= self.max_bytes // 2

    def append(self, line: str) -> None:
        self._lines.append(line)
        self.size += len(line.encode("utf-8"))

    def peek(self) -> str:
        return self._lines[0]

    def popleft(self) -> str:
        line = self._lines.popleft()
        self.size -= len(line.encode("utf-8"))
        return line

    def clear(self) -> None:
        self._lines.clear()
        self.size = 0


class ClientSession:
    """Who we want to be and where, plus lines not yet sent; outlives each connection.

    The wanted nickname and rooms follow what the server confirms (our own ``nick``,
    ``join``, ``part`` and ``current`` events), so after a reconnect the client asks for
    exactly the state the user last had.
    """

    def __init__(
        self,
        clock: IReactorTime,
        on_event: Callable[[Event], None],
        on_status: Callable[[str], None],
        nick: str | None = None,
        room: str | None = None,
        strict: bool = False,
    ) -> None:
        self.clock = clock
        self.on_event = on_event
        self.on_status = on_status
        self.nick: str | None = None  # as the server last confirmed it
        self.wanted_nick = nick
        self.rooms: list[str] = []
        self.current: str | None = None
        self.wanted_room = room
        # Strict: speak only as the wanted nickname, in the wanted room; if the server
        # refuses either, send nothing, quit and fail (scripts). Otherwise say so and go on.
        self.strict = strict
        self.outbox = Outbox()
        self.protocol: ChatClientProtocol | None = None
        self.quitting = False
        self.ever_connected = False
        self.heartbeat_interval = 10.0
        self.heartbeat_timeout = 30.0
        self.limits: dict[str, float] | None = None
        self.max_line: int | None = None  # bytes, as the welcome announced
        self.errors = 0  # our lines refused: error events in answer, or too long to send
        self.sent_lines = 0  # the user's lines handed to a connection
        self.last_error: str | None = None  # why the last connection ended before a welcome
        self.alternative_server: str | None = None  # for hints: the TLS/plain counterpart
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._ready_waiters: list[defer.Deferred[None]] = []
        self.password: str | None = None
        self.fatal: str | None = None  # a reason to stop trying (a refused login)
        self.on_fatal: list[Callable[[str], None]] = []
        self.on_sent: list[Callable[[str], None]] = []  # each user line as it goes out
        self.on_outbox_low: list[Callable[[], None]] = []  # room again in the outbox
        self.on_lost_early: list[Callable[[str], None]] = []  # a connection ended unwelcomed

    def fail(self, message: str) -> None:
        """Give up: reconnecting cannot help (wrong password, login needed)."""
        if self.fatal is not None:
            return
        self.fatal = message
        self.outbox.clear()
        self.on_status(message)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(SessionFailed(message))
        for hook in self.on_fatal:
            hook(message)

    def when_ready(self) -> defer.Deferred[None]:
        """Fires once a connection is greeted and restored (at once if one is now)."""
        if self.fatal is not None:
            return defer.fail(SessionFailed(self.fatal))
        if self.restored:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def _now_ready(self) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    def lost_early(self, why: str) -> None:
        """A connection ended before its welcome, for a reason worth retrying."""
        self.last_error = why
        for hook in self.on_lost_early:
            hook(why)

    # -- sending -----------------------------------------------------------------------

    def send(self, line: str, *, force: bool = False) -> bool:
        """Send now if connected and restored, otherwise when the next connection is.

        Returns False for a line the client will not send (it said why). ``force`` takes
        a line even when the outbox is full: the caller stops reading instead (a pipe).
        """
        line = line.replace("\r", "").replace("\n", " ")
        if self.fatal is not None:
            return False
        if line.split(" ", 1)[0].lower() == "/format":
            self.on_status("this client always uses the JSON rendering; /format is for telnet")
            return False
        if self.too_long(line):
            return False
        if self.outbox.full and not force:
            self.on_status(
                f"not connected, and {len(self.outbox)} lines are already waiting: "
                "this one was not kept"
            )
            return False
        self.outbox.append(line)
        if self.protocol is not None:
            self.protocol.pump()
        return True

    def too_long(self, line: str) -> bool:
        """Refuse (and say so) a line over the server's announced limit."""
        size = len(line.encode("utf-8"))
        if self.max_line is None or size <= self.max_line:
            return False
        self.refused_locally(
            f"not sent: that line is {size} bytes, longer than the server's limit "
            f"of {self.max_line}"
        )
        return True

    def refused_locally(self, message: str) -> None:
        self.errors += 1
        self.on_status(message)

    @property
    def connected(self) -> bool:
        """Greeted by the server (possibly still restoring the session)."""
        return self.protocol is not None and self.protocol.ready.called

    @property
    def restored(self) -> bool:
        """Greeted and restored: the user's lines go out."""
        return self.protocol is not None and self.protocol.restored

    def quit(self, reason: str = "") -> None:
        """Leave after the lines waiting; leave at once if the session is still restoring."""
        self.quitting = True
        line = f"/quit {reason}".rstrip()
        if self.max_line is not None and len(line.encode("utf-8")) > self.max_line:
            line = "/quit"
        protocol = self.protocol
        if protocol is not None and protocol.ready.called and not protocol.restored:
            # Greeted, but the nickname or room is not confirmed yet: the lines held for
            # that are not sent (we are leaving); the quit goes after the restoring.
            self.outbox.clear()
            protocol.send_control(line)
            return
        self.send(line, force=True)

    @property
    def pending(self) -> int:
        return len(self.outbox)

    # -- server state ------------------------------------------------------------------

    def _same(self, a: str | None, b: str | None) -> bool:
        return a is not None and b is not None and skeleton(a) == skeleton(b)

    def track(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "welcome":
            self.heartbeat_interval = float(event["heartbeat"]["interval"])
            self.heartbeat_timeout = float(event["heartbeat"]["timeout"])
            self.limits = event.get("limits")
            max_line = event.get("max_line")
            if isinstance(max_line, int) and not isinstance(max_line, bool) and max_line > 0:
                self.max_line = max_line
            self.nick = event["nick"]
        elif kind == "nick" and self._same(event.get("old"), self.nick):
            self.nick = self.wanted_nick = event["new"]
        elif kind == "join" and self._same(event.get("nick"), self.nick):
            if not any(self._same(r, event["room"]) for r in self.rooms):
                self.rooms.append(event["room"])
        elif kind == "part" and self._same(event.get("nick"), self.nick):
            self.rooms = [r for r in self.rooms if not self._same(r, event["room"])]
        elif kind == "current":
            self.current = event.get("room")
        elif kind == "error":
            self.errors += 1

    def restore_commands(self, welcome: Event) -> list[str]:
        """The commands that bring a fresh connection back to the wanted state."""
        commands: list[str] = []
        if self.wanted_nick and not self._same(self.wanted_nick, welcome["nick"]):
            commands.append(f"/nick {self.wanted_nick}")
        if not self.ever_connected:
            # First connection: accept the server's rooms, then add the one asked for.
            self.rooms = list(welcome["rooms"])
            self.current = welcome.get("current")
            if self.wanted_room:
                commands.append(f"/join {self.wanted_room}")
            return commands
        have = list(welcome["rooms"])
        for room in self.rooms:
            if not any(self._same(room, r) for r in have):
                commands.append(f"/join {room}")
        for room in have:
            if not any(self._same(room, r) for r in self.rooms):
                commands.append(f"/part {room}")
        current = welcome.get("current")
        moved = not current or not self._same(self.current, current)
        if self.current and (commands or moved) and commands[-1:] != [f"/join {self.current}"]:
            commands.append(f"/join {self.current}")
        return commands


class ChatClientProtocol(LineReceiver):
    """One connection: switch to JSON, restore the session, keep the heartbeat."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20
    log = Logger()

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.clock = session.clock
        # Fires at the server's welcome; never fails (a lost connection just never fires
        # it: the session's waiters wait for the next connection instead).
        self.ready: defer.Deferred[ChatClientProtocol] = defer.Deferred()
        self.restored = False  # the restoring commands are answered: user lines may go
        self.last_heard = self.clock.seconds()
        self._heard_anything = False
        self._refusal: str | None = None
        self._beats = 0
        self._heartbeat: task.LoopingCall | None = None
        self._welcome_timer: IDelayedCall | None = None
        self._nick_retry: IDelayedCall | None = None
        self._nick_attempts = 0
        self._restoring_nick: str | None = None
        self._barrier: str | None = None  # the /ping token that ends the restore
        # Strict: the other restoring commands wait until the nickname is ours, so the
        # rooms never see us under a guest name.
        self._after_nick: list[str] | None = None
        self._restore_errors: list[Event] = []  # answers to restoring commands
        self._setup_nick: str | None = None  # asked for with the first lines
        self._setup_sent = 0  # how many setup lines were sent (the server counts them)
        self._setup_room: str | None = None
        self._expected_current: str | None = None
        self._control: deque[str] = deque()  # restoring commands: they go before user lines
        self._reconnected = False
        self._aborted = False
        self._login_sent = False
        self._last_ping = self.clock.seconds()
        self._pump_call: IDelayedCall | None = None
        self._pumping = False
        self._pace: TokenBucket | None = None

    def connectionMade(self) -> None:
        session = self.session
        session.protocol = self
        self.last_heard = self.clock.seconds()
        # All at once, before the welcome: the server seats us under this name in this
        # room, so nobody sees a guest arrive in #lobby and rename itself.
        self._setup_nick = session.wanted_nick
        self._setup_room = session.current if session.ever_connected else session.wanted_room
        setup = ["/format json"]
        if self._setup_nick:
            setup.append(f"/nick {self._setup_nick}")
        if self._setup_room:
            setup.append(f"/join {self._setup_room}")
        self._setup_sent = len(setup)
        if self.transport is not None:
            self.transport.write("".join(f"{line}\n" for line in setup).encode("utf-8"))
        self._welcome_timer = self.clock.callLater(WELCOME_WAIT, self._no_welcome)

    def send(self, line: str) -> None:
        self.sendLine(line.encode("utf-8"))

    def sendLine(self, line: bytes) -> None:
        if self.transport is not None:
            self.transport.write(line + b"\n")

    def dataReceived(self, data: bytes) -> None:
        self._heard_anything = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self.last_heard = self.clock.seconds()
        line = line.rstrip(b"\r")
        if not line.startswith(b"{"):
            if line.startswith(b"!!! refused:"):  # the server turned the connection away
                reason = clean_text(line[12:].decode("utf-8", "replace")).strip()
                self._refusal = f"refused by the server: {reason}"
                if self.transport is not None:  # the server holds it open a moment: go now
                    self.transport.loseConnection()
            return  # otherwise the text greeting, sent before /format json took effect
        try:
            event = json.loads(line)
        except ValueError:
            self.log.warn("unparseable line from server: {line!r}", line=line[:200])
            return
        if not isinstance(event, dict) or "type" not in event:
            return
        if not self.ready.called and event["type"] != "welcome":
            self._before_welcome(event)
            return
        self._handle(event)

    def _before_welcome(self, event: Event) -> None:
        """Only a login exchange can come before the welcome."""
        session = self.session
        kind = event["type"]
        if kind == "login-required":
            if session.password is None or not session.wanted_nick:
                session.fail(
                    "this server needs a login: give --nick and a password "
                    "(--ask-password, --password-file or GROUPCHAT_PASSWORD)"
                )
                self._abort()
            elif not self._login_sent:
                self._login_sent = True
                self.send(f"/login {session.wanted_nick} {session.password}")
        elif kind == "error" and event.get("code") in ("login-failed", "login-in-use"):
            message = clean_text(str(event.get("message", "")))
            if event["code"] == "login-in-use":
                # Probably our own previous connection, until the server times it out.
                session.on_status(f"{message}; retrying")
            else:
                session.fail(f"login refused: {message}")
            self._abort()

    def _handle(self, event: Event) -> None:
        session = self.session
        kind = event["type"]
        if kind == "welcome" and not self.ready.called:
            self._welcomed(event)
            return
        if kind == "pong":
            token = str(event.get("token", ""))
            if self._barrier is not None and token == self._barrier:
                self._restore_answered()
                return
            if token.startswith(HEARTBEAT_PREFIX):
                return
        if kind == "error" and self._restore_refused(event):
            return
        session.track(event)
        session.on_event(event)
        if (
            kind == "nick"
            and self._restoring_nick
            and session._same(event.get("new"), self._restoring_nick)
        ):
            self._restoring_nick = None  # got it (back)
            if self._after_nick is not None:
                rest, self._after_nick = self._after_nick, None
                if not session.quitting:
                    self._restore(rest)

    def _restore_refused(self, event: Event) -> bool:
        """An error answering a restoring command; True when it is handled here."""
        session = self.session
        code = str(event.get("code", ""))
        message = clean_text(str(event.get("message", "")))
        answers_nick = code.startswith("nick-") or self._after_nick is not None
        if self._restoring_nick and answers_nick:
            if code == "nick-taken" and self._reconnected:
                self._retry_nick()
                return True
            wanted, self._restoring_nick = self._restoring_nick, None
            session.wanted_nick = None
            if session.strict:
                self._refuse(f"cannot talk as {wanted}: {message}")
                return True
            # The nickname asked for is not available: show why, and say plainly which
            # name we have instead and how to pick another.
            session.track(event)
            session.on_event(event)
            session.on_status(
                f"you are chatting as {session.nick}; type /nick NAME to pick another name"
            )
            return True
        if self._barrier is not None:
            # Shown once the restore is answered, or folded into the reason it failed.
            self._restore_errors.append(event)
            return True
        return False

    def _welcomed(self, welcome: Event) -> None:
        session = self.session
        if self._welcome_timer is not None and self._welcome_timer.active():
            self._welcome_timer.cancel()
        session.track(welcome)
        first = not session.ever_connected
        self._reconnected = not first
        if first:
            self._expected_current = session.wanted_room or welcome.get("current")
        else:
            self._expected_current = session.current
        commands = session.restore_commands(welcome)
        if session.wanted_nick and not session._same(session.wanted_nick, welcome["nick"]):
            self._restoring_nick = session.wanted_nick
        session.ever_connected = True
        # What the first lines asked for and the welcome does not show, the server has
        # already been asked: its answer (an error) follows the welcome.  Asking again
        # would only repeat it; a barrier still collects it.
        answered = not welcome.get("logged_in")
        asked_nick = answered and self._restoring_nick is not None and bool(self._setup_nick)
        barrier = asked_nick
        if asked_nick:
            commands = [c for c in commands if c != f"/nick {self._setup_nick}"]
        room = self._setup_room
        if answered and room and commands == [f"/join {room}"]:
            commands = []
            barrier = barrier or not any(session._same(room, r) for r in welcome["rooms"])
        if session.strict and self._restoring_nick:
            if asked_nick:
                self._after_nick = commands
                commands = []
            else:
                self._after_nick = commands[1:]
                commands = commands[:1]
        limits = session.limits
        if limits:
            # Stay just under the server's line rate so it never has to hold us back
            # (and never mistakes a long paste for a flood); the setup lines used a
            # token each, and one more is left as a margin.
            now = self.clock.seconds()
            burst = float(limits["burst"]) - self._setup_sent - 1
            self._pace = TokenBucket(0.9 * float(limits["rate"]), max(1.0, burst), now)
        self._last_ping = self.clock.seconds()
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(min(1.0, session.heartbeat_interval), now=False)
        session.on_event(welcome | {"restored": not first})
        self.ready.callback(self)
        if self._after_nick is not None:
            if commands:
                self.send_control(commands[0])  # the rest once the nickname is ours
        else:
            self._restore(commands, barrier)

    def _restore(self, commands: list[str], barrier: bool = False) -> None:
        """Send the restoring commands and a barrier; with none, the session is restored.

        ``barrier``: send one anyway, to collect answers to what was asked before.
        """
        if not commands and not barrier:
            self._release()
            return
        self._barrier = RESTORED_TOKEN
        self._control.extend([*commands, f"/ping {self._barrier}"])
        self.pump()

    def _restore_answered(self) -> None:
        """The barrier's pong: the server has answered every restoring command."""
        self._barrier = None
        session = self.session
        errors, self._restore_errors = self._restore_errors, []
        if session.quitting:
            return  # leaving anyway: nothing to restore, nothing to refuse
        expected = self._expected_current
        if session.strict and expected is not None and not session._same(session.current, expected):
            why = "; ".join(clean_text(str(e.get("message", ""))) for e in errors)
            self._refuse(f"cannot talk in {expected}: {why or 'the server did not say why'}")
            return
        for event in errors:
            session.track(event)
            session.on_event(event)
        self._release()

    def _release(self) -> None:
        if self.restored or self.session.fatal is not None:
            return
        self.restored = True
        self.session._now_ready()
        self.pump()

    def send_control(self, line: str) -> None:
        """A line of the client's own, sent before any of the user's (paced likewise)."""
        self._control.append(line)
        self.pump()

    def _refuse(self, message: str) -> None:
        """Strict mode: what the user asked for is refused; send nothing else, quit."""
        session = self.session
        if self._nick_retry is not None and self._nick_retry.active():
            self._nick_retry.cancel()
        self._nick_retry = None
        self._restoring_nick = None
        self._after_nick = None
        self._control.clear()
        waiting = len(session.outbox)
        if waiting and session.sent_lines == 0:
            message += "; nothing was sent"
        elif waiting:
            message += (
                "; 1 line was not sent" if waiting == 1 else f"; {waiting} lines were not sent"
            )
        session.quitting = True
        self._control.append("/quit")
        session.fail(message)  # empties the outbox, tells the user interface
        self.pump()

    def pump(self) -> None:
        """Send queued lines in order, no faster than the server's announced rate.

        Restoring commands go first; the user's lines wait until the session is restored.
        """
        if self._pumping:
            return  # called back from a hook while sending: the loop below goes on
        self._pumping = True
        try:
            self._pump()
        finally:
            self._pumping = False

    def _pump(self) -> None:
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        session = self.session
        outbox = session.outbox
        while self.transport is not None and self.ready.called:
            user = not self._control
            if user and not (self.restored and outbox):
                return
            if self._pace is not None:
                now = self.clock.seconds()
                wait = self._pace.wait(now)
                if wait > 0:
                    self._pump_call = self.clock.callLater(max(wait, 0.001), self.pump)
                    return
                self._pace.take(now)
            if not user:
                self.send(self._control.popleft())
                continue
            line = outbox.popleft()
            if not session.too_long(line):  # queued before the limit was known
                self.send(line)
                session.sent_lines += 1
                for hook in session.on_sent:
                    hook(line)
            if outbox.low:
                for low in session.on_outbox_low:
                    low()

    def _retry_nick(self) -> None:
        """Our old connection may still hold the nickname until the server times it out."""
        self._nick_attempts += 1
        self._nick_retry = None
        wait = max(1.0, min(5.0, self.session.heartbeat_timeout / 4))
        if self._nick_attempts * wait > self.session.heartbeat_timeout * 2:
            wanted, self._restoring_nick = self._restoring_nick, None
            if self.session.strict:
                self._refuse(f"could not get back the nickname {wanted}")
            else:
                self.session.on_status(
                    f"could not get back the nickname {wanted}; you are chatting as "
                    f"{self.session.nick} (type /nick NAME to pick another name)"
                )
            return
        if self._nick_attempts == 1:
            meanwhile = "" if self.session.strict else f" (meanwhile you are {self.session.nick})"
            self.session.on_status(
                f"the nickname {self._restoring_nick} is taken (perhaps still by our previous "
                f"connection, until the server times it out); retrying{meanwhile}"
            )
        self._nick_retry = self.clock.callLater(wait, self._ask_nick)

    def _ask_nick(self) -> None:
        if self._restoring_nick:
            self.send(f"/nick {self._restoring_nick}")

    def _beat(self) -> None:
        """Checked every second: ping once per interval; give up after the timeout."""
        now = self.clock.seconds()
        silent = now - self.last_heard
        if silent > self.session.heartbeat_timeout:
            self.session.on_status(f"no answer from the server for {silent:.0f} s; reconnecting")
            self._abort()
            return
        if now - self._last_ping >= self.session.heartbeat_interval - 1e-9:
            self._last_ping = now
            self._beats += 1
            self.send(f"/ping {HEARTBEAT_PREFIX}{self._beats}")

    def _no_welcome(self) -> None:
        self._welcome_timer = None
        self._abort()
        self.session.lost_early(f"the server did not greet us within {WELCOME_WAIT:g} s")

    def _abort(self) -> None:
        self._aborted = True  # we said why already; connectionLost need not
        if self.transport is not None:
            abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
            abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in (self._welcome_timer, self._nick_retry, self._pump_call):
            if call is not None and call.active():
                call.cancel()
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        session = self.session
        if session.protocol is self:
            session.protocol = None
        if not self.ready.called and not self._aborted and session.fatal is None:
            if self._refusal is not None:
                session.lost_early(self._refusal)
            else:
                early = ended_before_welcome(
                    reason, self.transport, self._heard_anything, session.alternative_server
                )
                if early.permanent:
                    session.fail(early.message)
                else:
                    session.lost_early(early.message)
        if session.quitting:
            if not session.closed.called:
                session.closed.callback(None)
        elif self.ready.called and not self._aborted:
            session.on_status(f"{why_lost(reason)}; reconnecting")


class ChatClientFactory(Factory):
    def __init__(self, session: ClientSession) -> None:
        self.session = session

    def buildProtocol(self, addr: object) -> ChatClientProtocol:
        protocol = ChatClientProtocol(self.session)
        protocol.factory = self
        return protocol
