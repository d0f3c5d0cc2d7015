"""Log lines that come once per connection (connects, renames, quits), kept affordable.

Formatting and writing one line costs about as much as seating a member; during a storm
of connections the log would take a large share of the server's time and grow without
bound. ``BusyLog`` writes the first ``per_second`` lines of its kind each second as
usual and counts the rest, summed up in one line a second later.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

PER_SECOND = 20


class BusyLog:
    def __init__(
        self, log: Logger, clock: IReactorTime, what: str, per_second: int = PER_SECOND
    ) -> None:
        self.log = log
        self.clock = clock
        self.what = what  # how the summary names the lines: "connects", "renames"
        self.per_second = per_second
        self._since = float("-inf")
        self._shown = 0
        self._skipped = 0
        self._summary: IDelayedCall | None = None

    def info(self, fmt: str, via: Logger | None = None, **fields: Any) -> None:
        """Like ``Logger.info`` (through ``via``, when the line belongs to a namespace
        of its own, such as a front door's)."""
        now = self.clock.seconds()
        if now - self._since >= 1.0:
            self._since, self._shown = now, 0
        if self._shown < self.per_second:
            self._shown += 1
            (via or self.log).info(fmt, **fields)
            return
        self._skipped += 1
        if self._summary is None:
            self._summary = self.clock.callLater(1.0, self._sum_up)

    def _sum_up(self) -> None:
        self._summary = None
        count, self._skipped = self._skipped, 0
        if count:
            self.log.info(
                "... and {count} more {what} not logged one by one (busy)",
                count=count,
                what=self.what,
            )
