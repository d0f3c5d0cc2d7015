"""Output every connection shares: gathering per reactor iteration, the optional hold,
and the transport's back-pressure.

One ``Batcher`` serves every front door of a server, so members in one room are
coalesced the same way whichever door they came through.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted_chat.core.events import Event
    from twisted_chat.core.interfaces import IChatService
    from twisted_chat.core.service import Member, Room
    from twisted_chat.core.tally import Tally

HOLD_AFTER = 4  # recipients a flush must reach before later output is held (see end_batch)


class Flushable(Protocol):
    def flush_out(self) -> None: ...

    def flush_queue(self) -> None: ...


class Batcher:
    """Gathers output during a reactor iteration and writes it once per recipient.

    A connection that is handed an event while a batch is open keeps it and registers
    in ``dirty``; a room broadcast is kept once for the whole room (``gather``).  The
    flush comes after every connection that was ready has been read and the reactor has
    polled once more (two ``callLater(0)``: the reactor runs each before it polls
    again), so lines from members who talk at about the same moment reach each member
    in one ``send()``: under load the extra poll brings more lines, when idle it returns
    at once.  ``flush_interval`` optionally holds output longer under sustained traffic.
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
        # Room broadcasts of this iteration, written before ``dirty`` (see ``gather``).
        self.casts: list[_Cast] = []
        # Per room: its version and its members as ``_cast`` writes to them (rebuilt
        # when the membership changes; gone with the room).
        self._rooms: weakref.WeakKeyDictionary[Any, _Recipients] = weakref.WeakKeyDictionary()
        self.tally: Tally | None = None
        self.flushing = False
        self.delivered = 0  # lines written by gathered broadcasts, for --metrics

    def gather(self, room: Room, event: Event, exclude: Member | None) -> list[Member]:
        """Take a room broadcast for the room's members on plain TCP, at the cost of one
        entry for the whole room instead of a call per member; return the members left
        to deliver to one by one (other doors, other nodes' members).

        Members whose output already waits in this iteration get it appended instead,
        and the broadcasts are written before what waits: each member's order is kept.
        """
        if not self.batch_depth:
            return list(room.members)
        recipients = self._rooms.get(room)
        if recipients is None or recipients.version != room.version:
            recipients = self._rooms[room] = _Recipients(room)
        excluded = None if exclude is None else exclude.participant
        waiting = None
        if self.dirty:  # (usually few: whoever got an answer of its own this iteration)
            key = room.key
            dirty: list[Any] = self.dirty
            waiting = {
                p
                for p in dirty
                if getattr(p, "_direct", False) and p.member is not None and key in p.member.rooms
            }
            for participant in waiting:
                if participant is not excluded:
                    participant._out.append(event)
        self.casts.append(_Cast(recipients, event, excluded, waiting))
        return recipients.others

    def begin_batch(self) -> None:
        self.batch_depth += 1
        self.service.begin_batch()

    def end_batch(self) -> None:
        """Have what was gathered written after the reactor's next poll, or, with
        ``flush_interval``, no sooner than that long after the last flush.

        Writing at the end of each input turn would cost one ``send()`` per member per
        line; after the next poll it costs one per member for everything read meanwhile.
        Holding for ``flush_interval`` makes that at most one per member per interval,
        at the price of that much latency; a line after a quiet spell is never held.
        """
        self.service.end_batch()
        if self.batch_depth > 1:
            self.batch_depth -= 1
            return
        self.batch_depth = 0
        if self._flush_call is not None or not (self.dirty or self.casts):
            return  # a flush is already due; what was gathered waits for it
        wait = 0.0
        # Hold only after a flush that reached several members: a stream of single
        # answers (pongs, errors, one connection's own traffic) is not the sustained
        # broadcast the hold coalesces, and must not delay everyone else's lines.
        if self.flush_interval and self._last_flush_size >= HOLD_AFTER:
            wait = max(0.0, self._last_flush + self.flush_interval - self.clock.seconds())
        if wait:
            self._flush_call = self.clock.callLater(wait, self._timed_flush)
        else:
            self._flush_call = self.clock.callLater(0, self._after_a_poll)

    def _after_a_poll(self) -> None:
        # Run before the reactor polls again: flush after that poll, with what it brings.
        self._flush_call = self.clock.callLater(0, self._timed_flush)

    def _timed_flush(self) -> None:
        self._flush_call = None
        try:
            self.flush()
        except Exception:
            self.log.failure("delayed flush failed")

    def flush(self) -> None:
        """Write out everything gathered; output caused while flushing joins in."""
        if not self.dirty and not self.casts:
            return
        self._last_flush = self.clock.seconds()
        self.batch_depth += 1
        self.flushing = True
        written = 0
        try:
            while self.dirty or self.casts:
                if self.casts:
                    casts, self.casts = self.casts, []
                    written += self._write_casts(casts)
                dirty, self.dirty = self.dirty, []
                written += len(dirty)
                for connection in dirty:
                    connection.flush_out()
        finally:
            self.batch_depth -= 1
            self.flushing = False
            self._last_flush_size = written

    def _write_casts(self, casts: list[_Cast]) -> int:
        written = 0
        i = 0
        while i < len(casts):
            # Consecutive broadcasts to the same recipients (several members of one room
            # talked in this iteration): one write per member.
            cast = casts[i]
            j = i + 1
            while j < len(casts) and casts[j].to is cast.to and not casts[j].waiting:
                j += 1
            if cast.waiting:  # (they have it among what waits for them)
                others = len(cast.waiting) - (cast.excluded in cast.waiting)
                self.delivered += others * _lines(cast.event)
            if cast.waiting or j == i + 1:
                written += self._cast(cast.to.fast, cast.event, cast.excluded, cast.waiting)
            else:
                written += self._cast_run(cast.to, casts[i:j])
            i = j
        return written

    def _cast_run(self, to: _Recipients, run: list[_Cast]) -> int:
        """Several broadcasts to one room's recipients: each gets them in one write, and
        those who said some of them the others' (their own lines are not sent back)."""
        # (Not other nodes' members, nor those of other doors: they got it one by one.)
        speakers = {cast.excluded for cast in run if getattr(cast.excluded, "_direct", False)}
        count = self._cast(to.fast, _Joined([cast.event for cast in run]), None, speakers)
        for p in speakers:
            if p.state is not p.OPEN:
                continue
            theirs = [cast.event for cast in run if cast.excluded is not p]
            if theirs:
                p._send(b"".join([p.format.encode(event) for event in theirs]))
                self.delivered += sum(map(_lines, theirs))
                count += 1
        return count

    def _cast(self, fast: list[Any], event: Any, excluded: Any, skip: Any) -> int:
        """Write ``event`` to each of ``fast`` but ``excluded`` and ``skip``: sent at once
        when nothing waits before it (as ``fastwrite.write_now``), else through the
        connection's queue.  Per member only what must be looked at is."""
        renderer = None
        data = b""
        size = 0
        direct_bytes = 0
        count = 0
        for p in fast:
            if p is excluded or (skip and p in skip) or p.state is not p.OPEN:
                continue
            t = p.transport
            count += 1
            if p.format is not renderer:
                renderer = p.format
                if type(event) is _Joined:  # (once per rendering: members may alternate)
                    data = event.wire.get(renderer) or event.wire.setdefault(
                        renderer, b"".join([renderer.encode(e) for e in event.events])
                    )
                else:
                    data = renderer.encode(event)
                size = len(data)
            if (
                p.queue is None
                and not p.gate.paused
                and not t._tempDataBuffer
                and t.offset == len(t.dataBuffer)
                and not t.disconnecting
            ):
                try:
                    sent = t.socket.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as e:  # as write_now: kept to describe the loss
                    t.write(data)
                    if p._send_error is None:
                        p._send_error = e
                    sent = size
                if sent != size:
                    t.write(data[sent:])
                direct_bytes += size
            else:
                p._send(data)  # counts its bytes itself
        if self.tally is not None:
            self.tally.bytes_out += direct_bytes
        self.delivered += count * _lines(event)
        return count


class _Recipients:
    """A room's members as ``Batcher`` writes to them: the connections on plain TCP
    (``fast``; one reference each, as a room of 10,000 keeps them), and the rest."""

    __slots__ = ("fast", "others", "version")

    def __init__(self, room: Room) -> None:
        self.version = room.version
        self.fast: list[Any] = []
        self.others: list[Member] = []
        for member in room.members:
            p: Any = member.participant
            if getattr(p, "_direct", False) and getattr(p, "transport", None) is not None:
                self.fast.append(p)
            else:
                self.others.append(member)


class _Cast(NamedTuple):
    to: _Recipients
    event: Any
    excluded: Any
    waiting: set[Any] | None


def _lines(event: Any) -> int:
    """How many lines an event is, as --metrics counts deliveries."""
    if type(event) is _Joined:
        return sum(map(_lines, event.events))
    events = getattr(event, "events", None)  # a Batch
    return 1 if events is None else len(events)


class _Joined:
    """Several events written as one (``_cast_run``): its bytes, per renderer, are
    theirs in order."""

    __slots__ = ("events", "wire")

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.wire: dict[Any, bytes] = {}


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
