"""Everything the server tells a participant, as value objects with two renderings.

An event is built once by the core and handed to every recipient; each rendering is
encoded at most once per event however many recipients it has, so fan-out costs one
``bytes`` object, not one formatting call per member.  Text lines from the server start
with ``***`` (or ``!!!`` for errors); lines a user can cause start with ``[#room]`` or
``[PM`` followed by the sender's nickname, so no user can forge a server line.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


class Format(enum.Enum):
    TEXT = "text"
    JSON = "json"


@dataclass(kw_only=True, eq=False, slots=True)
class Event:
    type: ClassVar[str] = "event"
    ts: float
    # One slot per rendering, tested by identity: keying a dict by the Enum member cost a
    # Python-level __hash__ call per recipient in the fan-out profile.
    _text_wire: bytes | None = field(default=None, init=False, repr=False)
    _json_wire: bytes | None = field(default=None, init=False, repr=False)

    def payload(self) -> dict[str, Any]:
        """The event's own fields for the JSON rendering (``type`` and ``ts`` are added)."""
        raise NotImplementedError

    def text(self) -> str:
        """The human rendering: one or more lines joined by ``\\n``."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "ts": round(self.ts, 3), **self.payload()}

    def encode(self, fmt: Format) -> bytes:
        """The bytes to write for ``fmt``, computed once and shared by every recipient."""
        if fmt is Format.TEXT:
            wire = self._text_wire
            if wire is None:
                wire = self._text_wire = self.render(fmt)
            return wire
        wire = self._json_wire
        if wire is None:
            wire = self._json_wire = self.render(fmt)
        return wire

    def render(self, fmt: Format) -> bytes:
        """The wire bytes for ``fmt``, uncached: ``encode`` is what callers use."""
        if fmt is Format.TEXT:
            return self.text().replace("\n", "\r\n").encode("utf-8") + b"\r\n"
        body = json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))
        return body.encode("utf-8") + b"\r\n"


def _secs(value: float) -> str:
    return f"{value:g}"


def _approx(seconds: float) -> str:
    """Whole seconds when that is precise enough, tenths for short spans."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


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
    format: Format
    limits: dict[str, float] | None = None
    logged_in: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "nick": self.nick,
            "rooms": list(self.rooms),
            "current": self.current,
            "heartbeat": {
                "interval": self.heartbeat_interval,
                "timeout": self.heartbeat_timeout,
                "sweep": self.sweep_interval,
                "warning": self.idle_warning,
            },
            "max_line": self.max_line,
            "limits": self.limits,
            "logged_in": self.logged_in,
            "server": "groupchat",
            "version": self.version,
            "format": self.format.value,
        }

    def text(self) -> str:
        where = f"You are in {self.current}." if self.current else "You are in no room."
        return "\n".join(
            [
                f"*** Welcome to groupchat {self.version}, {self.nick}! {where}",
                "*** Type a line to talk in your current room. Commands: "
                + ("" if self.logged_in else "/nick NAME, ")
                + "/join #room, /part [#room], /rooms, /who [#room], /msg NICK text, /me action, "
                "/ping [token], /format json|text, /help, /quit [reason]",
                f"*** Heartbeat: send any line (for example /ping) at least every "
                f"{_secs(self.heartbeat_interval)} s; after {_secs(self.heartbeat_timeout)} s "
                "of silence you are disconnected (you are warned first).",
                f"*** Lines are limited to {self.max_line} bytes.",
            ]
        )


@dataclass(kw_only=True, eq=False, slots=True)
class _RoomText(Event):
    room: str
    nick: str
    text_: str

    def payload(self) -> dict[str, Any]:
        return {"room": self.room, "nick": self.nick, "text": self.text_}


@dataclass(kw_only=True, eq=False, slots=True)
class LoginNeeded(Event):
    """Sent instead of the welcome when the server requires a login."""

    type: ClassVar[str] = "login-required"
    attempts: int

    def payload(self) -> dict[str, Any]:
        return {"attempts": self.attempts}

    def text(self) -> str:
        return (
            "*** Welcome to groupchat. This server needs a login: /login NAME PASSWORD "
            f"({self.attempts} attempts left; other commands: /format, /ping, /quit)"
        )


@dataclass(kw_only=True, eq=False, slots=True)
class Message(_RoomText):
    type: ClassVar[str] = "message"

    def text(self) -> str:
        return f"[{self.room}] <{self.nick}> {self.text_}"


@dataclass(kw_only=True, eq=False, slots=True)
class Action(_RoomText):
    type: ClassVar[str] = "action"

    def text(self) -> str:
        return f"[{self.room}] * {self.nick} {self.text_}"


@dataclass(kw_only=True, eq=False, slots=True)
class Private(Event):
    """Sent to both the recipient and the sender (as confirmation), so it names both."""

    type: ClassVar[str] = "private"
    sender: str
    recipient: str
    text_: str

    def payload(self) -> dict[str, Any]:
        return {"from": self.sender, "to": self.recipient, "text": self.text_}

    def text(self) -> str:
        return f"[PM {self.sender} -> {self.recipient}] {self.text_}"


@dataclass(kw_only=True, eq=False, slots=True)
class Join(Event):
    type: ClassVar[str] = "join"
    room: str
    nick: str
    count: int

    def payload(self) -> dict[str, Any]:
        return {"room": self.room, "nick": self.nick, "count": self.count}

    def text(self) -> str:
        return f"*** [{self.room}] {self.nick} joined ({self.count} here)"


@dataclass(kw_only=True, eq=False, slots=True)
class _Departure(Event):
    """Someone left a room; ``verb`` says how, in the text rendering."""

    verb: ClassVar[str] = "left"
    room: str
    nick: str
    reason: str
    # Leaving the server: every room the recipient shared with it (``room`` is the first),
    # so it is told once however many rooms they shared.  Empty for a /part.
    rooms: Sequence[str] = ()

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"room": self.room, "nick": self.nick, "reason": self.reason}
        if self.rooms:
            body["rooms"] = list(self.rooms)
        return body

    def text(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        where = ", ".join(self.rooms) if self.rooms else self.room
        return f"*** [{where}] {self.nick} {self.verb}{why}"


@dataclass(kw_only=True, eq=False, slots=True)
class Part(_Departure):
    type: ClassVar[str] = "part"
    verb: ClassVar[str] = "left"


@dataclass(kw_only=True, eq=False, slots=True)
class Quit(_Departure):
    type: ClassVar[str] = "quit"
    verb: ClassVar[str] = "quit"


@dataclass(kw_only=True, eq=False, slots=True)
class TimedOut(Event):
    type: ClassVar[str] = "timeout"
    room: str
    nick: str
    after: float
    rooms: Sequence[str] = ()  # as for a quit: every room shared with the recipient

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"room": self.room, "nick": self.nick, "after": round(self.after, 1)}
        if self.rooms:
            body["rooms"] = list(self.rooms)
        return body

    def text(self) -> str:
        where = ", ".join(self.rooms) if self.rooms else self.room
        return f"*** [{where}] {self.nick} timed out (no heartbeat for {self.after:.1f} s)"


@dataclass(kw_only=True, eq=False, slots=True)
class Disconnected(_Departure):
    """The member's connection went away without a /quit (closed, reset, dropped)."""

    type: ClassVar[str] = "disconnect"
    verb: ClassVar[str] = "lost connection"


@dataclass(kw_only=True, eq=False, slots=True)
class NickChange(Event):
    type: ClassVar[str] = "nick"
    old: str
    new: str

    def payload(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new}

    def text(self) -> str:
        return f"*** {self.old} is now known as {self.new}"


@dataclass(kw_only=True, eq=False, slots=True)
class Current(Event):
    """The room plain text lines now go to (``None``: not in any room)."""

    type: ClassVar[str] = "current"
    room: str | None

    def payload(self) -> dict[str, Any]:
        return {"room": self.room}

    def text(self) -> str:
        if self.room is None:
            return "*** You are in no room now; /join #room to talk"
        return f"*** Now talking in {self.room}"


@dataclass(kw_only=True, eq=False, slots=True)
class Members(Event):
    type: ClassVar[str] = "members"
    room: str
    members: Sequence[str]

    TEXT_LIMIT: ClassVar[int] = 100

    def payload(self) -> dict[str, Any]:
        return {"room": self.room, "members": list(self.members)}

    def text(self) -> str:
        shown = ", ".join(self.members[: self.TEXT_LIMIT])
        more = len(self.members) - self.TEXT_LIMIT
        tail = f" and {more} more" if more > 0 else ""
        if not self.members:
            return f"*** [{self.room}] nobody here"
        return f"*** [{self.room}] {len(self.members)} here: {shown}{tail}"


@dataclass(kw_only=True, eq=False, slots=True)
class RoomList(Event):
    """Rooms with member counts, largest first, then by name: at most a page of them.

    ``total`` counts every room that matched (all rooms, or those containing ``query``),
    so a listing of thousands of rooms stays a few KiB and still says how many there are.
    """

    type: ClassVar[str] = "rooms"
    rooms: Sequence[tuple[str, int]]
    total: int
    query: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "rooms": [{"room": name, "count": count} for name, count in self.rooms],
            "total": self.total,
            "query": self.query,
        }

    def text(self) -> str:
        if not self.rooms:
            return "*** No rooms" if self.query is None else f'*** No rooms match "{self.query}"'
        listing = ", ".join(f"{name} ({count})" for name, count in self.rooms)
        what = "Rooms" if self.query is None else f'Rooms matching "{self.query}"'
        if len(self.rooms) >= self.total:
            return f"*** {what}: {listing}"
        hint = "; /rooms TEXT to search" if self.query is None else ""
        page = f"showing {len(self.rooms)} of {self.total}, largest first{hint}"
        return f"*** {what} ({page}): {listing}"


@dataclass(kw_only=True, eq=False, slots=True)
class Help(Event):
    type: ClassVar[str] = "help"
    commands: Sequence[tuple[str, str]]

    def payload(self) -> dict[str, Any]:
        return {"commands": [{"usage": u, "help": h} for u, h in self.commands]}

    def text(self) -> str:
        width = max(len(u) for u, _ in self.commands)
        lines = ["*** Commands (a line not starting with / is said in your current room):"]
        lines += [f"***   {u.ljust(width)}  {h}" for u, h in self.commands]
        return "\n".join(lines)


@dataclass(kw_only=True, eq=False, slots=True)
class Pong(Event):
    type: ClassVar[str] = "pong"
    token: str

    def payload(self) -> dict[str, Any]:
        return {"token": self.token}

    def text(self) -> str:
        return f"*** pong {self.token}".rstrip()


@dataclass(kw_only=True, eq=False, slots=True)
class IdleWarning(Event):
    type: ClassVar[str] = "idle"
    idle: float
    remaining: float

    def payload(self) -> dict[str, Any]:
        return {"idle": round(self.idle, 1), "remaining": round(self.remaining, 1)}

    def text(self) -> str:
        return (
            f"*** You have been silent for {_approx(self.idle)} s: send any line within "
            f"{_approx(self.remaining)} s to stay connected"
        )


@dataclass(kw_only=True, eq=False, slots=True)
class SlowDown(Event):
    """Private: the member's lines are now delayed by the input rate limit."""

    type: ClassVar[str] = "slow-down"
    rate: float
    waiting: int

    def payload(self) -> dict[str, Any]:
        return {"rate": self.rate, "waiting": self.waiting}

    def text(self) -> str:
        return (
            f"*** Slow down: you are sending faster than {self.rate:g} lines/s; "
            f"{self.waiting} lines are waiting and go out at that rate"
        )


@dataclass(kw_only=True, eq=False, slots=True)
class Bye(Event):
    """The last line a member gets before the server closes its connection."""

    type: ClassVar[str] = "bye"
    reason: str

    def payload(self) -> dict[str, Any]:
        return {"reason": self.reason}

    def text(self) -> str:
        return f"*** Disconnected: {self.reason}"


@dataclass(kw_only=True, eq=False, slots=True)
class Shutdown(Event):
    type: ClassVar[str] = "shutdown"
    reason: str

    def payload(self) -> dict[str, Any]:
        return {"reason": self.reason}

    def text(self) -> str:
        return f"*** Server shutting down: {self.reason}"


@dataclass(kw_only=True, eq=False, slots=True)
class Error(Event):
    type: ClassVar[str] = "error"
    code: str
    message: str

    def payload(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    def text(self) -> str:
        return f"!!! {self.code}: {self.message}"


def describe_crowd(
    joined: Sequence[str],
    joined_count: int,
    left: Sequence[str],
    left_count: int,
    renamed: Sequence[Sequence[str]],
    renamed_count: int,
) -> str:
    """``37 joined: a, b (+35); 2 left: c, d; 1 renamed: e -> f`` (shared with the client)."""

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

    def payload(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "count": self.count,
            "joined": list(self.joined),
            "joined_count": self.joined_count,
            "left": list(self.left),
            "left_count": self.left_count,
            "renamed": [list(pair) for pair in self.renamed],
            "renamed_count": self.renamed_count,
        }

    def text(self) -> str:
        what = describe_crowd(
            self.joined,
            self.joined_count,
            self.left,
            self.left_count,
            self.renamed,
            self.renamed_count,
        )
        return f"*** [{self.room}] {what}; {self.count} here"


@dataclass(kw_only=True, eq=False, slots=True)
class Batch(Event):
    """A run of events for one audience, handed once to each member of it.

    Within one input turn the core keeps extending the open batch while the same room
    broadcasts to the same members, so N lines into a room of R members cost R
    deliveries, not N x R.  Encoding seals it: what a recipient has rendered never grows.
    Its bytes are its events' bytes in order, cached like any event's.
    """

    type: ClassVar[str] = "batch"
    events: list[Event]
    sealed: bool = False

    def payload(self) -> dict[str, Any]:
        return {"events": [event.to_json() for event in self.events]}

    def text(self) -> str:
        return "\n".join(event.text() for event in self.events)

    def encode(self, fmt: Format) -> bytes:
        self.sealed = True
        return Event.encode(self, fmt)  # slots dataclasses: no zero-argument super()

    def render(self, fmt: Format) -> bytes:
        return b"".join([event.encode(fmt) for event in self.events])
