"""History: what was said in each room, kept across restarts (SQLite by default)."""

from twisted_chat.history.seam import StoredHistory
from twisted_chat.history.store import (
    Entry,
    HistoryUnavailable,
    SQLiteHistory,
    conversation,
)

__all__ = ["Entry", "HistoryUnavailable", "SQLiteHistory", "StoredHistory", "conversation"]
