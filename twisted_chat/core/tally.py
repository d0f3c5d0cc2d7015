"""Plain counters the chat and its connections add to as things happen.

One ``Tally`` per server, made by ``ChatService`` (``service.tally``) and shared by the
rules and the front doors.  Counting is an integer add on an object that exists anyway,
whether or not anybody reads it; ``--metrics`` (``twisted_chat.metrics``) reads them at
scrape time, on the reactor thread.  Anything dearer than an add (timing, the reactor
lag loop) is only set up with ``--metrics``.
"""

from __future__ import annotations

# Why connections end, as ``disconnect`` is told; other reasons may be added by name.
#   quit: /quit; timeout: no heartbeat; flood: held back by the input limits too long;
#   not_reading: its send queue overflowed; refused: turned away by a connection limit;
#   login: failed logins, refused by the throttle, or no login in time; kicked, banned:
#   removed by an operator; lost: the client closed or lost the connection itself.
DISCONNECT_REASONS = (
    "quit",
    "timeout",
    "flood",
    "not_reading",
    "refused",
    "login",
    "killed",
    "kicked",
    "banned",
    "lost",
)


class Tally:
    """What happened since the server started, counted, never reset."""

    __slots__ = (
        "accepted",
        "bytes_in",
        "bytes_out",
        "disconnects",
        "ended",
        "login_failures",
        "messages",
        "privates",
    )

    def __init__(self) -> None:
        self.messages = 0  # room messages and actions said by this node's members
        self.privates = 0  # private messages sent by this node's members
        self.bytes_in = 0  # read from chat connections, every byte (telnet, frames too)
        self.bytes_out = 0  # written (or queued) to chat connections
        self.login_failures = 0  # wrong passwords and unusable login names
        # Connections each front door admitted, and those of them that have ended.
        self.accepted: dict[str, int] = {}
        self.ended: dict[str, int] = {}
        self.disconnects: dict[str, int] = dict.fromkeys(DISCONNECT_REASONS, 0)

    def disconnect(self, reason: str) -> None:
        """A connection ends (or is refused) for ``reason`` (see ``DISCONNECT_REASONS``)."""
        self.disconnects[reason] = self.disconnects.get(reason, 0) + 1

    def opened(self, door: str) -> None:
        """``door`` admitted a connection."""
        self.accepted[door] = self.accepted.get(door, 0) + 1

    def closed(self, door: str) -> None:
        """A connection ``door`` admitted has ended."""
        self.ended[door] = self.ended.get(door, 0) + 1
