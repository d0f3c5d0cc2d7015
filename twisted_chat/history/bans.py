"""Server-wide bans kept in a small JSON file, for a server that keeps no history (with
history they are a table of the history file: ``SQLiteHistory.save_bans``)."""

from __future__ import annotations

import json
import os
import tempfile

from twisted.logger import Logger

from twisted_chat.core.errors import HistoryUnavailable

BANS_FILE = "groupchat-bans.json"


class BanFile:
    """``[[network, by, reason], ...]``, rewritten whole (a rename) on every change:
    bans change when an operator says so, a few times a day at most."""

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> list[tuple[str, str, str]]:
        """The bans in the file (none if there is no file); a file that cannot be read is
        refused at start, like a bad history file."""
        try:
            with open(self.path, encoding="utf-8") as f:
                rows = json.load(f)
            return [(str(n), str(by), str(why)) for n, by, why in rows]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError) as e:
            raise HistoryUnavailable(
                f"cannot read the server bans in {self.path}: {e}; fix or move the file"
            ) from e

    def save(self, bans: list[tuple[str, str, str]]) -> None:
        folder = os.path.dirname(self.path) or "."
        try:
            fd, tmp = tempfile.mkstemp(prefix=".bans-", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump([list(b) for b in bans], f, ensure_ascii=False, indent=1)
            os.replace(tmp, self.path)
        except OSError:
            self.log.failure("saving server bans to {path} failed", path=self.path)
