"""Room limits and the bounded /rooms listing (a security fix: rooms were unbounded)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.doubles import Harness, RecordingParticipant
from twisted_chat.client.render import system_line
from twisted_chat.core.commands import Dispatcher
from twisted_chat.core.errors import ServerRoomsFull, TooManyRooms
from twisted_chat.core.events import RoomList
from twisted_chat.core.service import ROOMS_SHOWN, ChatService, Member
from twisted_chat.render import JSON, TEXT


def _harness(**limits: Any) -> Harness:
    h = Harness()
    h.service = ChatService(h.clock, **limits)
    return h


def _rooms(h: Harness, member: Member, p: RecordingParticipant, query: str | None = None):
    p.clear()
    h.service.list_rooms(member, query)
    [event] = p.events
    assert isinstance(event, RoomList)
    return event


def test_the_lobby_counts_toward_the_rooms_per_member():
    h = _harness(max_rooms_per_member=3)
    alice, pa = h.add("alice")
    h.service.join(alice, "#a")
    h.service.join(alice, "#b")
    with pytest.raises(TooManyRooms) as caught:
        h.service.join(alice, "#c")
    assert caught.value.code == "too-many-rooms"
    assert caught.value.message == "you are in 3 rooms, the most allowed; /part one first"
    assert h.service.rooms.find("#c") is None  # refused before anything was created
    assert alice.current is not None and alice.current.name == "#b"


def test_rejoining_a_room_you_are_in_is_not_a_new_room():
    h = _harness(max_rooms_per_member=2, max_rooms=2)
    alice, pa = h.add("alice")
    h.service.join(alice, "#a")
    pa.clear()
    h.service.join(alice, "#LOBBY")
    h.service.join(alice, "a")
    assert [TEXT.text(e) for e in pa.events] == [
        "*** Now talking in #lobby",
        "*** Now talking in #a",
    ]


def test_parting_makes_room_for_another_join():
    h = _harness(max_rooms_per_member=1)
    alice, _ = h.add("alice")
    with pytest.raises(TooManyRooms, match="you are in 1 rooms"):
        h.service.join(alice, "#a")
    h.service.part(alice, "#lobby")
    h.service.join(alice, "#a")
    assert list(alice.rooms) == ["#a"]


def test_the_wire_error_for_one_room_too_many():
    h = _harness(max_rooms_per_member=2)
    alice, pa = h.add("alice")
    dispatcher = Dispatcher(h.service)
    dispatcher.dispatch(alice, "/join #a")
    pa.clear()
    dispatcher.dispatch(alice, "/join #b")
    assert pa.texts() == [
        "!!! too-many-rooms: you are in 2 rooms, the most allowed; /part one first"
    ]


def test_the_server_refuses_a_new_room_beyond_max_rooms_but_not_existing_ones():
    h = _harness(max_rooms=3)  # #lobby, #a, #b
    alice, _ = h.add("alice")
    bob, pb = h.add("bob")
    h.service.join(alice, "#a")
    h.service.join(alice, "#b")
    with pytest.raises(ServerRoomsFull) as caught:
        h.service.join(bob, "#c")
    assert caught.value.code == "server-rooms-full"
    assert caught.value.message == (
        "the server has 3 rooms, the most it allows; join an existing one (/rooms)"
    )
    assert h.service.rooms.find("#c") is None
    pb.clear()
    h.service.join(bob, "#A")
    assert pb.texts()[0] == "*** [#a] bob joined (2 here)"
    h.service.join(bob, "#b")
    assert sorted(bob.rooms) == ["#a", "#b", "#lobby"]


def test_a_room_freed_when_emptied_can_be_created_again():
    h = _harness(max_rooms=2)
    alice, _ = h.add("alice")
    bob, _ = h.add("bob")
    h.service.join(alice, "#a")
    h.service.join(bob, "#a")
    h.service.part(alice, "#a")
    with pytest.raises(ServerRoomsFull):
        h.service.join(alice, "#b")  # bob still holds #a open
    h.service.quit(bob, "bye")  # leaving by any route frees it
    h.service.join(alice, "#b")
    assert sorted(r.name for r in h.service.rooms.rooms()) == ["#b", "#lobby"]


@pytest.mark.parametrize("limits", [{"max_rooms_per_member": 0}, {"max_rooms": 0}])
def test_limits_below_one_are_refused_at_construction(limits):
    with pytest.raises(ValueError, match="at least 1"):
        _harness(**limits)


def _sixty_rooms() -> tuple[Harness, Member, RecordingParticipant]:
    """#lobby (3), #r07 (3), #r42 (2) and 58 more rooms of one member each."""
    h = _harness(max_rooms_per_member=100)
    alice, pa = h.add("alice")
    bob, _ = h.add("bob")
    carol, _ = h.add("carol")
    for i in range(60):
        h.service.join(alice, f"#r{i:02}")
    h.service.join(bob, "#r07")
    h.service.join(carol, "#r07")
    h.service.join(bob, "#r42")
    return h, alice, pa


def test_rooms_shows_the_largest_first_then_by_name_and_counts_the_rest():
    h, alice, pa = _sixty_rooms()
    event = _rooms(h, alice, pa)
    by_size = ["#r00", "#r01", "#r02", "#r03", "#r04", "#r05", "#r06", "#r08", "#r09", "#r10"]
    expected = [("#lobby", 3), ("#r07", 3), ("#r42", 2)] + [(n, 1) for n in by_size]
    assert [(n, c) for n, c, _ in event.rooms[:13]] == expected
    assert len(event.rooms) == ROOMS_SHOWN == 50
    assert event.rooms[-1] == ("#r48", 1, "")
    assert TEXT.text(event).startswith(
        "*** Rooms (showing 50 of 61, largest first; /rooms TEXT to search): "
        "#lobby (3), #r07 (3), #r42 (2), #r00 (1), "
    )
    wire = json.loads(JSON.encode(event))
    assert wire["total"] == 61 and wire["query"] is None
    assert wire["rooms"][:2] == [{"room": "#lobby", "count": 3}, {"room": "#r07", "count": 3}]


def test_rooms_text_lists_only_names_containing_it_ignoring_case():
    h, alice, pa = _sixty_rooms()
    h.service.join(alice, "#Ops-Team")
    event = _rooms(h, alice, pa, "R4")
    assert TEXT.text(event) == (
        '*** Rooms matching "R4": #r42 (2), #r40 (1), #r41 (1), #r43 (1), #r44 (1), '
        "#r45 (1), #r46 (1), #r47 (1), #r48 (1), #r49 (1)"
    )
    assert JSON.document(event)["total"] == 10 and JSON.document(event)["query"] == "R4"
    assert TEXT.text(_rooms(h, alice, pa, "oPS")) == '*** Rooms matching "oPS": #Ops-Team (1)'
    assert _rooms(h, alice, pa, "#r0").total == 10
    assert TEXT.text(_rooms(h, alice, pa, "zzz")) == '*** No rooms match "zzz"'


def test_a_search_is_capped_too():
    h, alice, pa = _sixty_rooms()
    event = _rooms(h, alice, pa, "r")
    assert len(event.rooms) == 50 and event.total == 60
    assert TEXT.text(event).startswith(
        '*** Rooms matching "r" (showing 50 of 60, largest first): #r07 (3), #r42 (2), #r00 (1)'
    )


def test_rooms_search_text_is_cleaned_and_bounded_before_it_is_echoed():
    h = _harness()
    alice, pa = h.add("alice")
    event = _rooms(h, alice, pa, "\x1b[2J" + "x" * 500)
    assert event.query == "x" * 39 + "…"
    assert "\x1b" not in TEXT.text(event)


def test_rooms_through_the_dispatcher_and_help():
    h = _harness()
    alice, pa = h.add("alice")
    dispatcher = Dispatcher(h.service)
    dispatcher.dispatch(alice, "/rooms lob")
    dispatcher.dispatch(alice, "/list")
    dispatcher.dispatch(alice, "/rooms two words")
    assert pa.texts() == [
        '*** Rooms matching "lob": #lobby (1)',
        "*** Rooms: #lobby (1)",
        "!!! bad-arguments: usage: /rooms [TEXT] (room names have no spaces)",
    ]
    pa.clear()
    dispatcher.dispatch(alice, "/help")
    usages = [c["usage"] for c in JSON.document(pa.events[0])["commands"]]
    assert "/rooms [TEXT]" in usages


def test_rooms_follows_every_change_despite_its_caches():
    """Random joins, parts and quits; every /rooms must equal a fresh full sort."""
    rng = random.Random(7)
    h = _harness(max_rooms_per_member=6, max_rooms=12)
    people = [h.add(f"p{i}") for i in range(8)]
    names = [f"#{c}" for c in "abcdefghijklmn"] + ["#r10", "#r9", "#Ops"]
    for _ in range(1500):
        member, p = rng.choice(people)
        roll = rng.random()
        try:
            if roll < 0.5:
                h.service.join(member, rng.choice(names))
            elif roll < 0.9 and member.rooms:
                h.service.part(member, rng.choice([r.name for r in member.rooms.values()]))
            elif roll < 0.95:
                h.service.quit(member, "")
                people.remove((member, p))
                people.append(h.add(f"q{rng.randrange(10**6)}"))
            else:
                query = rng.choice(["", "a", "B", "#c"])
                got = _rooms(h, member, p, query or None)
                everything = sorted(
                    ((r.name, len(r.members), r.topic) for r in h.service.rooms.rooms()),
                    key=lambda item: (-item[1], item[0].casefold()),
                )
                want = [item for item in everything if query.lower() in item[0].lower()]
                assert list(got.rooms) == want[:ROOMS_SHOWN] and got.total == len(want)
        except (TooManyRooms, ServerRoomsFull):
            pass


def test_a_rooms_answer_stays_small_with_a_thousand_rooms():
    h = _harness(max_rooms_per_member=1000)
    alice, pa = h.add("alice")
    for i in range(999):
        h.service.join(alice, f"#{i:04}" + "x" * 28)  # the longest names allowed
    assert h.service.rooms.count() == h.service.max_rooms == 1000
    with pytest.raises(ServerRoomsFull, match="the server has 1000 rooms"):
        h.service.join(h.add("bob")[0], "#one-more")
    event = _rooms(h, alice, pa)
    assert event.total == 1000 and len(event.rooms) == 50
    assert len(TEXT.encode(event)) < 3 * 1024
    assert len(JSON.encode(event)) < 3 * 1024


def test_the_client_shows_how_many_more_rooms_there_are():
    h, alice, pa = _sixty_rooms()
    shown = system_line(json.loads(JSON.encode(_rooms(h, alice, pa))))
    assert shown is not None
    assert shown.startswith("rooms: #lobby (3), #r07 (3), #r42 (2), ")
    assert shown.endswith("#r48 (1) and 11 more (/rooms TEXT to search)")
    found = system_line(json.loads(JSON.encode(_rooms(h, alice, pa, "r"))))
    assert found is not None and found.startswith('rooms matching "r": #r07 (3)')
    assert found.endswith(" and 10 more")
    # A server from before the limits sent every room and no total: nothing more to say.
    assert system_line({"type": "rooms", "rooms": [{"room": "#a", "count": 2}]}) == "rooms: #a (2)"
