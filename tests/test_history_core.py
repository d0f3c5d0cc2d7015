"""History as the core uses it: a joining member is shown the room's last lines, in the
same turn as the join, then everything live, with nothing missed or shown twice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.doubles import RecordingParticipant
from tests.test_history_store import sync_run
from twisted_chat.core.events import Error, History
from twisted_chat.core.interfaces import IHistory
from twisted_chat.core.local import Forgetful
from twisted_chat.core.names import room_key
from twisted_chat.core.service import ChatService
from twisted_chat.history import SQLiteHistory, StoredHistory
from twisted_chat.render import TEXT


@implementer(IHistory)
class ListHistory:
    enabled = True
    private = False

    def __init__(self, replay: int = 20) -> None:
        self.replay = replay
        self.lines: dict[str, list[Any]] = {}

    def record(
        self,
        key: str,
        ts: float,
        kind: str,
        nick: str,
        text: str,
        to: str | None = None,
        ident: int | None = None,
    ) -> None:
        lines = self.lines.setdefault(key, [])
        lines.append(SimpleNamespace(id=len(lines) + 1, ts=ts, kind=kind, nick=nick, text=text))

    def recent(self, key: str, n: int) -> tuple[list[Any], bool]:
        lines = self.lines.get(key, [])
        return lines[-n:], len(lines) > n

    def mark(self, key: str) -> int:
        return len(self.lines.get(key, [])) + 1

    def before(
        self, key: str, before_id: int, n: int
    ) -> defer.Deferred[tuple[Sequence[Any], bool]]:
        older = [i for i in self.lines.get(key, []) if i.id < before_id]
        return defer.succeed((older[-n:], len(older) > n))


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


# -- /history --------------------------------------------------------------------------


def stored(tmp_path: Path, replay: int = 5, private: bool = False) -> ChatService:
    store = SQLiteHistory(str(tmp_path / "history.sqlite3"), task.Clock(), run=sync_run)
    store.open()
    return ChatService(store.clock, history=StoredHistory(store, replay, private=private))


def typed(service: ChatService, member: Any, line: str) -> None:
    service.dispatcher.dispatch(member, line)


def test_history_pages_back_from_the_oldest_line_shown_and_says_when_nothing_is_older(
    tmp_path: Path,
):
    service = stored(tmp_path, replay=5)
    bob, _ = seat(service, "bob")
    service.join(bob, "#tea")
    for i in range(30):
        service.say(bob, f"line {i}")
    carol, seen = seat(service, "carol")
    service.join(carol, "#tea")
    (joined,) = histories(seen)
    assert [i.text for i in joined.items] == [f"line {i}" for i in range(25, 30)]
    assert joined.more and not joined.page
    seen.clear()
    service.say(bob, "live, not history")
    typed(service, carol, "/history 10")
    (page,) = histories(seen)
    assert [i.text for i in page.items] == [f"line {i}" for i in range(15, 25)]
    assert page.page and page.more and page.room == "#tea"
    seen.clear()
    typed(service, carol, "/history #tea 500")  # at most 200: all that is left
    (page,) = histories(seen)
    assert [i.text for i in page.items] == [f"line {i}" for i in range(15)]
    assert not page.more
    assert "nothing older is kept" in TEXT.text(page)
    seen.clear()
    typed(service, carol, "/history")
    (page,) = histories(seen)
    assert page.items == [] and not page.more
    assert TEXT.text(page) == "*** [#tea] no earlier messages are kept"


def test_a_member_shown_nothing_on_join_pages_from_its_join(tmp_path: Path):
    service = stored(tmp_path, replay=0)
    bob, _ = seat(service, "bob")
    service.join(bob, "#tea")
    service.say(bob, "before carol")
    carol, seen = seat(service, "carol")
    service.join(carol, "#tea")
    (told,) = histories(seen)  # none shown, but there are some
    assert told.items == [] and told.more
    assert TEXT.text(told) == "*** [#tea] earlier messages are kept: /history #tea shows them"
    service.say(bob, "seen live by carol")
    seen.clear()
    typed(service, carol, "/history")
    (page,) = histories(seen)
    assert [i.text for i in page.items] == ["before carol"]


def test_parting_forgets_where_the_member_was_and_rejoining_starts_again(tmp_path: Path):
    service = stored(tmp_path, replay=1)
    bob, _ = seat(service, "bob")
    service.join(bob, "#tea")
    for i in range(3):
        service.say(bob, f"line {i}")
    carol, seen = seat(service, "carol")
    service.join(carol, "#tea")
    typed(service, carol, "/history")
    tea = service.rooms.find(room_key("#tea"))
    assert tea is not None and tea.seen[carol] == 1
    service.part(carol, "#tea")
    assert carol not in tea.seen
    seen.clear()
    service.join(carol, "#tea")
    assert [i.text for i in histories(seen)[0].items] == ["line 2"]


def test_history_refusals_are_clear_errors(tmp_path: Path):
    service = stored(tmp_path)
    bob, seen = seat(service, "bob")
    service.join(bob, "#tea")
    typed(service, bob, "/history #elsewhere")
    typed(service, bob, "/history 0")
    typed(service, bob, "/history #tea 5 6")
    typed(service, bob, "/history alice")  # a room name, as private messages are not kept
    typed(service, bob, "/history -1")
    errors = [e for e in seen.events if isinstance(e, Error)]
    assert [e.code for e in errors] == ["not-in-room", "bad-arguments", "bad-arguments",
                                        "not-in-room", "bad-arguments"]  # fmt: skip
    assert "/join it" in errors[0].message and "#alice" in errors[3].message
    assert "at most 200" in errors[1].message
    off = ChatService(task.Clock())
    dave, seen = seat(off, "dave")
    typed(off, dave, "/history")
    assert [(e.code, e.message) for e in seen.events if isinstance(e, Error)] == [
        ("no-history", "this server keeps no history")
    ]


def test_a_page_stops_short_of_the_send_queue_and_says_there_is_more(tmp_path: Path):
    service = stored(tmp_path, replay=200)
    bob, _ = seat(service, "bob")
    service.join(bob, "#tea")
    for i in range(200):
        service.say(bob, f"{i:04} " + "x" * 1995)
    carol, seen = seat(service, "carol")
    service.join(carol, "#tea")
    (joined,) = histories(seen)
    assert 0 < len(joined.items) < 10 and joined.more  # 16 KiB on joining
    assert joined.items[-1].text.startswith("0199")
    seen.clear()
    typed(service, carol, "/history 200")
    (page,) = histories(seen)
    assert 10 < len(page.items) < 20 and page.more  # 32 KiB a page
    assert int(page.items[-1].text[:4]) == int(joined.items[0].text[:4]) - 1


def test_a_read_that_does_not_answer_is_an_error_after_a_while(tmp_path: Path):
    clock = task.Clock()
    hung: list[defer.Deferred[Any]] = []

    def never(f: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        hung.append(d)
        return d

    store = SQLiteHistory(str(tmp_path / "h.sqlite3"), clock, run=never)
    store.open()
    service = ChatService(clock, history=StoredHistory(store, 5))
    bob, seen = seat(service, "bob")
    service.join(bob, "#tea")
    service.say(bob, "hi")
    waiting = service.dispatcher.dispatch(bob, "/history")
    assert isinstance(waiting, defer.Deferred) and not waiting.called
    clock.advance(10.0)
    assert waiting.called
    assert [e.code for e in seen.of_type("error")] == ["history-unavailable"]


def test_private_messages_are_kept_only_when_asked_and_paged_by_nick(tmp_path: Path):
    service = stored(tmp_path, private=True)
    alice, _ = seat(service, "alice")
    bob, seen = seat(service, "bob")
    carol, carol_seen = seat(service, "carol")
    service.private(alice, "bob", "psst")
    service.private(bob, "Alice", "yes?")
    service.private(carol, "bob", "not for alice")
    seen.clear()
    typed(service, bob, "/history alice")
    (page,) = histories(seen)
    assert page.room is None and page.with_ == "alice" and not page.more
    assert [(i.kind, i.nick, i.to, i.text) for i in page.items] == [
        ("private", "alice", "bob", "psst"), ("private", "bob", "alice", "yes?")
    ]  # fmt: skip
    assert TEXT.text(page).splitlines()[1].endswith("] psst")
    assert TEXT.text(page).splitlines()[1].startswith("[PM alice -> bob 1970-01-01 ")
    carol_seen.clear()
    typed(service, carol, "/history alice")  # carol never wrote to alice
    (page,) = histories(carol_seen)
    assert page.items == []
    # Not shown to anyone on joining a room.
    dave, dave_seen = seat(service, "dave")
    service.join(dave, "#lobby")
    assert histories(dave_seen) == []


def test_paging_keeps_the_cursors_of_the_last_twenty_conversations(tmp_path: Path):
    from twisted_chat.core.service import CONVERSATIONS_SEEN

    service = stored(tmp_path, private=True)
    bob, seen = seat(service, "bob")
    peers = [seat(service, f"peer{i}")[0] for i in range(CONVERSATIONS_SEEN + 1)]
    for i, peer in enumerate(peers):
        for n in range(3):
            service.private(peer, "bob", f"{i}.{n}")

    def page(nick: str) -> list[str]:
        seen.clear()
        typed(service, bob, f"/history {nick} 1")
        (found,) = histories(seen)
        return [item.text for item in found.items]

    for i in range(len(peers)):
        assert page(f"peer{i}") == [f"{i}.2"]
    assert bob.talks is not None and len(bob.talks) == CONVERSATIONS_SEEN
    assert page("peer1") == ["1.1"]  # still kept: pages on back
    assert page("peer0") == ["0.2"]  # the oldest was forgotten: from the newest again
