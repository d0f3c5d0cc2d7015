"""Wires a ClientSession to a reconnecting ``ClientService`` and to stdin/stdout.

The modes share this object; only the terminal UI lives elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat.client.diagnose import alternative_server
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
        self.session.alternative_server = alternative_server(label)
        self.outputs: list[Output] = []
        self.status_sinks: list[Callable[[str], None]] = []
        self.last_failure: str | None = None
        self.bye = False
        self._outage_reported = False
        self._started = False
        self.interactive = False  # the terminal UI sets this: report outages as they come
        # Fires with the reason when the session gives up (a refused login or nickname).
        self.failed: defer.Deferred[str] = defer.Deferred()
        self.session.on_fatal.append(self._give_up)
        self.session.on_lost_early.append(self._attempt_failed)
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
        """Reconnecting cannot help (a refused login or nickname): stop trying.

        When the session is quitting (it refused to speak under another name), the
        connection is left to close cleanly; ``stop()`` then stops the service.
        """
        if not self.session.quitting:
            self.service.stopService()
        if not self.failed.called:
            self.failed.callback(message)

    def _connect_failed(self, failure: Failure) -> None:
        from twisted.internet import error

        if failure.check(error.ConnectionRefusedError):
            why = "connection refused"
        elif failure.check(error.DNSLookupError):
            why = "unknown host"
        else:
            why = failure.getErrorMessage()
        self._attempt_failed(why)

    def _attempt_failed(self, why: str) -> None:
        """A connection attempt failed or ended before the welcome; ClientService retries."""
        self.last_failure = why
        # Before the first connection, scripts get one final line instead (see pipe()).
        if not self._outage_reported and (self.session.ever_connected or self.interactive):
            self._outage_reported = True
            self._status(f"cannot reach {self.label} ({why}); retrying")

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
        """Send stdin line by line; at EOF send what is left, quit, and report success.

        Strict: no line goes out before the server has confirmed the nickname and room
        asked for; if it refuses them, nothing is sent and the status is 1.
        """
        from twisted.internet import stdio

        session = self.session
        session.strict = True
        self.start()
        reader = StdinLines(session)
        stdio.StandardIO(reader, reactor=self.reactor)
        if not await self.connected(timeout):
            return await self._not_ready(timeout)
        await _first(reader.done, self.failed)  # the end of input, or a refusal
        if session.fatal is not None:
            await self.stop()
            return 1
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
        if session.fatal is not None:
            return 1  # it said why
        if not delivered:
            self._error(
                "no goodbye from the server in time: "
                + (f"{left} lines were not sent" if left else "the last lines may not have arrived")
            )
            return 1
        if session.errors:
            self._error(f"delivered, but {_lines(session.errors)} refused (see the errors above)")
            return 2
        return 0

    async def listen(self, timeout: float) -> int:
        """Strict too: a listener that names itself is never seated under another name."""
        self.session.strict = True
        self.start()
        if not await self.connected(timeout):
            return await self._not_ready(timeout)
        # Until SIGINT/SIGTERM stops the reactor (stop() then quits cleanly), or the
        # session fails (the nickname could not be had back after a reconnect).
        await self.failed
        await self.stop()
        return 1

    async def _not_ready(self, timeout: float) -> int:
        """No restored connection within the timeout, or a refusal: status 1."""
        if self.session.fatal is None:
            self._unreachable(timeout)
        await self.stop()  # a refusal is quitting cleanly: let it finish
        return 1

    def _unreachable(self, timeout: float) -> None:
        why = self.last_failure or "no answer"
        self._error(f"cannot reach {self.label} ({why}) within {timeout:g} s")

    def _error(self, message: str) -> None:
        import sys

        sys.stderr.write(f"groupchat client: {message}\n")
        sys.stderr.flush()


def _first(*waiting: defer.Deferred[Any]) -> defer.Deferred[None]:
    """Fires when the first of ``waiting`` does; their results pass on unchanged."""
    first: defer.Deferred[None] = defer.Deferred()

    def fire(result: object) -> object:
        if not first.called:
            first.callback(None)
        return result

    for d in waiting:
        d.addBoth(fire)
    return first


@implementer(IHalfCloseableProtocol)
class StdinLines(Protocol):
    """stdin as lines for the session; ``done`` fires at EOF, after the last line.

    A last line without a newline is sent too.  When the session's outbox is full (the
    server is slow, or not yet reached), stdin is not read until it has room again, so
    a long pipe is held by the pipe, not in memory.  A line longer than ``MAX_LENGTH``
    is not kept at all: it is skipped up to its end and counted as refused.
    """

    MAX_LENGTH = 1 << 20

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.done: defer.Deferred[None] = defer.Deferred()
        self._buffer = bytearray()
        self._skipping = False  # inside an over-long line, up to its newline
        self._paused = False
        self._eof = False
        session.on_outbox_low.append(self._resume)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._deliver()

    def _deliver(self) -> None:
        while not self._paused:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.MAX_LENGTH:
                    self._too_long()
                    self._buffer.clear()
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._skipping:
                self._skipping = False
            elif len(line) > self.MAX_LENGTH:
                self._too_long()
                self._skipping = False
            else:
                self._line(line)
        if self._eof and not self._paused:
            self._finish()

    def _too_long(self) -> None:
        if not self._skipping:
            self._skipping = True
            self.session.refused_locally(
                f"not sent: a line of more than {self.MAX_LENGTH} bytes was read from stdin"
            )

    def _line(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", errors="replace")
        if not text.strip():
            return
        self.session.send(text, force=True)
        if self.session.outbox.full and self.transport is not None:
            self._paused = True
            cast(IPushProducer, self.transport).pauseProducing()

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            cast(IPushProducer, self.transport).resumeProducing()
            self._deliver()

    def _finish(self) -> None:
        if self.done.called:
            return
        rest, self._buffer = bytes(self._buffer), bytearray()
        if rest and not self._skipping:
            self._line(rest)
        if not self.done.called:
            self.done.callback(None)

    def readConnectionLost(self) -> None:
        self._eof = True
        if not self._paused:
            self._finish()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.readConnectionLost()


def _lines(n: int) -> str:
    """``1 of our lines was``, ``3 of our lines were``."""
    return f"{n} of our lines " + ("was" if n == 1 else "were")
