"""Shared fixtures.  Importing the reactor here would break ``--reactor=asyncio``: don't."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from zope.interface import implementer

# End-to-end fixtures (they start subprocesses only when a test asks for them).
from tests.e2e_support import connect, start_server  # noqa: F401
from tests.redis_support import redis_server  # noqa: F401


@implementer(ILogObserver)
class LoggedErrors:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.expected = False

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if "log_failure" in event or (level is not None and level >= LogLevel.error):
            self.events.append(event)


@pytest.fixture(autouse=True)
def logged_errors() -> Iterator[LoggedErrors]:
    """Fail any test that logged an error it did not ask for (set ``.expected = True``)."""
    observer = LoggedErrors()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)
    if observer.events and not observer.expected:
        from twisted.logger import formatEvent

        shown = "\n".join(formatEvent(e) for e in observer.events)
        pytest.fail(f"unexpected errors were logged:\n{shown}")
