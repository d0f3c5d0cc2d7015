"""Wires a ClientSession to a reconnecting ``ClientService`` and to stdin/stdout.

The modes share this object; only the terminal UI lives elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat.client.session import ChatClientFactory, ClientSession, SessionFailed

QUIT_WAIT = 5.0

Output = Callable[[dict[str, Any], "str | None"], None]


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """Lets the app tell the user why a connection attempt failed (ClientService won't)."""

    def __init__(self, wrapped: Any, on_failure: Callable[[Failure], None]) -> None:
        self.wrapped = wrapped
        self.on_failure = on_failure

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self.wrapped.connect(factory)

        def report(failure: Failure) -> Failure:
            if not failure.check(defer.CancelledError):
                self.on_failure(failure)
            return failure

        return d.addErrback(report)


class ClientApp:
    def __init__(
        self, reactor: Any, endpoint: Any, label: str, nick: str | None, room: str | None
    ) -> None:
        self.reactor = reactor
        self.label = label
        self.session = ClientSession(reactor, self._event, self._status, nick=nick, room=room)
        self.outputs: list[Output] = []
        self.status_sinks: list[Callable[[str], None]] = []
        self.last_failure: str | None = None
        self.bye = False
        self._outage_reported = False
        self._started = False
        self.interactive = False  # the terminal UI sets this: report outages as they come
        self.session.on_fatal.append(self._give_up)
        self.service = ClientService(
            ReportingEndpoint(endpoint, self._connect_failed),
            ChatClientFactory(self.session),
            retryPolicy=backoffPolicy(initialDelay=0.5, factor=1.7, maxDelay=15.0),
            clock=reactor,
        )

    # -- plumbing ----------------------------------------------------------------------

    def on_output(self, output: Output) -> None:
        self.outputs.append(output)

    def on_status(self, sink: Callable[[str], None]) -> None:
        self.status_sinks.append(sink)

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "welcome":
            self._outage_reported = False
        if event.get("type") == "bye":
            self.bye = True
        for output in self.outputs:
            output(event, self.session.nick)

    def _status(self, text: str) -> None:
        for sink in self.status_sinks:
            sink(text)

    def _give_up(self, message: str) -> None:
        """Reconnecting cannot help (a refused login): stop trying."""
        self.service.stopService()

    def _connect_failed(self, failure: Failure) -> None:
        from twisted.internet import error

        if failure.check(error.ConnectionRefusedError):
            self.last_failure = "connection refused"
        elif failure.check(error.DNSLookupError):
            self.last_failure = "unknown host"
        else:
            self.last_failure = failure.getErrorMessage()
        # Before the first connection, scripts get one final line instead (see pipe()).
        if not self._outage_reported and (self.session.ever_connected or self.interactive):
            self._outage_reported = True
            self._status(f"cannot reach {self.label} ({self.last_failure}); retrying")

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.service.startService()
            self.reactor.addSystemEventTrigger(
                "before", "shutdown", lambda: defer.Deferred.fromCoroutine(self.stop())
            )

    async def connected(self, timeout: float) -> bool:
        """Wait (bounded) until a connection is greeted and restored."""
        if self.session.fatal is not None:
            return False
        d = self.session.when_ready()
        d.addTimeout(timeout, self.reactor)
        try:
            await d
        except (defer.TimeoutError, SessionFailed):
            return False
        return True

    async def stop(self) -> None:
        """Quit cleanly if connected (the others see a quit, not a timeout), then stop."""
        if not self._started:
            return
        self._started = False
        session = self.session
        if session.connected and not session.quitting:
            session.quit()
        if session.quitting and not session.closed.called:
            waiting = session.closed
            waiting.addTimeout(QUIT_WAIT, self.reactor)
            with contextlib.suppress(defer.TimeoutError):
                await waiting
        await self._stop_service()

    async def _stop_service(self) -> None:
        # ``closed`` fires from inside ClientService's own state machine (the connection
        # it was watching just ended); stopping it from that call stack is a reentrant
        # transition it refuses with a RuntimeError.  One reactor turn later it is idle.
        await task.deferLater(self.reactor, 0, lambda: None)
        await self.service.stopService()

    # -- modes -------------------------------------------------------------------------

    async def pipe(self, timeout: float) -> int:
        """Send stdin line by line; at EOF send what is left, quit, and report success."""
        from twisted.internet import stdio

        self.start()
        reader = StdinLines(self.session.send)
        stdio.StandardIO(reader, reactor=self.reactor)
        if not await self.connected(timeout):
            self._unreachable(timeout)
            return 1
        await reader.done
        session = self.session
        session.quit()
        # Lines go out at the server's pace: allow for them on top of the timeout.
        rate = float(session.limits["rate"]) * 0.9 if session.limits else 0.0
        budget = timeout + (session.pending / rate if rate > 0 else 0.0)
        waiting = session.closed
        waiting.addTimeout(budget, self.reactor)
        with contextlib.suppress(defer.TimeoutError):
            await waiting
        left = session.pending
        delivered = self.bye and left == 0
        self._started = False
        await self._stop_service()
        if not delivered:
            self._error(
                "no goodbye from the server in time: "
                + (f"{left} lines were not sent" if left else "the last lines may not have arrived")
            )
            return 1
        if session.errors:
            self._error(
                f"delivered, but the server refused {session.errors} of our lines "
                "(see the errors above)"
            )
            return 2
        return 0

    async def listen(self, timeout: float) -> int:
        self.start()
        if not await self.connected(timeout):
            self._unreachable(timeout)
            return 1
        forever: defer.Deferred[None] = defer.Deferred()
        await forever  # until SIGINT/SIGTERM stops the reactor (stop() then quits cleanly)
        return 0

    def _unreachable(self, timeout: float) -> None:
        if self.session.fatal is not None:
            return  # already said, as a status line
        why = self.last_failure or self.session.last_error or "no answer"
        self._error(f"cannot reach {self.label} ({why}) within {timeout:g} s")

    def _error(self, message: str) -> None:
        import sys

        sys.stderr.write(f"groupchat client: {message}\n")
        sys.stderr.flush()


@implementer(IHalfCloseableProtocol)
class StdinLines(LineReceiver):
    """stdin as lines; ``done`` fires at EOF, after a last unterminated line is sent."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, send: Callable[[str], object]) -> None:
        self.send = send
        self.done: defer.Deferred[None] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        if text.strip():
            self.send(text)

    def readConnectionLost(self) -> None:
        rest = self.clearLineBuffer()
        if rest.strip():
            self.lineReceived(rest)
        if not self.done.called:
            self.done.callback(None)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.readConnectionLost()
