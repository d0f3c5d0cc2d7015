"""History as the core uses it: a joining member is shown the room's last lines, in the
same turn as the join, then everything live, with nothing missed or shown twice."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.doubles import RecordingParticipant
from tests.test_history_store import sync_run
from twisted_chat.core.events import History
from twisted_chat.core.interfaces import IHistory
from twisted_chat.core.local import Forgetful
from twisted_chat.core.names import room_key
from twisted_chat.core.service import ChatService
from twisted_chat.history import SQLiteHistory, StoredHistory


@implementer(IHistory)
class ListHistory:
    def __init__(self, replay: int = 20) -> None:
        self.replay = replay
        self.lines: dict[str, list[Any]] = {}

    def record(self, room: str, ts: float, kind: str, nick: str, text: str) -> None:
        lines = self.lines.setdefault(room, [])
        lines.append(SimpleNamespace(id=len(lines) + 1, ts=ts, kind=kind, nick=nick, text=text))

    def recent(self, room: str, n: int) -> list[Any]:
        return self.lines.get(room, [])[-n:]


def histories(participant: RecordingParticipant) -> list[History]:
    return [e for e in participant.events if isinstance(e, History)]


def seat(service: ChatService, nick: str) -> tuple[Any, RecordingParticipant]:
    participant = RecordingParticipant()
    member = service.connect(participant)
    service.set_nick(member, nick)
    participant.clear()
    return member, participant


def test_the_seams_are_what_they_say():
    verifyObject(IHistory, Forgetful())
    verifyObject(IHistory, ListHistory())


def test_a_joiner_sees_the_last_lines_as_history_then_everything_live():
    history = ListHistory(replay=3)
    service = ChatService(task.Clock(), history=history)
    bob, _ = seat(service, "bob")
    service.join(bob, "#tea")
    for i in range(5):
        service.say(bob, f"line {i}")
    service.act(bob, "pours tea")
    carol, seen = seat(service, "carol")
    service.join(carol, "#tea")
    kinds = [e.type for e in seen.events]
    assert kinds == ["join", "members", "history", "current"]
    (replayed,) = histories(seen)
    assert [(i.kind, i.text) for i in replayed.items] == [
        ("message", "line 3"), ("message", "line 4"), ("action", "pours tea")
    ]  # fmt: skip
    seen.clear()
    service.say(bob, "live")
    assert [e.type for e in seen.events] == ["message"]  # once, and not as history


def test_nothing_is_shown_for_a_new_room_and_nothing_is_kept_by_default():
    service = ChatService(task.Clock())
    bob, _ = seat(service, "bob")
    service.join(bob, "#tea")
    service.say(bob, "forgotten")
    carol, seen = seat(service, "carol")
    service.join(carol, "#tea")
    assert seen.of_type("history") == []
    history = ListHistory()
    service = ChatService(task.Clock(), history=history)
    dave, seen = seat(service, "dave")
    service.join(dave, "#new")
    assert seen.of_type("history") == []


def test_look_alike_room_names_share_one_history_under_the_room_key():
    history = ListHistory()
    service = ChatService(task.Clock(), history=history)
    bob, _ = seat(service, "bob")
    service.join(bob, "#Tea")
    service.say(bob, "hello")
    assert list(history.lines) == [room_key("#Tea")]
    carol, seen = seat(service, "carol")
    service.join(carol, "#tea")
    (replayed,) = histories(seen)
    assert replayed.room == "#Tea" and [i.text for i in replayed.items] == ["hello"]


def test_what_was_said_is_shown_after_a_restart(tmp_path: Path):
    path = str(tmp_path / "history.sqlite3")
    clock = task.Clock()
    store = SQLiteHistory(path, clock, run=sync_run)
    store.open()
    service = ChatService(clock, history=StoredHistory(store, replay=20))
    bob, _ = seat(service, "bob")
    service.join(bob, "#tea")
    service.say(bob, "before the restart")
    store.close()
    store = SQLiteHistory(path, clock, run=sync_run)
    store.open()
    service = ChatService(clock, history=StoredHistory(store, replay=20))
    carol, seen = seat(service, "carol")
    service.join(carol, "#tea")
    (replayed,) = histories(seen)
    assert [(i.nick, i.text) for i in replayed.items] == [("bob", "before the restart")]
    store.close()
