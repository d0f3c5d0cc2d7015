"""The store as the chat core sees it: ``IHistory``."""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from twisted_chat.core.interfaces import IHistory
from twisted_chat.history.store import Entry, SQLiteHistory


@implementer(IHistory)
class StoredHistory:
    """Room lines kept in an ``SQLiteHistory``; ``replay`` of them shown on join."""

    def __init__(self, store: SQLiteHistory, replay: int) -> None:
        self.store = store
        self.replay = replay

    def record(self, room: str, ts: float, kind: str, nick: str, text: str) -> None:
        self.store.append(room, ts, kind, nick, text)

    def recent(self, room: str, n: int) -> Sequence[Entry]:
        return self.store.recent(room, n)
