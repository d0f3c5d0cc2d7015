"""Turn server events into what a person reads.

Every string from the server is cleaned again here (a server that forgot to strip an
escape sequence must not reach the terminal), and the result is a list of
``(style, text)`` fragments: the interactive UI styles them, plain output joins the text.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

from twisted_chat.core.events import (
    describe_bans,
    describe_crowd,
    describe_moderation,
    describe_topic,
)
from twisted_chat.core.sanitize import clean_text

Fragments = list[tuple[str, str]]

NICK_WIDTH = 12
_PALETTE = [
    "ansicyan",
    "ansigreen",
    "ansiyellow",
    "ansimagenta",
    "ansiblue",
    "ansired",
    "ansibrightcyan",
    "ansibrightgreen",
    "ansibrightmagenta",
    "ansibrightblue",
]


def _c(value: Any) -> str:
    return clean_text(str(value)) if value is not None else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def nick_style(nick: str) -> str:
    """A stable colour per nickname, so a speaker is recognisable at a glance."""
    return _PALETTE[zlib.crc32(nick.casefold().encode()) % len(_PALETTE)]


def stamp(ts: Any) -> str:
    try:
        return time.strftime("%H:%M", time.localtime(float(ts)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "--:--"


def _room(event: dict[str, Any]) -> str:
    rooms = event.get("rooms")
    if isinstance(rooms, list) and rooms:  # someone left the server: every shared room
        return ", ".join(_c(room) for room in rooms)
    return _c(event.get("room"))


def render(event: dict[str, Any], me: str | None = None) -> Fragments | None:
    """Fragments for one event, or None for events that are not shown."""
    kind = event.get("type")
    ts = [("class:time", stamp(event.get("ts")) + " ")]
    if kind in ("message", "action"):
        nick = _c(event.get("nick"))
        room = [("class:room", f"{_room(event)} ")]
        text = _c(event.get("text"))
        if kind == "action":
            return ts + room + [(nick_style(nick), f"{'*':>{NICK_WIDTH}} {nick} "), ("", text)]
        return ts + room + [(nick_style(nick), f"{nick:>{NICK_WIDTH}} "), ("", text)]
    if kind == "private":
        sender, to = _c(event.get("from")), _c(event.get("to"))
        label = f"[PM to {to}]" if me is not None and sender == me != to else f"[PM from {sender}]"
        return ts + [("class:private", f"{label} "), ("", _c(event.get("text")))]
    if kind == "error":
        return ts + [("class:error", f"! {_c(event.get('message'))}")]
    if kind == "pong":
        return ts + [("class:system", f"-- pong {_c(event.get('token'))}".rstrip())]
    if kind == "history":
        return history(event, me)
    line = system_line(event)
    if line is None:
        return None
    return ts + [("class:system", f"-- {line}")]


def history_stamp(ts: Any, now: float | None = None) -> str:
    """When a history line was said, in local time: ``HH:MM`` today, else with the date
    (kept lines can be days old)."""
    try:
        when = time.localtime(float(ts))
    except (TypeError, ValueError, OverflowError, OSError):
        return "--:--"
    today = time.localtime(time.time() if now is None else now)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M", when)
    return time.strftime("%Y-%m-%d %H:%M", when)


def history(event: dict[str, Any], me: str | None = None, now: float | None = None) -> Fragments:
    """Earlier lines of a room (or of a private conversation: ``with``), set apart from
    live ones: a dim rule above and below, each line muted and dated."""
    room, peer = _c(event.get("room")), _c(event.get("with"))
    where = f"in {room}" if room else f"with {peer}" if peer else "here"
    target = room or peer
    raw = event.get("items")
    items = [i for i in raw if isinstance(i, dict)] if isinstance(raw, list) else []
    more = event.get("more")
    ask = f"/history {target}".rstrip()
    if not items:
        if more is True:
            return [("class:history-rule", f"── nothing to show {where}: {ask} for older ──")]
        older = "older" if event.get("page") else "earlier"
        return [("class:history-rule", f"── nothing {older} kept {where} ──")]
    out: Fragments = [("class:history-rule", f"── earlier {where} ({len(items)}) ──")]
    for item in items:
        nick, text = _c(item.get("nick")), _c(item.get("text"))
        out += [("", "\n"), ("class:time", history_stamp(item.get("ts"), now) + " ")]
        if item.get("kind") == "private":
            to = _c(item.get("to"))
            label = f"[PM to {to}]" if me is not None and nick == me != to else f"[PM from {nick}]"
            out += [("class:history-private", f"{label} "), ("class:history", text)]
            continue
        out.append(("class:room", f"{room} "))
        style = f"{nick_style(nick)} class:history-nick"
        if item.get("kind") == "action":
            out += [(style, f"{'*':>{NICK_WIDTH}} {nick} "), ("class:history", text)]
        else:
            out += [(style, f"{nick:>{NICK_WIDTH}} "), ("class:history", text)]
    if more is True:
        end = f"{ask} for older"
    elif more is False:
        end = "start of kept history"
    else:  # a server from before paging: it does not say
        end = "end of earlier messages"
    return [*out, ("", "\n"), ("class:history-rule", f"── {end} ──")]


class SeenLines:
    """Chat lines already on screen, so history told again on a rejoin (the client
    rejoins its rooms after a reconnect, and the server replays their last lines) shows
    only what was missed.

    A history item is known by its ``id``, and also by what a live line carries (its
    conversation, ``ts``, sender and text, which the server records unchanged); our own
    lines, shown as they were sent with our clock's time, by conversation, sender and
    text.  Bounded: the oldest are forgotten first.
    """

    def __init__(self, limit: int = 5000) -> None:
        self.limit = limit
        self._keys: dict[tuple[Any, ...], None] = {}  # insertion-ordered

    def _add(self, key: tuple[Any, ...]) -> None:
        self._keys.pop(key, None)
        self._keys[key] = None
        while len(self._keys) > self.limit:
            del self._keys[next(iter(self._keys))]

    @staticmethod
    def _where(room: Any, peer: Any) -> str:
        return f"#{_c(room).casefold()}" if room else f"@{_c(peer).casefold()}"

    @staticmethod
    def _ts(ts: Any) -> float | None:
        try:
            return round(float(ts), 3)
        except (TypeError, ValueError, OverflowError):
            return None

    def note(self, event: dict[str, Any], me: str | None) -> None:
        """A live line as it is shown."""
        kind = event.get("type")
        if kind in ("message", "action"):
            where, nick = self._where(event.get("room"), None), _c(event.get("nick"))
        elif kind == "private":
            sender, to = _c(event.get("from")), _c(event.get("to"))
            where, nick = self._where(None, to if sender == me else sender), sender
        else:
            return
        self._add(("line", where, self._ts(event.get("ts")), nick, _c(event.get("text"))))

    def note_own(self, room: str | None, peer: str | None, nick: str, text: str) -> None:
        self._add(("own", self._where(room, peer), _c(nick).casefold(), _c(text)))

    def unseen(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """``event`` with only the items not shown yet (all of them for a page the user
        asked for), or None when a replay holds nothing new."""
        raw = event.get("items")
        if not isinstance(raw, list):
            return event
        where = self._where(event.get("room"), event.get("with"))
        fresh = []
        for item in raw:
            if not isinstance(item, dict):
                continue
            nick, text = _c(item.get("nick")), _c(item.get("text"))
            keys = [
                ("id", where, item.get("id")),
                ("line", where, self._ts(item.get("ts")), nick, text),
                ("own", where, nick.casefold(), text),
            ]
            if event.get("page") or not any(key in self._keys for key in keys):
                fresh.append(item)
            if item.get("id") is not None:
                self._add(keys[0])
        if not fresh and raw:
            return None  # all shown already: nothing missed
        return event if len(fresh) == len(raw) else {**event, "items": fresh}


def system_line(event: dict[str, Any]) -> str | None:
    kind = event.get("type")
    room, nick, reason = _room(event), _c(event.get("nick")), _c(event.get("reason"))
    why = f" ({reason})" if reason else ""
    if kind == "welcome":
        hb = event.get("heartbeat", {})
        again = "reconnected" if event.get("restored") else "connected"
        return (
            f"{again} as {_c(event.get('nick'))} (heartbeat every "
            f"{_c(hb.get('interval'))} s, timeout {_c(hb.get('timeout'))} s)"
        )
    if kind == "join":
        return f"{room}: {nick} joined ({_c(event.get('count'))} here)"
    if kind == "part":
        return f"{room}: {nick} left{why}"
    if kind == "quit":
        return f"{room}: {nick} quit{why}"
    if kind == "timeout":
        return f"{room}: {nick} timed out (no heartbeat for {_c(event.get('after'))} s)"
    if kind == "disconnect":
        return f"{room}: {nick} lost connection{why}"
    if kind == "nick":
        return f"{_c(event.get('old'))} is now known as {_c(event.get('new'))}"
    if kind == "current":
        return f"now talking in {room}" if event.get("room") else "you are in no room"
    if kind == "crowd":
        what = describe_crowd(
            [_c(n) for n in event.get("joined", [])],
            _int(event.get("joined_count")),
            [_c(n) for n in event.get("left", [])],
            _int(event.get("left_count")),
            [(_c(p[0]), _c(p[1])) for p in event.get("renamed", []) if len(p) == 2],
            _int(event.get("renamed_count")),
        )
        return f"{room}: {what}; {_c(event.get('count'))} here"
    if kind == "members":
        ops = {_c(n) for n in event.get("ops") or []}
        names = [_c(n) for n in event.get("members", [])]
        shown = ", ".join(f"@{n}" if n in ops else n for n in names)
        return f"{room}: {len(names)} here: {shown}"
    if kind == "topic":
        at = event.get("set_at")
        return f"{room}: " + describe_topic(
            _c(event.get("topic")),
            _c(event.get("by")),
            at if isinstance(at, int | float) and not isinstance(at, bool) else None,
            event.get("locked") is True,
            event.get("changed") is True,
        )
    if kind == "moderation":
        by = event.get("by")
        return f"{room}: " + describe_moderation(
            _c(event.get("action")), None if by is None else _c(by), _c(event.get("target")), reason
        )
    if kind == "bans":
        bans = [
            (_c(b.get("target")), _c(b.get("by")), _c(b.get("reason")))
            for b in event.get("bans") or []
            if isinstance(b, dict)
        ]
        if not event.get("room"):
            return describe_bans(None, bans)
        return f"{room}: " + describe_bans(room, bans)
    if kind == "wall":
        return f"notice from {_c(event.get('by'))} (server operator): {_c(event.get('text'))}"
    if kind == "notice":
        return _c(event.get("text"))
    if kind == "network":
        return f"network: {_c(event.get('message'))}"
    if kind == "rooms":
        rooms = [
            f"{_c(r.get('room'))} ({_c(r.get('count'))})"
            + (f" {_c(r.get('topic'))!r}" if r.get("topic") else "")
            for r in event.get("rooms", [])
        ]
        query = _c(event.get("query"))
        label = f'rooms matching "{query}"' if query else "rooms"
        # ``total`` counts rooms the server did not list; servers before it sent them all.
        more = _int(event.get("total")) - len(rooms)
        tail = f" and {more} more" + ("" if query else " (/rooms TEXT to search)")
        return f"{label}: " + (", ".join(rooms) or "none") + (tail if more > 0 else "")
    if kind == "help":
        rows = [f"{_c(c.get('usage')):<24} {_c(c.get('help'))}" for c in event.get("commands", [])]
        return "commands:\n" + "\n".join("   " + r for r in rows)
    if kind == "slow-down":
        waiting = event.get("waiting")
        lines = "1 line waits and goes" if waiting == 1 else f"{_c(waiting)} lines wait and go"
        return f"slow down: over {_c(event.get('rate'))} lines/s; {lines} out at that rate"
    if kind == "login-required":
        return "this server needs a login: start the client with --nick and a password"
    if kind == "idle":
        return f"silent for {_c(event.get('idle'))} s: send something to stay connected"
    if kind in ("bye", "shutdown"):
        prefix = "server shutting down" if kind == "shutdown" else "disconnected"
        return f"{prefix}: {reason}"
    return None


def plain(fragments: Fragments) -> str:
    return "".join(text for _, text in fragments)


def message_line(event: dict[str, Any]) -> str | None:
    """The one-line form ``--listen`` prints: chat only, no system events."""
    kind = event.get("type")
    if kind == "message":
        return f"[{_room(event)}] <{_c(event.get('nick'))}> {_c(event.get('text'))}"
    if kind == "action":
        return f"[{_room(event)}] * {_c(event.get('nick'))} {_c(event.get('text'))}"
    if kind == "private":
        return f"[PM {_c(event.get('from'))} -> {_c(event.get('to'))}] {_c(event.get('text'))}"
    return None
