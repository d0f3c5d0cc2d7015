"""The seam between a joiner's history and what it hears live, under concurrent traffic.

A member joining a room is told the room's last lines as a ``History`` event in the same
turn as the join, then hears the rest live. Whatever the interleaving of speakers, joins,
parts, rejoins, input batches and store flushes, each stay in the room (a session) must
show exactly the room's lines from where its replay starts, each once and in order, its
own live lines excepted (the server does not echo a speaker's line back to it).

The core runs on a ``task.Clock`` over the real ``SQLiteHistory``, whose writes run
synchronously (``sync_run``): advancing the clock a flush interval writes a batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task

from tests.doubles import RecordingParticipant
from tests.test_history_store import result, sync_run
from twisted_chat.core.events import Action, Batch, Event, History, Message
from twisted_chat.core.names import room_key
from twisted_chat.core.service import ChatService, Member
from twisted_chat.history import SQLiteHistory, StoredHistory

ROOM = "#tea"
ELSEWHERE = "#cake"  # a room talking at the same time, which must not leak into ROOM's
NICKS = ("ann", "ben", "cat", "dan")
PAGE = 200  # the most lines --history-replay may ask for

Line = tuple[str, str, str]  # kind, nick, text


def flat(events: list[Event]) -> Iterator[Event]:
    for event in events:
        if isinstance(event, Batch):
            yield from flat(event.events)
        else:
            yield event


@dataclass
class Session:
    """One stay of one member in ROOM: where the room's log and the member's events
    stood when it joined, and when it parted (None: still there)."""

    nick: str
    log_at_join: int
    events_at_join: int
    log_at_part: int | None = None
    events_at_part: int | None = None


@dataclass
class Room:
    """The chat service on the real store, the members, and what the test saw happen."""

    replay: int
    keep: int = 5000
    summarize_above: int = 100
    clock: task.Clock = field(default_factory=task.Clock)
    log: list[Line] = field(default_factory=list)  # ROOM's lines, as they were said
    sessions: list[Session] = field(default_factory=list)
    store: Any = None
    service: Any = None
    members: dict[str, tuple[Member, RecordingParticipant]] = field(default_factory=dict)
    inside: dict[str, Session] = field(default_factory=dict)
    _said: Iterator[int] = field(default_factory=itertools.count)

    def open(self, path: str) -> None:
        self.store = SQLiteHistory(path, self.clock, keep=self.keep, run=sync_run)
        self.store.open()
        self.service = ChatService(
            self.clock,
            history=StoredHistory(self.store, replay=self.replay),
            summarize_above=self.summarize_above,
        )
        for nick in (*NICKS, "eve"):
            participant = RecordingParticipant()
            member = self.service.connect(participant)
            self.service.set_nick(member, nick)
            self.members[nick] = (member, participant)
        self.service.join(self.members["eve"][0], ELSEWHERE)  # eve never joins ROOM

    def close(self) -> None:
        result(self.store.close())

    def events(self, nick: str) -> list[Event]:
        return self.members[nick][1].events

    # -- what happens --------------------------------------------------------------------

    def join(self, nick: str) -> None:
        if nick in self.inside:
            # Already there (/join #tea typed again): it only becomes current; no second
            # history, which would show lines twice.
            self.service.join(self.members[nick][0], ROOM)
            return
        session = Session(nick, len(self.log), len(self.events(nick)))
        self.service.join(self.members[nick][0], ROOM)
        self.inside[nick] = session
        self.sessions.append(session)

    def part(self, nick: str) -> None:
        session = self.inside.pop(nick, None)
        if session is None:
            return
        self.service.part(self.members[nick][0], ROOM)
        session.log_at_part = len(self.log)
        session.events_at_part = len(self.events(nick))

    def talk(self, nick: str, action: bool = False) -> None:
        if nick not in self.inside:
            return
        text = f"{nick} {next(self._said)}"
        member = self.members[nick][0]
        if action:
            self.service.act(member, text)
        else:
            self.service.say(member, text)
        self.log.append(("action" if action else "message", nick, text))

    def elsewhere(self) -> None:
        self.service.say(self.members["eve"][0], f"eve {next(self._said)}")

    def visit(self, nick: str) -> None:
        """A member of ROOM talks in another room, then comes back to ROOM."""
        if nick not in self.inside:
            return
        member = self.members[nick][0]
        self.service.join(member, ELSEWHERE)
        self.service.say(member, f"{nick} {next(self._said)}")
        self.join(nick)

    def tick(self) -> None:
        self.clock.advance(self.store.flush_interval)  # the store writes its batch

    def batch(self, nick: str, steps: list[tuple[str, bool]]) -> None:
        """One input turn of one member: several of its lines acted on together."""
        self.service.begin_batch()
        try:
            for step, action in steps:
                if step == "talk":
                    self.talk(nick, action)
                elif step == "part":
                    self.part(nick)
                else:
                    self.join(nick)
        finally:
            self.service.end_batch()

    # -- what each session saw ---------------------------------------------------------

    def check(self) -> None:
        """Every session: its history was the room's last lines (as many as the store
        keeps and ``replay`` asks for) before the join, shown once, before anything live;
        then every line said while it stayed, live, once each, in order, but its own."""
        shown = min(self.replay, self.keep, PAGE)
        for s in self.sessions:
            events = self.events(s.nick)[s.events_at_join : s.events_at_part]
            seen = [e for e in flat(events) if getattr(e, "room", None) == ROOM]
            histories = [i for i, e in enumerate(seen) if isinstance(e, History)]
            expected_history = self.log[max(0, s.log_at_join - shown) : s.log_at_join]
            if not shown or not expected_history:
                # Nothing to show; with replay 0 in a room with lines, an empty one
                # saying that /history has them.
                empty = [e for e in seen if isinstance(e, History)]
                assert all(not e.items and e.more for e in empty), s
                assert len(empty) == (1 if not shown and s.log_at_join else 0), s
                history: list[Line] = []
            else:
                assert len(histories) == 1, f"{s}: {len(histories)} history events"
                at = histories[0]
                item = seen[at]
                assert isinstance(item, History)
                history = [(i.kind, i.nick, i.text) for i in item.items]
                ids = [i.id for i in item.items]
                assert ids == sorted(set(ids)), s
                live_before = [e for e in seen[:at] if isinstance(e, Message | Action)]
                assert live_before == [], f"{s}: live lines came before the history"
            live = [(e.type, e.nick, e.text_) for e in seen if isinstance(e, Message | Action)]
            end = len(self.log) if s.log_at_part is None else s.log_at_part
            expected_live = [line for line in self.log[s.log_at_join : end] if line[1] != s.nick]
            assert history == expected_history, s
            assert live == expected_live, s
            # Put together: from the replay's start on, each line of the room once.
            start = s.log_at_join - len(history)
            assert history + live == [
                line
                for i, line in enumerate(self.log[start:end], start)
                if i < s.log_at_join or line[1] != s.nick
            ], s
        # And the store's file (everything flushed first) holds the room's latest lines:
        # at least what it keeps (retention trims at most once a minute), nothing else.
        written, _ = result(self.store.before(room_key(ROOM), 2**62, PAGE))
        lines = [(e.kind, e.nick, e.text) for e in written]
        assert lines == self.log[len(self.log) - len(lines) :]
        assert len(lines) >= min(self.keep, len(self.log), PAGE)


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Any]:
    rooms: list[Room] = []

    def make(**kw: Any) -> Room:
        made = Room(**kw)
        made.open(str(tmp_path / f"history{len(rooms)}.sqlite3"))
        rooms.append(made)
        return made

    yield make
    for made in rooms:
        made.close()


# -- a generated schedule ------------------------------------------------------------------

nicks = st.sampled_from(NICKS)
steps = st.one_of(
    st.tuples(st.just("talk"), nicks, st.booleans()),
    st.tuples(st.just("talk"), nicks, st.booleans()),  # talk is twice as likely as the rest
    st.tuples(st.just("join"), nicks),
    st.tuples(st.just("part"), nicks),
    st.tuples(st.just("elsewhere")),
    st.tuples(st.just("visit"), nicks),
    st.tuples(st.just("tick")),
    st.tuples(
        st.just("batch"),
        nicks,
        st.lists(
            st.tuples(st.sampled_from(["talk", "talk", "part", "join"]), st.booleans()),
            min_size=1,
            max_size=5,
        ),
    ),
)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    said_before=st.integers(min_value=0, max_value=12),
    schedule=st.lists(steps, min_size=5, max_size=80),
    replay=st.sampled_from([0, 1, 3, 20, PAGE]),
    keep=st.sampled_from([2, 5000]),
    summarize_above=st.sampled_from([2, 100]),
)
def test_history_then_live_is_each_line_once_in_order(
    said_before: int,
    schedule: list[tuple[Any, ...]],
    replay: int,
    keep: int,
    summarize_above: int,
):
    # An SQLite database in memory: the same store and SQL, without the file's syncs,
    # which made the 400 examples four times slower. (The worked examples below use a
    # file.) What a joiner is shown comes from the store's memory either way.
    room = Room(replay=replay, keep=keep, summarize_above=summarize_above)
    room.open(":memory:")
    try:
        # Two members start the room talking, so most joins below have history to show.
        room.join("ann")
        room.join("ben")
        for i in range(said_before):
            room.talk(NICKS[i % 2], action=i % 3 == 2)
        for step in schedule:
            match step:
                case ("talk", nick, action):
                    room.talk(nick, action)
                case ("join", nick):
                    room.join(nick)
                case ("part", nick):
                    room.part(nick)
                case ("elsewhere",):
                    room.elsewhere()
                case ("visit", nick):
                    room.visit(nick)
                case ("tick",):
                    room.tick()
                case ("batch", nick, inner):
                    room.batch(nick, inner)
        room.check()
    finally:
        room.close()


# -- worked examples -----------------------------------------------------------------------


def test_a_joiner_capped_by_replay_misses_nothing_said_after_the_join(room):
    r = room(replay=3)
    r.join("ann")
    r.join("ben")
    for _ in range(10):
        r.talk("ann")
        r.talk("ben", action=True)
    r.tick()
    r.join("cat")
    # The rest of the room, in every way it can reach cat: plain, in one input turn,
    # around another joiner and a part, across flushes.
    r.talk("ann")
    r.batch("ben", [("talk", False), ("talk", True), ("talk", False)])
    r.join("dan")
    r.talk("dan")
    r.tick()
    r.batch("ann", [("talk", False), ("part", False), ("join", False), ("talk", True)])
    r.part("dan")
    r.talk("ben")
    r.check()

    cat = r.sessions[2]
    assert cat.nick == "cat" and cat.log_at_join == 20
    history = [e for e in r.events("cat") if isinstance(e, History)]
    assert [[i.text for i in h.items] for h in history] == [[t for _, _, t in r.log[17:20]]]
    live = [e.text_ for e in flat(r.events("cat")) if isinstance(e, Message | Action)]
    assert live == [t for _, _, t in r.log[20:]] and len(live) == 8


def test_a_member_who_parts_and_rejoins_is_shown_what_it_missed_then_live(room):
    r = room(replay=4)
    r.join("ann")
    r.join("ben")
    r.talk("ann")
    r.talk("ben")
    r.part("ben")
    for _ in range(3):
        r.talk("ann")  # while ben is away
    r.tick()
    r.join("ben")
    r.talk("ann")
    r.talk("ben")
    r.check()
    away = r.log[2:5]
    (_, rejoined) = [s for s in r.sessions if s.nick == "ben"]
    events = r.events("ben")[rejoined.events_at_join :]
    (history,) = [e for e in events if isinstance(e, History)]
    assert [(i.kind, i.nick, i.text) for i in history.items] == [r.log[1], *away]
    live = [(e.type, e.nick, e.text_) for e in flat(events) if isinstance(e, Message | Action)]
    assert live == [r.log[5]]  # ann's line, not ben's own


def test_the_last_member_leaving_does_not_lose_the_room_history(room):
    # The room itself goes when its last member parts; its lines stay in the store.
    r = room(replay=20)
    r.join("ann")
    r.talk("ann")
    r.talk("ann", action=True)
    r.part("ann")
    assert r.service.rooms.find(room_key(ROOM)) is None
    r.join("ben")
    r.talk("ben")
    r.join("ann")
    r.check()
    (history,) = [e for e in r.events("ann") if isinstance(e, History)]
    assert [i.text for i in history.items] == [t for _, _, t in r.log]
