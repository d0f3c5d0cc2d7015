"""How front doors write events: the text lines people read and the JSON programs parse.

The core builds each event once as a plain value and hands it to every recipient.  A
renderer keeps the bytes it made in a slot of the event, so an event fanned out to
thousands of members is formatted once per renderer and every later recipient costs a
slot read.  Which renderer a connection uses is the front door's business: the core only
passes on the name a member asked for (``/format json|text``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from twisted_chat.core.errors import UnsupportedFormat
from twisted_chat.core.events import (
    Action,
    Bans,
    Batch,
    Bye,
    Crowd,
    Current,
    Disconnected,
    Error,
    Event,
    Help,
    History,
    IdleWarning,
    Join,
    LoginNeeded,
    Members,
    Message,
    Moderation,
    Network,
    NickChange,
    Notice,
    Part,
    Pong,
    Private,
    Quit,
    RoomList,
    Shutdown,
    SlowDown,
    TimedOut,
    Topic,
    Wall,
    Welcome,
    describe_bans,
    describe_crowd,
    describe_moderation,
    describe_topic,
)

MEMBERS_SHOWN = 100  # names in a text ``members`` line; the rest are counted


class Renderer:
    """One way of writing events; ``encode`` is what a front door calls per recipient."""

    name = ""

    def encode(self, event: Event) -> bytes:
        """The bytes to write for ``event``; the built-in renderers cache them on it."""
        return self.render(event)

    def render(self, event: Event) -> bytes:
        """The bytes computed afresh.  A batch is its events' bytes, each cached as usual.

        Rendering seals a batch: the core must not extend what a recipient already has.
        """
        if isinstance(event, Batch):
            event.sealed = True
            return b"".join([self.encode(inner) for inner in event.events])
        return self.line(event)

    def line(self, event: Event) -> bytes:
        """One event's bytes, its line ending included."""
        raise NotImplementedError


class TextRenderer(Renderer):
    """What a person on telnet or nc reads: ``***`` server lines, ``!!!`` errors."""

    name = "text"

    def encode(self, event: Event) -> bytes:
        # The fan-out hot path: a slot read and an identity test per recipient.
        wire = event.text_wire
        if wire is None:
            wire = event.text_wire = self.render(event)
        return wire

    def line(self, event: Event) -> bytes:
        return self.text(event).replace("\n", "\r\n").encode("utf-8") + b"\r\n"

    def text(self, event: Event) -> str:
        """The lines, joined by ``\\n`` (only ``welcome`` and ``help`` have several)."""
        try:
            render = _TEXT[type(event)]
        except KeyError:
            raise TypeError(f"no text rendering for {type(event).__name__}") from None
        return render(event)


class JsonRenderer(Renderer):
    """One JSON object per line, UTF-8 and not ASCII-escaped, for programs."""

    name = "json"

    def encode(self, event: Event) -> bytes:
        wire = event.json_wire
        if wire is None:
            wire = event.json_wire = self.render(event)
        return wire

    def line(self, event: Event) -> bytes:
        fast = _FAST_JSON.get(type(event))
        if fast is not None:
            return fast(event).encode("utf-8")
        return _JSON_ENCODER.encode(self.document(event)).encode("utf-8") + b"\r\n"

    def document(self, event: Event) -> dict[str, Any]:
        """The object written for ``event``: ``type``, ``ts`` (to the ms), its fields."""
        try:
            fields = _FIELDS[type(event)]
        except KeyError:
            raise TypeError(f"no JSON rendering for {type(event).__name__}") from None
        return {"type": event.type, "ts": round(event.ts, 3), **fields(event)}


# One encoder for every event: json.dumps with options builds a new one per call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# What that encoder does to a string (in C), for the lines written by hand below.
_quote: Callable[[str], str] = json.encoder.encode_basestring


def _room_text_json(e: Message | Action) -> str:
    """The same line the encoder writes for a room message, in a fifth of the time: it
    is rendered once per message for every JSON member and browser in the room."""
    return (
        f'{{"type":"{e.type}","ts":{round(e.ts, 3)!r},"room":{_quote(e.room)},'
        f'"nick":{_quote(e.nick)},"text":{_quote(e.text_)}}}\r\n'
    )


def _private_json(e: Private) -> str:
    return (
        f'{{"type":"private","ts":{round(e.ts, 3)!r},"from":{_quote(e.sender)},'
        f'"to":{_quote(e.recipient)},"text":{_quote(e.text_)}}}\r\n'
    )


_FAST_JSON: dict[type[Event], Callable[[Any], str]] = {
    Message: _room_text_json,
    Action: _room_text_json,
    Private: _private_json,
}

TEXT = TextRenderer()
JSON = JsonRenderer()
RENDERERS: dict[str, Renderer] = {TEXT.name: TEXT, JSON.name: JSON}


def renderer_for(name: str) -> Renderer:
    """The renderer a member asked for by name (``/format NAME``)."""
    renderer = RENDERERS.get(name)
    if renderer is None:
        raise UnsupportedFormat("usage: /format " + "|".join(sorted(RENDERERS)))
    return renderer


# -- text --------------------------------------------------------------------------------


def _secs(value: float) -> str:
    return f"{value:g}"


def _approx(seconds: float) -> str:
    """Whole seconds when that is precise enough, tenths for short spans."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


def _welcome_text(e: Welcome) -> str:
    where = f"You are in {e.current}." if e.current else "You are in no room."
    return "\n".join(
        [
            f"*** Welcome to groupchat {e.version}, {e.nick}! {where}",
            "*** Type a line to talk in your current room. Commands: " + ", ".join(e.commands),
            f"*** Heartbeat: send any line (for example /ping) at least every "
            f"{_secs(e.heartbeat_interval)} s; after {_secs(e.heartbeat_timeout)} s "
            "of silence you are disconnected (you are warned first).",
            f"*** Lines are limited to {e.max_line} bytes.",
        ]
    )


def _login_needed_text(e: LoginNeeded) -> str:
    return (
        "*** Welcome to groupchat. This server needs a login: /login NAME PASSWORD "
        f"({e.attempts} attempts left; other commands: /format, /ping, /quit)"
    )


def _message_text(e: Message) -> str:
    return f"[{e.room}] <{e.nick}> {e.text_}"


def _action_text(e: Action) -> str:
    return f"[{e.room}] * {e.nick} {e.text_}"


def _private_text(e: Private) -> str:
    return f"[PM {e.sender} -> {e.recipient}] {e.text_}"


def _join_text(e: Join) -> str:
    return f"*** [{e.room}] {e.nick} joined ({e.count} here)"


def _departure_text(verb: str) -> Callable[[Part | Quit | Disconnected], str]:
    """Part, Quit and Disconnected share their fields and differ only in the verb."""

    def text(e: Part | Quit | Disconnected) -> str:
        why = f" ({e.reason})" if e.reason else ""
        where = ", ".join(e.rooms) if e.rooms else e.room
        return f"*** [{where}] {e.nick} {verb}{why}"

    return text


def _timed_out_text(e: TimedOut) -> str:
    where = ", ".join(e.rooms) if e.rooms else e.room
    return f"*** [{where}] {e.nick} timed out (no heartbeat for {e.after:.1f} s)"


def _nick_text(e: NickChange) -> str:
    return f"*** {e.old} is now known as {e.new}"


def _current_text(e: Current) -> str:
    if e.room is None:
        return "*** You are in no room now; /join #room to talk"
    return f"*** Now talking in {e.room}"


def _members_text(e: Members) -> str:
    if not e.members:
        return f"*** [{e.room}] nobody here"
    ops = set(e.ops)
    shown = ", ".join(f"@{n}" if n in ops else n for n in e.members[:MEMBERS_SHOWN])
    more = len(e.members) - MEMBERS_SHOWN
    tail = f" and {more} more" if more > 0 else ""
    return f"*** [{e.room}] {len(e.members)} here: {shown}{tail}"


def _rooms_text(e: RoomList) -> str:
    if not e.rooms:
        return "*** No rooms" if e.query is None else f'*** No rooms match "{e.query}"'
    listing = ", ".join(
        f"{name} ({count})" + (f" {topic!r}" if topic else "") for name, count, topic in e.rooms
    )
    what = "Rooms" if e.query is None else f'Rooms matching "{e.query}"'
    if len(e.rooms) >= e.total:
        return f"*** {what}: {listing}"
    hint = "; /rooms TEXT to search" if e.query is None else ""
    page = f"showing {len(e.rooms)} of {e.total}, largest first{hint}"
    return f"*** {what} ({page}): {listing}"


def _topic_text(e: Topic) -> str:
    return f"*** [{e.room}] " + describe_topic(e.topic, e.by, e.set_at, e.locked, e.changed)


def _moderation_text(e: Moderation) -> str:
    return f"*** [{e.room}] " + describe_moderation(e.action, e.by, e.target, e.reason)


def _bans_text(e: Bans) -> str:
    where = "" if e.room is None else f"[{e.room}] "
    return f"*** {where}" + describe_bans(e.room, e.bans)


def _help_text(e: Help) -> str:
    width = max(len(u) for u, _ in e.commands)
    lines = ["*** Commands (a line not starting with / is said in your current room):"]
    lines += [f"***   {u.ljust(width)}  {h}" for u, h in e.commands]
    return "\n".join(lines)


def _pong_text(e: Pong) -> str:
    return f"*** pong {e.token}".rstrip()


def _idle_text(e: IdleWarning) -> str:
    return (
        f"*** You have been silent for {_approx(e.idle)} s: send any line within "
        f"{_approx(e.remaining)} s to stay connected"
    )


def _slow_down_text(e: SlowDown) -> str:
    waiting = (
        "1 line is waiting and goes" if e.waiting == 1 else f"{e.waiting} lines are waiting and go"
    )
    return (
        f"*** Slow down: you are sending faster than {e.rate:g} lines/s; {waiting} out at that rate"
    )


def _bye_text(e: Bye) -> str:
    return f"*** Disconnected: {e.reason}"


def _shutdown_text(e: Shutdown) -> str:
    return f"*** Server shutting down: {e.reason}"


def _network_text(e: Network) -> str:
    return f"*** Network: {e.message}"


def _error_text(e: Error) -> str:
    return f"!!! {e.code}: {e.message}"


def _crowd_text(e: Crowd) -> str:
    what = describe_crowd(
        e.joined, e.joined_count, e.left, e.left_count, e.renamed, e.renamed_count
    )
    return f"*** [{e.room}] {what}; {e.count} here"


def _history_text(e: History) -> str:
    """Set apart from live lines, each with its date and time (UTC: the server cannot
    know the reader's zone)."""
    where = e.room if e.room is not None else f"PM {e.with_}"
    what = "messages" if e.room is not None else "private messages"
    asked = e.room if e.room is not None else e.with_
    if not e.items and e.more:
        return f"*** [{where}] earlier {what} are kept: /history {asked} shows them"
    if not e.items:
        return f"*** [{where}] no earlier {what} are kept"
    lines = [f"*** [{where}] earlier {what} ({len(e.items)}), times in UTC:"]
    for item in e.items:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(item.ts))
        if item.kind == "private":
            lines.append(f"[PM {item.nick} -> {item.to} {when}] {item.text}")
        elif item.kind == "action":
            lines.append(f"[{e.room} {when}] * {item.nick} {item.text}")
        else:
            lines.append(f"[{e.room} {when}] <{item.nick}> {item.text}")
    if e.more:
        lines.append(f"*** [{where}] end of earlier {what} (/history {asked} for older ones)")
    else:
        lines.append(f"*** [{where}] end of earlier {what} (nothing older is kept)")
    return "\n".join(lines)


def _history_item(i: Any) -> dict[str, Any]:
    item = {"id": i.id, "ts": round(i.ts, 3), "kind": i.kind, "nick": i.nick, "text": i.text}
    if i.to is not None:
        item["to"] = i.to
    return item


def _history_fields(e: History) -> dict[str, Any]:
    return {
        "room": e.room,
        "with": e.with_,
        "items": [_history_item(i) for i in e.items],
        "more": e.more,
        "page": e.page,
    }


def _batch_text(e: Batch) -> str:
    return "\n".join(TEXT.text(event) for event in e.events)


# Keyed by the exact class (one dict lookup per rendering): a new event type, even a
# subclass, must be added here, or rendering it raises instead of borrowing a look.
_TEXT: dict[type[Event], Callable[[Any], str]] = {
    Welcome: _welcome_text,
    LoginNeeded: _login_needed_text,
    Message: _message_text,
    Action: _action_text,
    Private: _private_text,
    Join: _join_text,
    Part: _departure_text("left"),
    Quit: _departure_text("quit"),
    Disconnected: _departure_text("lost connection"),
    TimedOut: _timed_out_text,
    NickChange: _nick_text,
    Current: _current_text,
    Members: _members_text,
    Topic: _topic_text,
    Moderation: _moderation_text,
    Wall: lambda e: f"*** Notice from {e.by} (server operator): {e.text}",
    Notice: lambda e: f"*** {e.text}",
    Bans: _bans_text,
    RoomList: _rooms_text,
    Help: _help_text,
    Pong: _pong_text,
    IdleWarning: _idle_text,
    SlowDown: _slow_down_text,
    Bye: _bye_text,
    Shutdown: _shutdown_text,
    Network: _network_text,
    Error: _error_text,
    Crowd: _crowd_text,
    Batch: _batch_text,
    History: _history_text,
}


# -- JSON: each event's own fields (the renderer adds ``type`` and ``ts``) -----------------


def _welcome_fields(e: Welcome) -> dict[str, Any]:
    # Not ``commands``: clients have /help, and the JSON welcome is fixed by the protocol.
    return {
        "nick": e.nick,
        "rooms": list(e.rooms),
        "current": e.current,
        "heartbeat": {
            "interval": e.heartbeat_interval,
            "timeout": e.heartbeat_timeout,
            "sweep": e.sweep_interval,
            "warning": e.idle_warning,
        },
        "max_line": e.max_line,
        "limits": e.limits,
        "logged_in": e.logged_in,
        "server": "groupchat",
        "version": e.version,
        "format": e.format,
    }


def _room_text_fields(e: Message | Action) -> dict[str, Any]:
    return {"room": e.room, "nick": e.nick, "text": e.text_}


def _departure_fields(e: Part | Quit | Disconnected) -> dict[str, Any]:
    body: dict[str, Any] = {"room": e.room, "nick": e.nick, "reason": e.reason}
    if e.rooms:
        body["rooms"] = list(e.rooms)
    return body


def _timed_out_fields(e: TimedOut) -> dict[str, Any]:
    body: dict[str, Any] = {"room": e.room, "nick": e.nick, "after": round(e.after, 1)}
    if e.rooms:
        body["rooms"] = list(e.rooms)
    return body


def _rooms_fields(e: RoomList) -> dict[str, Any]:
    return {
        # A topic only where one is set: the answer stays small with many rooms.
        "rooms": [
            {"room": name, "count": count, "topic": topic}
            if topic
            else {"room": name, "count": count}
            for name, count, topic in e.rooms
        ],
        "total": e.total,
        "query": e.query,
    }


def _crowd_fields(e: Crowd) -> dict[str, Any]:
    return {
        "room": e.room,
        "count": e.count,
        "joined": list(e.joined),
        "joined_count": e.joined_count,
        "left": list(e.left),
        "left_count": e.left_count,
        "renamed": [list(pair) for pair in e.renamed],
        "renamed_count": e.renamed_count,
    }


_FIELDS: dict[type[Event], Callable[[Any], dict[str, Any]]] = {
    Welcome: _welcome_fields,
    LoginNeeded: lambda e: {"attempts": e.attempts},
    Message: _room_text_fields,
    Action: _room_text_fields,
    Private: lambda e: {"from": e.sender, "to": e.recipient, "text": e.text_},
    Join: lambda e: {"room": e.room, "nick": e.nick, "count": e.count},
    Part: _departure_fields,
    Quit: _departure_fields,
    Disconnected: _departure_fields,
    TimedOut: _timed_out_fields,
    NickChange: lambda e: {"old": e.old, "new": e.new},
    Current: lambda e: {"room": e.room},
    Members: lambda e: {"room": e.room, "members": list(e.members), "ops": list(e.ops)},
    Topic: lambda e: {
        "room": e.room,
        "topic": e.topic,
        "by": e.by,
        "set_at": None if e.set_at is None else round(e.set_at, 3),
        "locked": e.locked,
        "changed": e.changed,
    },
    Moderation: lambda e: {
        "room": e.room,
        "action": e.action,
        "by": e.by,
        "target": e.target,
        "reason": e.reason,
    },
    Wall: lambda e: {"by": e.by, "text": e.text},
    Notice: lambda e: {"text": e.text},
    Bans: lambda e: {
        "room": e.room,
        "bans": [{"target": t, "by": by, "reason": why} for t, by, why in e.bans],
    },
    RoomList: _rooms_fields,
    Help: lambda e: {"commands": [{"usage": u, "help": h} for u, h in e.commands]},
    Pong: lambda e: {"token": e.token},
    IdleWarning: lambda e: {"idle": round(e.idle, 1), "remaining": round(e.remaining, 1)},
    SlowDown: lambda e: {"rate": e.rate, "waiting": e.waiting},
    Bye: lambda e: {"reason": e.reason},
    Shutdown: lambda e: {"reason": e.reason},
    Network: lambda e: {"up": e.up, "message": e.message},
    Error: lambda e: {"code": e.code, "message": e.message},
    Crowd: _crowd_fields,
    History: _history_fields,
    # Never on the wire (a batch is written as its events' lines); for inspection.
    Batch: lambda e: {"events": [JSON.document(event) for event in e.events]},
}
