"""Client-side chat logic: the JSON line protocol, heartbeats and what survives reconnects.

Nothing here touches a terminal or the real reactor: the user interface receives events
and status lines through callbacks, and time comes from an injected clock, so the whole
reconnect-and-restore behaviour is tested with ``StringTransport`` and ``task.Clock``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from twisted_chat.limits import TokenBucket
from twisted_chat.names import skeleton
from twisted_chat.sanitize import clean_text

Event = dict[str, Any]
WELCOME_WAIT = 10.0
HEARTBEAT_PREFIX = "hb-"


class SessionFailed(Exception):
    """The session cannot go on; the message says why."""


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
    ) -> None:
        self.clock = clock
        self.on_event = on_event
        self.on_status = on_status
        self.nick: str | None = None  # as the server last confirmed it
        self.wanted_nick = nick
        self.rooms: list[str] = []
        self.current: str | None = None
        self.wanted_room = room
        self.outbox: deque[str] = deque()
        self.protocol: ChatClientProtocol | None = None
        self.quitting = False
        self.ever_connected = False
        self.welcomed = False
        self.heartbeat_interval = 10.0
        self.heartbeat_timeout = 30.0
        self.limits: dict[str, float] | None = None
        self.errors = 0  # error events the server sent in answer to our lines
        self.last_error: str | None = None  # why the last connection ended before a welcome
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._ready_waiters: list[defer.Deferred[None]] = []
        self.password: str | None = None
        self.fatal: str | None = None  # a reason to stop trying (a refused login)
        self.on_fatal: list[Callable[[str], None]] = []

    def fail(self, message: str) -> None:
        """Give up: reconnecting cannot help (wrong password, login needed)."""
        if self.fatal is not None:
            return
        self.fatal = message
        self.on_status(message)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(SessionFailed(message))
        for hook in self.on_fatal:
            hook(message)

    def when_ready(self) -> defer.Deferred[None]:
        """Fires once a connection is greeted and restored (at once if one is now)."""
        if self.protocol is not None and self.protocol.ready.called:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def _now_ready(self) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    # -- sending -----------------------------------------------------------------------

    def send(self, line: str) -> bool:
        """Send now if connected, otherwise when the next connection is ready.

        Returns False for a line the client will not send.
        """
        line = line.replace("\r", "").replace("\n", " ")
        if line.split(" ", 1)[0].lower() == "/format":
            self.on_status("this client always uses the JSON rendering; /format is for telnet")
            return False
        self.outbox.append(line)
        if self.protocol is not None and self.protocol.ready.called:
            self.protocol.pump()
        return True

    @property
    def connected(self) -> bool:
        return self.protocol is not None and self.protocol.ready.called

    def quit(self, reason: str = "") -> None:
        self.quitting = True
        self.send(f"/quit {reason}".rstrip())

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
        if self.current and (not commands or commands[-1] != f"/join {self.current}"):
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
        self.last_heard = self.clock.seconds()
        self._beats = 0
        self._heartbeat: task.LoopingCall | None = None
        self._welcome_timer: IDelayedCall | None = None
        self._nick_retry: IDelayedCall | None = None
        self._nick_attempts = 0
        self._restoring_nick: str | None = None
        self._reconnected = False
        self._aborted = False
        self._login_sent = False
        self._last_ping = self.clock.seconds()
        self._pump_call: IDelayedCall | None = None
        self._pace: TokenBucket | None = None

    def connectionMade(self) -> None:
        self.session.protocol = self
        self.last_heard = self.clock.seconds()
        self.send("/format json")
        self._welcome_timer = self.clock.callLater(WELCOME_WAIT, self._no_welcome)

    def send(self, line: str) -> None:
        self.sendLine(line.encode("utf-8"))

    def sendLine(self, line: bytes) -> None:
        if self.transport is not None:
            self.transport.write(line + b"\n")

    def lineReceived(self, line: bytes) -> None:
        self.last_heard = self.clock.seconds()
        line = line.rstrip(b"\r")
        if not line.startswith(b"{"):
            if line.startswith(b"!!! refused:"):  # the server turned the connection away
                reason = clean_text(line[12:].decode("utf-8", "replace")).strip()
                self.session.on_status(f"refused by the server: {reason}")
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
        if kind == "pong" and str(event.get("token", "")).startswith(HEARTBEAT_PREFIX):
            return
        if self._restoring_nick and str(event.get("code", "")).startswith("nick-"):
            if event["code"] == "nick-taken" and self._reconnected:
                self._retry_nick()
                return
            # The nickname asked for on the command line is not available: say why and
            # carry on with the one the server gave us.
            self._restoring_nick = None
            session.wanted_nick = None
        if (
            kind == "nick"
            and self._restoring_nick
            and session._same(event.get("new"), self._restoring_nick)
        ):
            self._restoring_nick = None
        session.track(event)
        session.on_event(event)

    def _welcomed(self, welcome: Event) -> None:
        session = self.session
        if self._welcome_timer is not None and self._welcome_timer.active():
            self._welcome_timer.cancel()
        session.track(welcome)
        first = not session.ever_connected
        self._reconnected = not first
        commands = session.restore_commands(welcome)
        if session.wanted_nick and not session._same(session.wanted_nick, welcome["nick"]):
            self._restoring_nick = session.wanted_nick
        session.ever_connected = True
        session.outbox.extendleft(reversed(commands))  # restore first, then what waited
        limits = session.limits
        if limits:
            # Stay just under the server's line rate so it never has to hold us back
            # (and never mistakes a long paste for a flood); /format json used one token.
            now = self.clock.seconds()
            self._pace = TokenBucket(
                0.9 * float(limits["rate"]), max(1.0, float(limits["burst"]) - 2), now
            )
        self._last_ping = self.clock.seconds()
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(min(1.0, session.heartbeat_interval), now=False)
        session.on_event(welcome | {"restored": not first})
        self.ready.callback(self)
        self.pump()
        session._now_ready()

    def pump(self) -> None:
        """Send queued lines in order, no faster than the server's announced rate."""
        self._pump_call = None
        outbox = self.session.outbox
        while outbox and self.transport is not None:
            if self._pace is not None:
                now = self.clock.seconds()
                wait = self._pace.wait(now)
                if wait > 0:
                    self._pump_call = self.clock.callLater(max(wait, 0.001), self.pump)
                    return
                self._pace.take(now)
            self.send(outbox.popleft())

    def _retry_nick(self) -> None:
        """Our old connection may still hold the nickname until the server times it out."""
        self._nick_attempts += 1
        wait = max(1.0, min(5.0, self.session.heartbeat_timeout / 4))
        if self._nick_attempts * wait > self.session.heartbeat_timeout * 2:
            self.session.on_status(f"could not get back the nickname {self._restoring_nick}")
            self._restoring_nick = None
            return
        if self._nick_attempts == 1:
            self.session.on_status(
                f"the nickname {self._restoring_nick} is taken (perhaps still by our previous "
                "connection, until the server times it out); retrying"
            )
        self._nick_retry = self.clock.callLater(wait, self._ask_nick)

    def _ask_nick(self) -> None:
        self._nick_retry = None
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
        self.session.on_status("the server did not greet us; reconnecting")
        self._abort()

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
        if not self.ready.called:  # e.g. a TLS handshake that failed verification
            session.last_error = reason.getErrorMessage()
            if any(s in session.last_error for s in ("certificate verify failed", "unknown ca")):
                session.fail(
                    "the server's TLS certificate is not trusted: add "
                    "trustRoots=FOLDER-WITH-ITS-CERTIFICATE to --server"
                )
        if session.quitting:
            if not session.closed.called:
                session.closed.callback(None)
        elif self.ready.called and not self._aborted:
            session.on_status(f"{_why_lost(reason)}; reconnecting")


def _why_lost(reason: Failure) -> str:
    """The end of a connection in words a user reads, not Twisted's exception text."""
    from twisted.internet import error

    if reason.check(error.ConnectionDone):
        return "the server closed the connection"
    if reason.check(error.ConnectionLost):
        return "the connection dropped"
    return f"connection lost ({reason.getErrorMessage()})"


class ChatClientFactory(Factory):
    def __init__(self, session: ClientSession) -> None:
        self.session = session

    def buildProtocol(self, addr: object) -> ChatClientProtocol:
        protocol = ChatClientProtocol(self.session)
        protocol.factory = self
        return protocol
