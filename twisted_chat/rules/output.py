"""Output every connection shares: gathering per reactor iteration, the optional hold,
and the transport's back-pressure.

One ``Batcher`` serves every front door of a server, so members in one room are
coalesced the same way whichever door they came through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted_chat.core.interfaces import IChatService

HOLD_AFTER = 4  # recipients a flush must reach before later output is held (see end_batch)


class Flushable(Protocol):
    def flush_out(self) -> None: ...

    def flush_queue(self) -> None: ...


class Batcher:
    """Gathers output during a reactor iteration and writes it once per recipient.

    A connection that is handed an event while a batch is open keeps it and registers
    in ``dirty``; one flush after every connection that was ready in this iteration has
    been read (a ``callLater(0)``, which the reactor runs before it polls again) writes
    each recipient's events in one ``write``.  When many members talk, one poll often
    brings lines from several of them: each recipient then gets them in one ``send()``,
    with no added wait.  ``flush_interval`` optionally holds output longer under
    sustained traffic.
    """

    log = Logger()

    def __init__(self, service: IChatService, clock: IReactorTime, flush_interval: float = 0.0):
        self.service = service
        self.clock = clock
        self.flush_interval = flush_interval
        self.batch_depth = 0
        self.dirty: list[Flushable] = []
        self._last_flush = float("-inf")
        self._last_flush_size = 0
        self._flush_call: IDelayedCall | None = None

    def begin_batch(self) -> None:
        self.batch_depth += 1
        self.service.begin_batch()

    def end_batch(self) -> None:
        """Have what was gathered written at the end of this reactor iteration, or, with
        ``flush_interval``, no sooner than that long after the last flush.

        Writing at the end of each input turn would cost one ``send()`` per member per
        line; at the end of the iteration it costs one per member per poll.  Holding
        for ``flush_interval`` makes that at most one per member per interval, at the
        price of that much latency; a line after a quiet spell is never held.
        """
        self.service.end_batch()
        if self.batch_depth > 1:
            self.batch_depth -= 1
            return
        self.batch_depth = 0
        if self._flush_call is not None or not self.dirty:
            return  # a flush is already due; what was gathered waits for it
        wait = 0.0
        # Hold only after a flush that reached several members: a stream of single
        # answers (pongs, errors, one connection's own traffic) is not the sustained
        # broadcast the hold coalesces, and must not delay everyone else's lines.
        if self.flush_interval and self._last_flush_size >= HOLD_AFTER:
            wait = max(0.0, self._last_flush + self.flush_interval - self.clock.seconds())
        self._flush_call = self.clock.callLater(wait, self._timed_flush)

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
                for connection in dirty:
                    connection.flush_out()
        finally:
            self.batch_depth -= 1
            self._last_flush_size = written


@implementer(IPushProducer)
class OutputGate:
    """Registered with the transport so it tells us when its buffer is full.

    While paused, the connection keeps output in its own queue, bounded by the
    send-queue limit; a member that lets it overflow is not reading and is disconnected.
    """

    __slots__ = ("connection", "paused")

    def __init__(self, connection: Flushable) -> None:
        self.connection = connection
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.connection.flush_queue()

    def stopProducing(self) -> None:
        self.paused = True
