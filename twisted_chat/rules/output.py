"""Output every connection shares: gathering per input turn, the timed flush, and the
transport's back-pressure.

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
    """Gathers output during an input turn and writes it once per recipient.

    A connection that is handed an event while a batch is open keeps it and registers
    in ``dirty``; the flush at the end of the turn (or after ``flush_interval`` under
    sustained traffic) writes each recipient's events in one ``write``.
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
