"""The store as the chat core sees it: ``IHistory``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from zope.interface import implementer

from twisted_chat.core.interfaces import IHistory
from twisted_chat.history.store import Entry, SQLiteHistory

# What one answer may hold, in bytes of text: what a member is shown lands in its send
# queue (256 KiB by default), and 200 lines of 2 KiB each would pass it. The newest lines
# are kept; "more" then says the rest can be asked for.
REPLAY_BYTES = 16 * 1024
PAGE_BYTES = 32 * 1024


class _Line(Protocol):
    @property
    def nick(self) -> str: ...

    @property
    def text(self) -> str: ...


L = TypeVar("L", bound=_Line)


def fit(items: Sequence[L], more: bool, budget: int) -> tuple[list[L], bool]:
    """The newest of ``items`` that fit in ``budget`` (at least one), oldest first."""
    used = 0
    start = len(items)
    while start > 0:
        item = items[start - 1]
        used += len(item.text.encode()) + len(item.nick.encode()) + 48
        if used > budget and start < len(items):
            return list(items[start:]), True
        start -= 1
    return list(items), more


@implementer(IHistory)
class StoredHistory:
    """Lines kept in an ``SQLiteHistory``; ``replay`` of a room's shown on join;
    private messages too when ``private``."""

    enabled = True

    def __init__(self, store: SQLiteHistory, replay: int, private: bool = False) -> None:
        self.store = store
        self.replay = replay
        self.private = private

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
        self.store.append(key, ts, kind, nick, text, to)

    def recent(self, key: str, n: int) -> tuple[list[Entry], bool]:
        items, more = self.store.recent(key, n)
        return fit(items, more, REPLAY_BYTES)

    def mark(self, key: str) -> int:
        return self.store.mark()

    def before(
        self, key: str, before_id: int, n: int
    ) -> defer.Deferred[tuple[Sequence[Any], bool]]:
        d = self.store.before(key, before_id, n)
        return d.addCallback(lambda found: fit(found[0], found[1], PAGE_BYTES))
