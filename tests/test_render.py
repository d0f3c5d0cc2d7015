"""The two renderings, byte for byte: docs/PROTOCOL.md is the contract they must keep."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task

from tests.doubles import Harness, RecordingParticipant
from twisted_chat.core.commands import Dispatcher
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
)
from twisted_chat.core.service import ChatService
from twisted_chat.render import JSON, RENDERERS, TEXT, Renderer, renderer_for
from twisted_chat.rules.limits import InputLimits

TS = 1795800000.1234  # written as 1795800000.123

# (event, text rendering, JSON rendering), both without the line ending.
CASES: list[tuple[Event, str, str]] = [
    (
        LoginNeeded(ts=TS, attempts=3),
        "*** Welcome to groupchat. This server needs a login: /login NAME PASSWORD "
        "(3 attempts left; other commands: /format, /ping, /quit)",
        '{"type":"login-required","ts":1795800000.123,"attempts":3}',
    ),
    (
        Message(ts=TS, room="#lobby", nick="alice", text_="hello"),
        "[#lobby] <alice> hello",
        '{"type":"message","ts":1795800000.123,"room":"#lobby","nick":"alice","text":"hello"}',
    ),
    (
        Message(ts=TS, room="#lobby", nick="alice", text_='héllo "q" \\ ✓'),
        '[#lobby] <alice> héllo "q" \\ ✓',
        '{"type":"message","ts":1795800000.123,"room":"#lobby","nick":"alice",'
        '"text":"héllo \\"q\\" \\\\ ✓"}',
    ),
    (
        History(
            ts=TS,
            room="#tea",
            items=[
                SimpleNamespace(
                    id=7, ts=TS - 60, kind="message", nick="bob", text="hi <all>", to=None
                ),
                SimpleNamespace(id=8, ts=TS - 30, kind="action", nick="bob", text="waves", to=None),
            ],
            more=True,
        ),
        "*** [#tea] earlier messages (2), times in UTC:\n"
        "[#tea 2026-11-27 17:19] <bob> hi <all>\n"
        "[#tea 2026-11-27 17:19] * bob waves\n"
        "*** [#tea] end of earlier messages (/history #tea for older ones)",
        '{"type":"history","ts":1795800000.123,"room":"#tea","with":null,"items":['
        '{"id":7,"ts":1795799940.123,"kind":"message","nick":"bob","text":"hi <all>"},'
        '{"id":8,"ts":1795799970.123,"kind":"action","nick":"bob","text":"waves"}],'
        '"more":true,"page":false}',
    ),
    (
        History(
            ts=TS,
            room=None,
            with_="bob",
            items=[
                SimpleNamespace(id=9, ts=TS - 60, kind="private", nick="bob", text="psst", to="al"),
            ],
            page=True,
        ),
        "*** [PM bob] earlier private messages (1), times in UTC:\n"
        "[PM bob -> al 2026-11-27 17:19] psst\n"
        "*** [PM bob] end of earlier private messages (nothing older is kept)",
        '{"type":"history","ts":1795800000.123,"room":null,"with":"bob","items":['
        '{"id":9,"ts":1795799940.123,"kind":"private","nick":"bob","text":"psst","to":"al"}],'
        '"more":false,"page":true}',
    ),
    (
        History(ts=TS, room="#tea", items=[], page=True),
        "*** [#tea] no earlier messages are kept",
        '{"type":"history","ts":1795800000.123,"room":"#tea","with":null,"items":[],'
        '"more":false,"page":true}',
    ),
    (
        Action(ts=TS, room="#lobby", nick="alice", text_="waves"),
        "[#lobby] * alice waves",
        '{"type":"action","ts":1795800000.123,"room":"#lobby","nick":"alice","text":"waves"}',
    ),
    (
        Private(ts=TS, sender="alice", recipient="bob", text_="psst"),
        "[PM alice -> bob] psst",
        '{"type":"private","ts":1795800000.123,"from":"alice","to":"bob","text":"psst"}',
    ),
    (
        Join(ts=TS, room="#ops", nick="bob", count=2),
        "*** [#ops] bob joined (2 here)",
        '{"type":"join","ts":1795800000.123,"room":"#ops","nick":"bob","count":2}',
    ),
    (
        Part(ts=TS, room="#ops", nick="bob", reason="lunch"),
        "*** [#ops] bob left (lunch)",
        '{"type":"part","ts":1795800000.123,"room":"#ops","nick":"bob","reason":"lunch"}',
    ),
    (
        Part(ts=TS, room="#ops", nick="bob", reason=""),
        "*** [#ops] bob left",
        '{"type":"part","ts":1795800000.123,"room":"#ops","nick":"bob","reason":""}',
    ),
    (
        Quit(ts=TS, room="#lobby", nick="bob", reason="bye"),
        "*** [#lobby] bob quit (bye)",
        '{"type":"quit","ts":1795800000.123,"room":"#lobby","nick":"bob","reason":"bye"}',
    ),
    (
        Quit(ts=TS, room="#lobby", nick="bob", reason="bye", rooms=["#lobby", "#ops"]),
        "*** [#lobby, #ops] bob quit (bye)",
        '{"type":"quit","ts":1795800000.123,"room":"#lobby","nick":"bob","reason":"bye",'
        '"rooms":["#lobby","#ops"]}',
    ),
    (
        TimedOut(ts=TS, room="#lobby", nick="carol", after=30.44),
        "*** [#lobby] carol timed out (no heartbeat for 30.4 s)",
        '{"type":"timeout","ts":1795800000.123,"room":"#lobby","nick":"carol","after":30.4}',
    ),
    (
        TimedOut(ts=TS, room="#a", nick="carol", after=30.0, rooms=["#a", "#b"]),
        "*** [#a, #b] carol timed out (no heartbeat for 30.0 s)",
        '{"type":"timeout","ts":1795800000.123,"room":"#a","nick":"carol","after":30.0,'
        '"rooms":["#a","#b"]}',
    ),
    (
        Disconnected(ts=TS, room="#lobby", nick="dave", reason="connection reset"),
        "*** [#lobby] dave lost connection (connection reset)",
        '{"type":"disconnect","ts":1795800000.123,"room":"#lobby","nick":"dave",'
        '"reason":"connection reset"}',
    ),
    (
        NickChange(ts=TS, old="guest1", new="alice"),
        "*** guest1 is now known as alice",
        '{"type":"nick","ts":1795800000.123,"old":"guest1","new":"alice"}',
    ),
    (
        Current(ts=TS, room="#ops"),
        "*** Now talking in #ops",
        '{"type":"current","ts":1795800000.123,"room":"#ops"}',
    ),
    (
        Current(ts=TS, room=None),
        "*** You are in no room now; /join #room to talk",
        '{"type":"current","ts":1795800000.123,"room":null}',
    ),
    (
        Members(ts=TS, room="#ops", members=["alice", "bob"]),
        "*** [#ops] 2 here: alice, bob",
        '{"type":"members","ts":1795800000.123,"room":"#ops","members":["alice","bob"],"ops":[]}',
    ),
    (
        Members(ts=TS, room="#ops", members=[]),
        "*** [#ops] nobody here",
        '{"type":"members","ts":1795800000.123,"room":"#ops","members":[],"ops":[]}',
    ),
    (
        RoomList(ts=TS, rooms=[("#lobby", 3, ""), ("#ops", 2, "deploys")], total=2),
        "*** Rooms: #lobby (3), #ops (2) 'deploys'",
        '{"type":"rooms","ts":1795800000.123,"rooms":[{"room":"#lobby","count":3},'
        '{"room":"#ops","count":2,"topic":"deploys"}],"total":2,"query":null}',
    ),
    (
        RoomList(ts=TS, rooms=[("#lobby", 40, ""), ("#ops", 2, "")], total=812),
        "*** Rooms (showing 2 of 812, largest first; /rooms TEXT to search): #lobby (40), #ops (2)",
        '{"type":"rooms","ts":1795800000.123,"rooms":[{"room":"#lobby","count":40},'
        '{"room":"#ops","count":2}],"total":812,"query":null}',
    ),
    (
        RoomList(ts=TS, rooms=[("#ops", 2, "")], total=3, query="ops"),
        '*** Rooms matching "ops" (showing 1 of 3, largest first): #ops (2)',
        '{"type":"rooms","ts":1795800000.123,"rooms":[{"room":"#ops","count":2}],'
        '"total":3,"query":"ops"}',
    ),
    (
        Members(ts=TS, room="#ops", members=["alice", "bob"], ops=["alice"]),
        "*** [#ops] 2 here: @alice, bob",
        '{"type":"members","ts":1795800000.123,"room":"#ops","members":["alice","bob"],'
        '"ops":["alice"]}',
    ),
    (
        Topic(ts=TS, room="#ops", topic="deploys at 5", by="alice", set_at=TS - 3600),
        "*** [#ops] Topic: deploys at 5 (set by alice 2026-11-27 16:20 UTC)",
        '{"type":"topic","ts":1795800000.123,"room":"#ops","topic":"deploys at 5",'
        '"by":"alice","set_at":1795796400.123,"locked":false,"changed":false}',
    ),
    (
        Topic(ts=TS, room="#ops", topic="new", by="bob", set_at=TS, locked=True, changed=True),
        "*** [#ops] bob set the topic: new (locked: only operators change it)",
        '{"type":"topic","ts":1795800000.123,"room":"#ops","topic":"new","by":"bob",'
        '"set_at":1795800000.123,"locked":true,"changed":true}',
    ),
    (
        Topic(ts=TS, room="#ops", topic=""),
        "*** [#ops] No topic is set",
        '{"type":"topic","ts":1795800000.123,"room":"#ops","topic":"","by":null,'
        '"set_at":null,"locked":false,"changed":false}',
    ),
    (
        Moderation(ts=TS, room="#ops", action="mute", by="alice", target="bob", reason=""),
        "*** [#ops] alice muted bob",
        '{"type":"moderation","ts":1795800000.123,"room":"#ops","action":"mute",'
        '"by":"alice","target":"bob","reason":""}',
    ),
    (
        Moderation(ts=TS, room="#ops", action="ban", by="alice", target="b*", reason="spam"),
        "*** [#ops] alice banned b* (spam)",
        '{"type":"moderation","ts":1795800000.123,"room":"#ops","action":"ban",'
        '"by":"alice","target":"b*","reason":"spam"}',
    ),
    (
        Moderation(ts=TS, room="#ops", action="op", by=None, target="carol"),
        "*** [#ops] carol is an operator now (the room had no operator left)",
        '{"type":"moderation","ts":1795800000.123,"room":"#ops","action":"op",'
        '"by":null,"target":"carol","reason":""}',
    ),
    (
        Bans(ts=TS, room="#ops", bans=[("spam*", "alice", "bots"), ("carol", "alice", "")]),
        "*** [#ops] bans: spam* (by alice: bots), carol (by alice)",
        '{"type":"bans","ts":1795800000.123,"room":"#ops","bans":['
        '{"target":"spam*","by":"alice","reason":"bots"},'
        '{"target":"carol","by":"alice","reason":""}]}',
    ),
    (
        Bans(ts=TS, room=None, bans=[]),
        "*** No server bans",
        '{"type":"bans","ts":1795800000.123,"room":null,"bans":[]}',
    ),
    (
        Notice(ts=TS, text="banned 203.0.113.0/24 from the server; 2 disconnected"),
        "*** banned 203.0.113.0/24 from the server; 2 disconnected",
        '{"type":"notice","ts":1795800000.123,"text":"banned 203.0.113.0/24 from the server; '
        '2 disconnected"}',
    ),
    (
        Wall(ts=TS, by="root", text="restart at 6"),
        "*** Notice from root (server operator): restart at 6",
        '{"type":"wall","ts":1795800000.123,"by":"root","text":"restart at 6"}',
    ),
    (
        RoomList(ts=TS, rooms=[], total=0, query="ops"),
        '*** No rooms match "ops"',
        '{"type":"rooms","ts":1795800000.123,"rooms":[],"total":0,"query":"ops"}',
    ),
    (
        RoomList(ts=TS, rooms=[], total=0),
        "*** No rooms",
        '{"type":"rooms","ts":1795800000.123,"rooms":[],"total":0,"query":null}',
    ),
    (
        Help(ts=TS, commands=[("/help", "show this list"), ("/quit [reason]", "leave")]),
        "*** Commands (a line not starting with / is said in your current room):\n"
        "***   /help           show this list\n"
        "***   /quit [reason]  leave",
        '{"type":"help","ts":1795800000.123,"commands":[{"usage":"/help",'
        '"help":"show this list"},{"usage":"/quit [reason]","help":"leave"}]}',
    ),
    (
        Pong(ts=TS, token="42"),
        "*** pong 42",
        '{"type":"pong","ts":1795800000.123,"token":"42"}',
    ),
    (
        Pong(ts=TS, token=""),
        "*** pong",
        '{"type":"pong","ts":1795800000.123,"token":""}',
    ),
    (
        IdleWarning(ts=TS, idle=26.04, remaining=4.46),
        "*** You have been silent for 26 s: send any line within 4.5 s to stay connected",
        '{"type":"idle","ts":1795800000.123,"idle":26.0,"remaining":4.5}',
    ),
    (
        SlowDown(ts=TS, rate=5.0, waiting=40),
        "*** Slow down: you are sending faster than 5 lines/s; "
        "40 lines are waiting and go out at that rate",
        '{"type":"slow-down","ts":1795800000.123,"rate":5.0,"waiting":40}',
    ),
    (
        SlowDown(ts=TS, rate=5.0, waiting=1),
        "*** Slow down: you are sending faster than 5 lines/s; "
        "1 line is waiting and goes out at that rate",
        '{"type":"slow-down","ts":1795800000.123,"rate":5.0,"waiting":1}',
    ),
    (
        Bye(ts=TS, reason="no heartbeat for 30.4 s"),
        "*** Disconnected: no heartbeat for 30.4 s",
        '{"type":"bye","ts":1795800000.123,"reason":"no heartbeat for 30.4 s"}',
    ),
    (
        Shutdown(ts=TS, reason="the server is stopping"),
        "*** Server shutting down: the server is stopping",
        '{"type":"shutdown","ts":1795800000.123,"reason":"the server is stopping"}',
    ),
    (
        Network(ts=TS, up=False, message="the network is split"),
        "*** Network: the network is split",
        '{"type":"network","ts":1795800000.123,"up":false,"message":"the network is split"}',
    ),
    (
        Error(ts=TS, code="unknown-command", message="unknown command /bogus"),
        "!!! unknown-command: unknown command /bogus",
        '{"type":"error","ts":1795800000.123,"code":"unknown-command",'
        '"message":"unknown command /bogus"}',
    ),
    (
        Crowd(
            ts=TS,
            room="#big",
            count=5000,
            joined=["ann", "bo", "cy"],
            joined_count=3,
            left=["dee"],
            left_count=1,
            renamed=[("eve", "eva")],
            renamed_count=1,
        ),
        "*** [#big] 3 joined: ann, bo, cy; 1 left: dee; 1 renamed: eve -> eva; 5000 here",
        '{"type":"crowd","ts":1795800000.123,"room":"#big","count":5000,'
        '"joined":["ann","bo","cy"],"joined_count":3,"left":["dee"],"left_count":1,'
        '"renamed":[["eve","eva"]],"renamed_count":1}',
    ),
    (
        Crowd(
            ts=TS,
            room="#big",
            count=31,
            joined=["ann", "bo"],
            joined_count=25,
            left=[],
            left_count=0,
            renamed=[],
            renamed_count=0,
        ),
        "*** [#big] 25 joined: ann, bo (+23); 31 here",
        '{"type":"crowd","ts":1795800000.123,"room":"#big","count":31,"joined":["ann","bo"],'
        '"joined_count":25,"left":[],"left_count":0,"renamed":[],"renamed_count":0}',
    ),
]


@pytest.mark.parametrize(("event", "text", "json_line"), CASES)
def test_each_event_renders_as_the_protocol_says(event: Event, text: str, json_line: str):
    assert TEXT.encode(event) == text.replace("\n", "\r\n").encode() + b"\r\n"
    assert JSON.encode(event) == json_line.encode() + b"\r\n"
    assert TEXT.text(event) == text
    assert JSON.document(event) == json.loads(json_line)


def _concrete_event_types() -> set[type[Event]]:
    found: set[type[Event]] = set()
    todo = [Event]
    while todo:
        kind = todo.pop()
        todo.extend(kind.__subclasses__())
        if not kind.__name__.startswith("_") and kind not in (Event, Batch):
            found.add(kind)
    return found


def test_every_event_type_is_covered_here_and_has_both_renderings():
    assert {type(event) for event, _, _ in CASES} | {Welcome} == _concrete_event_types()


def test_members_text_shows_at_most_a_hundred_names():
    event = Members(ts=TS, room="#big", members=[f"n{i}" for i in range(130)])
    text = TEXT.text(event)
    assert text.startswith("*** [#big] 130 here: n0, n1, ")
    assert text.endswith(", n99 and 30 more")
    assert len(JSON.document(event)["members"]) == 130


def _welcome(fmt: str = "text", login: str | None = None, guests: int = 1) -> Event:
    """The welcome a server with the default settings sends its ``guests``-th guest."""
    clock = task.Clock()
    clock.advance(1795800000.123)
    service = ChatService(clock, limits=InputLimits())
    for _ in range(guests):
        participant = RecordingParticipant()
        service.connect(participant, login=login, fmt=fmt)
    return participant.events[0]


def test_welcome_text_lists_the_core_commands_as_the_protocol_shows():
    assert TEXT.encode(_welcome(guests=2)) == (
        b"*** Welcome to groupchat 0.1.0, guest2! You are in #lobby.\r\n"
        b"*** Type a line to talk in your current room. Commands: /nick NAME, /join #room, "
        b"/part [#room], /rooms, /who [#room], /topic, /msg NICK text, /me action, /ping [token], "
        b"/format json|text, /help, /quit [reason]\r\n"
        b"*** Heartbeat: send any line (for example /ping) at least every 10 s; after 30 s "
        b"of silence you are disconnected (you are warned first).\r\n"
        b"*** Lines are limited to 2048 bytes.\r\n"
    )


def test_welcome_json_is_the_protocol_example_without_the_command_list():
    assert JSON.encode(_welcome("json")) == (
        b'{"type":"welcome","ts":1795800000.123,"nick":"guest1","rooms":["#lobby"],'
        b'"current":"#lobby","heartbeat":{"interval":10.0,"timeout":30.0,"sweep":1.0,'
        b'"warning":5.0},"max_line":2048,"limits":{"rate":5.0,"burst":10.0,'
        b'"byte_rate":16384.0,"flood_timeout":60.0},"logged_in":false,"server":"groupchat",'
        b'"version":"0.1.0","format":"json"}\r\n'
    )


def test_a_logged_in_member_is_not_offered_nick():
    welcome = _welcome(login="alice")
    text = TEXT.text(welcome)
    assert text.startswith("*** Welcome to groupchat 0.1.0, alice! You are in #lobby.\n")
    assert "Commands: /join #room, /part [#room], /rooms, /who [#room]," in text
    assert "/nick" not in text
    assert JSON.document(welcome)["logged_in"] is True


def test_each_rendering_is_made_once_and_shared_by_every_recipient():
    event = Message(ts=TS, room="#lobby", nick="alice", text_="hello")
    text, body = TEXT.encode(event), JSON.encode(event)
    assert TEXT.encode(event) is text and JSON.encode(event) is body
    assert text != body
    assert TEXT.render(event) == text and TEXT.render(event) is not text  # uncached


def test_a_batch_is_its_events_lines_and_encoding_seals_it():
    one = Message(ts=TS, room="#a", nick="x", text_="1")
    two = Action(ts=TS + 1, room="#a", nick="x", text_="2")
    batch = Batch(ts=TS, events=[one, two])
    assert not batch.sealed
    wire = TEXT.encode(batch)
    assert batch.sealed
    assert wire == b"[#a] <x> 1\r\n[#a] * x 2\r\n"
    assert TEXT.encode(batch) is wire and TEXT.encode(one) == b"[#a] <x> 1\r\n"
    assert TEXT.text(batch) == "[#a] <x> 1\n[#a] * x 2"
    fresh = Batch(ts=TS, events=[one, two])
    assert JSON.encode(fresh) == JSON.encode(one) + JSON.encode(two)
    assert fresh.sealed


def test_renderers_are_found_by_name_and_an_unknown_name_is_refused():
    assert RENDERERS == {"text": TEXT, "json": JSON}
    assert renderer_for("text") is TEXT and renderer_for("json") is JSON
    assert TEXT.name == "text" and JSON.name == "json"
    for name in ("xml", "", "JSON"):
        with pytest.raises(UnsupportedFormat, match=r"^usage: /format json\|text$"):
            renderer_for(name)


def test_an_event_type_without_a_rendering_is_an_error_not_a_lookalike():
    class Notice(Message):
        pass

    event = Notice(ts=TS, room="#a", nick="x", text_="hi")
    with pytest.raises(TypeError, match="no text rendering for Notice"):
        TEXT.encode(event)
    with pytest.raises(TypeError, match="no JSON rendering for Notice"):
        JSON.encode(event)


def test_a_renderer_of_ones_own_needs_only_a_line():
    class Upper(Renderer):
        name = "upper"

        def line(self, event: Event) -> bytes:
            return TEXT.line(event).upper()

    batch = Batch(ts=TS, events=[Pong(ts=TS, token="a"), Pong(ts=TS, token="b")])
    assert Upper().encode(batch) == b"*** PONG A\r\n*** PONG B\r\n"
    assert batch.sealed


def test_format_switch_goes_by_name_and_an_unknown_name_changes_nothing():
    h = Harness()
    alice, pa = h.add("alice")
    dispatcher = Dispatcher(h.service)
    dispatcher.dispatch(alice, "/format xml")
    assert pa.format is TEXT and alice.fmt == "text"
    assert TEXT.text(pa.events[-1]) == "!!! bad-format: usage: /format json|text"
    dispatcher.dispatch(alice, "/format  JSON ")
    assert pa.format is JSON and alice.fmt == "json"
    assert JSON.document(pa.events[-1])["format"] == "json"
    dispatcher.dispatch(alice, "/format")
    assert TEXT.text(pa.events[-1]) == "!!! bad-arguments: usage: /format json|text"


@settings(max_examples=300, deadline=None)
@given(
    ts=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    room=st.text(max_size=40),
    nick=st.text(max_size=40),
    text=st.text(max_size=200).filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)),
)
def test_messages_written_by_hand_are_what_the_json_encoder_writes(ts, room, nick, text):
    from twisted_chat.core.events import Action, Message, Private
    from twisted_chat.render import _JSON_ENCODER

    for event in (
        Message(ts=ts, room=room, nick=nick, text_=text),
        Action(ts=ts, room=room, nick=nick, text_=text),
        Private(ts=ts, sender=room, recipient=nick, text_=text),
    ):
        generic = _JSON_ENCODER.encode(JSON.document(event)).encode("utf-8") + b"\r\n"
        assert JSON.line(event) == generic
