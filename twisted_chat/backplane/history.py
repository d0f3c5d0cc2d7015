"""History for a network of nodes: a capped Redis stream per room, and every node's memory.

Where the lines are kept: ``gc:hist:<room key>``, a stream capped at ``--history-keep``
entries (``MAXLEN ~``), each entry one field ``e`` holding the line as JSON; the set
``gc:hist:rooms`` names the streams, so that a node starting up can read their last
lines. A line is added by the script that publishes the envelope carrying it, in the same
step: the stream ids it was given are appended to the envelope (``"h"``), so every node
learns them with the line itself.

What a joiner is shown comes from memory, as on one node, in the same turn as the join:
each node keeps the last lines of every room in the order it delivered them live (its
own members' lines at once, the others' as their envelopes arrive), so nothing is missed
or shown twice. A line of this node's is numbered once its envelope is published (a
fraction of a millisecond): until then its id is None. ``/history`` reads the stream.

An id is the stream id ``ms-seq`` as one integer, ``ms * 1024 + seq``: increasing in a
room, below 2**53 (JavaScript) for centuries, and, being Redis's time, still increasing
after Redis lost its data.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat.core.errors import HistoryUnavailable
from twisted_chat.core.interfaces import IHistory
from twisted_chat.history.seam import PAGE_BYTES, REPLAY_BYTES, fit
from twisted_chat.history.store import PAGE_MAX, last_lines

STREAM = "gc:hist:"
ROOMS = "gc:hist:rooms"
SEQ_BITS = 1024  # stream ids' sequence numbers per millisecond an id has room for


def to_id(stream_id: str | bytes) -> int:
    """``"1764583200123-4"`` -> one integer, ordered as the stream ids are."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms) * SEQ_BITS + min(int(seq or 0), SEQ_BITS - 1)


def to_stream_id(ident: int) -> str:
    ms, seq = divmod(ident, SEQ_BITS)
    return f"{ms}-{seq}"


@dataclass(slots=True)
class Line:
    """A kept line; ``id`` is None until the network has numbered it."""

    id: int | None
    room: str
    ts: float
    kind: str
    nick: str
    text: str
    to: str | None = None


class Reader(Protocol):
    """What this needs of the Redis link: reading a stream, newest first."""

    def connected(self) -> bool: ...

    def read_back(self, stream: str, before: str, count: int) -> defer.Deferred[Any]: ...


def parse_entry(room: str, stream_id: Any, fields: Any) -> Line | None:
    """A stream entry as a line; None for one that cannot be read."""
    try:
        if not isinstance(fields, dict):  # a flat [name, value, ...] list
            values = list(fields)
            fields = dict(zip(values[::2], values[1::2], strict=True))
        raw = fields.get("e", fields.get(b"e"))
        data = json.loads(raw if isinstance(raw, str | bytes) else "")
        return Line(
            to_id(stream_id),
            room,
            float(data["ts"]),
            str(data["kind"]),
            str(data["nick"]),
            str(data["text"]),
        )
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def entry_json(ts: float, kind: str, nick: str, text: str) -> str:
    return json.dumps(
        {"ts": round(ts, 3), "kind": kind, "nick": nick, "text": text},
        ensure_ascii=False,
        separators=(",", ":"),
    )


@implementer(IHistory)
class NetworkHistory:
    """Every room's last lines in memory, all of them in Redis (see the module)."""

    log = Logger()
    enabled = True
    private = False  # not yet over the network

    def __init__(
        self,
        clock: IReactorTime,
        replay: int,
        keep: int,
        days: float | None = None,
        tail: int = 200,
    ) -> None:
        self.clock = clock
        self.replay = replay
        self.keep = keep
        self.days = days
        self.tail = min(tail, keep)
        self.reader: Reader | None = None
        self._tails: dict[str, deque[Line]] = {}
        # This node's lines waiting for their ids, in the order they were published.
        self._unnumbered: deque[Line] = deque()
        self._top: dict[str, int] = {}  # the highest id known in each room

    # -- IHistory ------------------------------------------------------------------------

    def record(
        self,
        key: str,
        ts: float,
        kind: str,
        nick: str,
        text: str,
        to: str | None = None,
        ident: int | None = None,
    ) -> None:
        tail = self._tail(key)
        if ident is None:
            line = Line(None, key, ts, kind, nick, text, to)
            self._unnumbered.append(line)
        else:
            top = self._top.get(key)
            if top is not None and ident <= top:
                # Out of order, which is rare: already here from a read of the stream?
                if any(line.id == ident for line in tail):
                    return
            else:
                self._top[key] = ident
            line = Line(ident, key, ts, kind, nick, text, to)
        tail.append(line)

    def recent(self, key: str, n: int) -> tuple[list[Line], bool]:
        items, more = last_lines(self._tails.get(key), n, self.days, self.clock)
        return fit(items, more, REPLAY_BYTES)

    def mark(self, key: str) -> int:
        top = self._top.get(key)
        if top is not None:
            return top + 1
        return int(self.clock.seconds() * 1000) * SEQ_BITS  # nothing known: from now

    def before(
        self, key: str, before_id: int, n: int
    ) -> defer.Deferred[tuple[Sequence[Any], bool]]:
        n = max(0, min(n, PAGE_MAX))
        reader = self.reader
        if reader is None or not reader.connected():
            return defer.fail(
                HistoryUnavailable("history is out of reach while the network is split")
            )
        if n == 0:
            return defer.succeed(([], False))
        d = reader.read_back(STREAM + key, "(" + to_stream_id(before_id), n + 1)

        def read(entries: Any) -> tuple[list[Line], bool]:
            lines = [parse_entry(key, sid, fields) for sid, fields in entries or ()]
            found = [line for line in lines if line is not None]
            more = len(found) > n
            return fit(list(reversed(found[:n])), more, PAGE_BYTES)

        def failed(reason: Failure) -> Failure:
            if reason.check(defer.CancelledError):
                return reason
            self.log.failure("reading history of {room} failed", reason, room=key)
            return Failure(HistoryUnavailable("history cannot be read just now; try later"))

        return d.addCallbacks(read, failed)

    # -- the network's side --------------------------------------------------------------

    def numbered(self, ids: Sequence[Any]) -> None:
        """This node's next ``len(ids)`` published lines were given these stream ids."""
        for stream_id in ids:
            if not self._unnumbered:
                return
            line = self._unnumbered.popleft()
            line.id = ident = to_id(stream_id)
            if ident > self._top.get(line.room, -1):
                self._top[line.room] = ident

    def unnumbered(self, count: int) -> None:
        """This node's next ``count`` lines were not published (the network was split, or
        Redis failed): they stay in memory, without an id, and are not in the stream."""
        for _ in range(min(count, len(self._unnumbered))):
            self._unnumbered.popleft()

    def loaded(self, key: str, lines: list[Line]) -> None:
        """A room's last lines read from Redis (oldest first), as a node starts or comes
        back: merged with what arrived meanwhile, by id."""
        tail = self._tail(key)
        have = {line.id for line in tail if line.id is not None}
        older = [line for line in lines if line.id is not None and line.id not in have]
        if not older:
            return
        if have:  # what arrived meanwhile is newer: only what came before it is added
            first = min(have)
            older = [line for line in older if line.id is not None and line.id < first]
        merged = [*older, *tail][-self.tail :] if self.tail else []
        tail.clear()
        tail.extend(merged)
        top = max(line.id for line in older if line.id is not None) if older else None
        if top is not None and top > self._top.get(key, -1):
            self._top[key] = top

    def rooms(self) -> list[str]:
        return list(self._tails)

    def _tail(self, key: str) -> deque[Line]:
        found = self._tails.get(key)
        if found is None:
            found = self._tails[key] = deque(maxlen=self.tail)
        return found
