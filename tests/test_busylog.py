"""Per-connection log lines during a storm: the first of each second one by one, the
rest summed up."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import task
from twisted.logger import ILogObserver, Logger, formatEvent

from twisted_chat.core.busylog import BusyLog


def test_lines_beyond_the_rate_are_counted_and_summed_up_a_second_later():
    seen: list[dict[str, Any]] = []
    clock = task.Clock()
    observer = cast(ILogObserver, seen.append)
    busy = BusyLog(Logger(observer=observer), clock, "connects", per_second=3)
    for i in range(5):
        busy.info("connect {n}", n=i)
    assert [formatEvent(e) for e in seen] == ["connect 0", "connect 1", "connect 2"]
    clock.advance(1.0)
    assert formatEvent(seen[-1]) == "... and 2 more connects not logged one by one (busy)"
    assert seen[-1]["count"] == 2
    busy.info("connect {n}", n=9)  # a new second: one by one again
    assert formatEvent(seen[-1]) == "connect 9"
    clock.advance(5)
    assert len(seen) == 5  # nothing skipped, no summary
