"""Everything the server tells a participant, as plain values.

The core builds an event once and hands the same object to every recipient; how it looks
on the wire is for ``twisted_chat.render``, which front doors use.  Each event has a slot
per built-in rendering where the renderer keeps its bytes, so fan-out to thousands of
members formats it once, not once per member.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(kw_only=True, eq=False, slots=True)
class Event:
    type: ClassVar[str] = "event"
    ts: float
    # The bytes of each rendering, owned by twisted_chat.render: a slot read and an
    # identity test per recipient (a dict keyed by format cost a hash call each).
    text_wire: bytes | None = field(default=None, init=False, repr=False)
    json_wire: bytes | None = field(default=None, init=False, repr=False)
    # The same, each in a WebSocket frame (twisted_chat.doors.websocket).
    ws_json_wire: bytes | None = field(default=None, init=False, repr=False)
    ws_text_wire: bytes | None = field(default=None, init=False, repr=False)


@dataclass(kw_only=True, eq=False, slots=True)
class Welcome(Event):
    type: ClassVar[str] = "welcome"
    nick: str
    rooms: Sequence[str]
    current: str | None
    heartbeat_interval: float
    heartbeat_timeout: float
    sweep_interval: float
    idle_warning: float
    max_line: int
    version: str
    format: str  # the name of the rendering the member asked for
    # The short forms of the commands the member may use, from the command table.
    commands: Sequence[str]
    limits: dict[str, float] | None = None
    logged_in: bool = False


@dataclass(kw_only=True, eq=False, slots=True)
class _RoomText(Event):
    room: str
    nick: str
    text_: str


@dataclass(kw_only=True, eq=False, slots=True)
class LoginNeeded(Event):
    """Sent instead of the welcome when the server requires a login."""

    type: ClassVar[str] = "login-required"
    attempts: int


@dataclass(kw_only=True, eq=False, slots=True)
class Message(_RoomText):
    type: ClassVar[str] = "message"


@dataclass(kw_only=True, eq=False, slots=True)
class Action(_RoomText):
    type: ClassVar[str] = "action"


@dataclass(kw_only=True, eq=False, slots=True)
class Private(Event):
    """Sent to both the recipient and the sender (as confirmation), so it names both."""

    type: ClassVar[str] = "private"
    sender: str
    recipient: str
    text_: str


@dataclass(kw_only=True, eq=False, slots=True)
class Join(Event):
    type: ClassVar[str] = "join"
    room: str
    nick: str
    count: int


@dataclass(kw_only=True, eq=False, slots=True)
class _Departure(Event):
    """Someone left a room: the fields Part, Quit and Disconnected share."""

    room: str
    nick: str
    reason: str
    # Leaving the server: every room the recipient shared with it (``room`` is the first),
    # so it is told once however many rooms they shared.  Empty for a /part.
    rooms: Sequence[str] = ()


@dataclass(kw_only=True, eq=False, slots=True)
class Part(_Departure):
    type: ClassVar[str] = "part"


@dataclass(kw_only=True, eq=False, slots=True)
class Quit(_Departure):
    type: ClassVar[str] = "quit"


@dataclass(kw_only=True, eq=False, slots=True)
class TimedOut(Event):
    type: ClassVar[str] = "timeout"
    room: str
    nick: str
    after: float
    rooms: Sequence[str] = ()  # as for a quit: every room shared with the recipient


@dataclass(kw_only=True, eq=False, slots=True)
class Disconnected(_Departure):
    """The member's connection went away without a /quit (closed, reset, dropped)."""

    type: ClassVar[str] = "disconnect"


@dataclass(kw_only=True, eq=False, slots=True)
class NickChange(Event):
    type: ClassVar[str] = "nick"
    old: str
    new: str


@dataclass(kw_only=True, eq=False, slots=True)
class Current(Event):
    """The room plain text lines now go to (``None``: not in any room)."""

    type: ClassVar[str] = "current"
    room: str | None


@dataclass(kw_only=True, eq=False, slots=True)
class Members(Event):
    type: ClassVar[str] = "members"
    room: str
    members: Sequence[str]
    ops: Sequence[str] = ()  # the room's operators among them


@dataclass(kw_only=True, eq=False, slots=True)
class Topic(Event):
    """A room's topic: told to a joiner, to the room when it changes (``by``: who
    changed it; ``changed``), and as the answer to ``/topic``."""

    type: ClassVar[str] = "topic"
    room: str
    topic: str  # "" when none is set
    by: str | None = None
    set_at: float | None = None
    locked: bool = False
    changed: bool = False


@dataclass(kw_only=True, eq=False, slots=True)
class Moderation(Event):
    """An operator acted in a room (``by`` None: the server, when the last operator left
    and the longest-present member became one); the room is told every action."""

    type: ClassVar[str] = "moderation"
    room: str
    action: str  # op, deop, mute, unmute, ban, unban, lock-topic, unlock-topic
    by: str | None
    target: str = ""
    reason: str = ""


@dataclass(kw_only=True, eq=False, slots=True)
class Bans(Event):
    """A room's bans (``room``), or the server's (``room`` None), for an operator."""

    type: ClassVar[str] = "bans"
    room: str | None
    bans: Sequence[tuple[str, str, str]]  # who (or which network), by, reason


@dataclass(kw_only=True, eq=False, slots=True)
class Notice(Event):
    """The server answers one member: what its command did."""

    type: ClassVar[str] = "notice"
    text: str


@dataclass(kw_only=True, eq=False, slots=True)
class Wall(Event):
    """A server operator's notice to everyone."""

    type: ClassVar[str] = "wall"
    by: str
    text: str


@dataclass(kw_only=True, eq=False, slots=True)
class RoomList(Event):
    """Rooms with member counts, largest first, then by name: at most a page of them.

    ``total`` counts every room that matched (all rooms, or those containing ``query``),
    so a listing of thousands of rooms stays a few KiB and still says how many there are.
    """

    type: ClassVar[str] = "rooms"
    rooms: Sequence[tuple[str, int, str]]  # name, members, topic
    total: int
    query: str | None = None


@dataclass(kw_only=True, eq=False, slots=True)
class Help(Event):
    type: ClassVar[str] = "help"
    commands: Sequence[tuple[str, str]]


@dataclass(kw_only=True, eq=False, slots=True)
class Pong(Event):
    type: ClassVar[str] = "pong"
    token: str


@dataclass(kw_only=True, eq=False, slots=True)
class IdleWarning(Event):
    type: ClassVar[str] = "idle"
    idle: float
    remaining: float


@dataclass(kw_only=True, eq=False, slots=True)
class SlowDown(Event):
    """Private: the member's lines are now delayed by the input rate limit."""

    type: ClassVar[str] = "slow-down"
    rate: float
    waiting: int


@dataclass(kw_only=True, eq=False, slots=True)
class Bye(Event):
    """The last line a member gets before the server closes its connection."""

    type: ClassVar[str] = "bye"
    reason: str


@dataclass(kw_only=True, eq=False, slots=True)
class Shutdown(Event):
    type: ClassVar[str] = "shutdown"
    reason: str


@dataclass(kw_only=True, eq=False, slots=True)
class Network(Event):
    """To everyone on a node: it lost or regained the other nodes of its network."""

    type: ClassVar[str] = "network"
    up: bool
    message: str


@dataclass(kw_only=True, eq=False, slots=True)
class Error(Event):
    type: ClassVar[str] = "error"
    code: str
    message: str


def describe_crowd(
    joined: Sequence[str],
    joined_count: int,
    left: Sequence[str],
    left_count: int,
    renamed: Sequence[Sequence[str]],
    renamed_count: int,
) -> str:
    """``37 joined: a, b (+35); 2 left: c, d; 1 renamed: e -> f``.

    Text, yet kept in the core: the client, which may import only the core, words a
    ``crowd`` event the same way.
    """

    def names(shown: Sequence[str], count: int) -> str:
        more = count - len(shown)
        return ", ".join(shown) + (f" (+{more})" if more > 0 else "")

    parts = []
    if joined_count:
        parts.append(f"{joined_count} joined: {names(joined, joined_count)}")
    if left_count:
        parts.append(f"{left_count} left: {names(left, left_count)}")
    if renamed_count:
        pairs = [f"{old} -> {new}" for old, new in renamed]
        parts.append(f"{renamed_count} renamed: {names(pairs, renamed_count)}")
    return "; ".join(parts)


_DONE = {
    "op": "made {target} an operator",
    "deop": "took operator status from {target}",
    "mute": "muted {target}",
    "unmute": "unmuted {target}",
    "ban": "banned {target}",
    "unban": "lifted the ban on {target}",
    "lock-topic": "locked the topic: only operators may change it",
    "unlock-topic": "unlocked the topic: anyone here may change it",
}


def describe_moderation(action: str, by: str | None, target: str, reason: str | None) -> str:
    """``alice banned spam* (bots)``: a ``moderation`` event after its room, worded
    alike by the server's text and the client (as ``describe_crowd``)."""
    if by is None and action == "op":
        return f"{target} is an operator now (the room had no operator left)"
    what = _DONE.get(action, action + " {target}").format(target=target)
    return f"{by} {what}" + (f" ({reason})" if reason else "")


def describe_topic(
    topic: str, by: str | None, set_at: float | None, locked: bool, changed: bool
) -> str:
    """A ``topic`` event after its room: the change, or the topic as it stands."""
    lock = " (locked: only operators change it)" if locked else ""
    if changed:
        if not topic:
            return f"{by} cleared the topic{lock}"
        return f"{by} set the topic: {topic}{lock}"
    if not topic:
        return f"No topic is set{lock}"
    when = "" if set_at is None else " " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(set_at))
    return f"Topic: {topic} (set by {by}{when}){lock}"


def describe_bans(room: str | None, bans: Sequence[Sequence[str | None]]) -> str:
    """A ``bans`` answer after its room (``bans: ...``), or the server's (``room`` None)."""
    listed = ", ".join(
        f"{target} (by {by}: {why})" if why else f"{target} (by {by})" for target, by, why in bans
    )
    if room is None:
        return f"Server bans: {listed}" if bans else "No server bans"
    return f"bans: {listed}" if bans else "no bans"


@dataclass(kw_only=True, eq=False, slots=True)
class Crowd(Event):
    """Arrivals, departures and renames in a crowded room, announced together.

    In a room of thousands, announcing every join to everyone costs O(members) per join:
    seating N people costs N squared lines.  Above ``--summarize-above`` members the
    core collects them and sends one of these every ``--summary-interval`` seconds.
    """

    type: ClassVar[str] = "crowd"
    room: str
    count: int
    joined: Sequence[str]
    joined_count: int
    left: Sequence[str]
    left_count: int
    renamed: Sequence[tuple[str, str]]
    renamed_count: int


@dataclass(kw_only=True, eq=False, slots=True)
class History(Event):
    """What was said before, oldest first: a room's last lines on joining it, or a page
    ``/history`` asked for. Each item has ``id``, ``ts`` (when it was said), ``kind``,
    ``nick``, ``text`` and ``to`` (a private message's recipient, else None).

    ``room`` names the room, or is None for a private conversation with ``with_``;
    ``more``: older lines are kept; ``page``: it answers ``/history``.
    """

    type: ClassVar[str] = "history"
    room: str | None
    items: Sequence[Any]
    with_: str | None = None
    more: bool = False
    page: bool = False


@dataclass(kw_only=True, eq=False, slots=True)
class Batch(Event):
    """A run of events for one audience, handed once to each member of it.

    Within one input turn the core keeps extending the open batch while the same room
    broadcasts to the same members, so N lines into a room of R members cost R
    deliveries, not N x R.  Rendering seals it: what a recipient has been written never
    grows.  Its bytes are its events' bytes in order, cached like any event's.
    """

    type: ClassVar[str] = "batch"
    events: list[Event]
    sealed: bool = False
