"""The chat core on its own: recording participants and a fake clock, no protocol."""

from __future__ import annotations

from typing import cast

import pytest
from zope.interface.verify import verifyObject

from tests.doubles import Harness, RecordingParticipant
from twisted_chat.core.errors import (
    EmptyMessage,
    NickInvalid,
    NickReserved,
    NickTaken,
    NoSuchNick,
    NoSuchRoom,
    NotInRoom,
    RoomInvalid,
)
from twisted_chat.core.interfaces import IChatService
from twisted_chat.core.local import LocalNicks
from twisted_chat.render import JSON, TEXT


def test_service_provides_interface():
    verifyObject(IChatService, Harness().service)


def test_connect_greets_with_guest_nick_and_seats_in_lobby():
    h = Harness()
    p = RecordingParticipant()
    member = h.service.connect(p)
    welcome = p.events[0]
    assert welcome.type == "welcome"
    assert JSON.document(welcome)["nick"] == member.nick
    assert member.nick.startswith("guest")
    assert JSON.document(welcome)["heartbeat"] == {
        "interval": 10.0,
        "timeout": 30.0,
        "sweep": 1.0,
        "warning": 5.0,
    }
    assert "#lobby" in TEXT.text(welcome)
    assert [e.type for e in p.events[1:]] == ["join", "members", "current"]
    assert member.current is not None and member.current.name == "#lobby"


def test_guest_nicks_are_distinct():
    h = Harness()
    nicks = {h.service.connect(RecordingParticipant()).nick for _ in range(5)}
    assert len(nicks) == 5


@pytest.mark.parametrize(
    "taken,attempt",
    [
        ("alice", "ALICE"),
        ("alice", "Álice"),
        ("alice", "\u0430lice"),  # Cyrillic a
        ("bob1", "bobl"),
        ("ﬁona", "fiona"),  # NFKC ligature
    ],
)
def test_nick_unique_ignoring_case_and_lookalikes(taken, attempt):
    h = Harness()
    h.add(taken)
    member, _ = h.add("other")
    with pytest.raises(NickTaken, match="taken"):
        h.service.set_nick(member, attempt)


def test_own_nick_case_change_allowed():
    h = Harness()
    member, p = h.add("alice")
    h.service.set_nick(member, "Alice")
    assert member.nick == "Alice"
    assert TEXT.text(p.of_type("nick")[0]) == "*** alice is now known as Alice"


@pytest.mark.parametrize(
    "bad,error",
    [
        ("", NickInvalid),
        ("a" * 25, NickInvalid),
        ("1abc", NickInvalid),
        ("a b", NickInvalid),
        ("a\x1b[2J", NickInvalid),
        ("<bob>", NickInvalid),
        ("a\u202eb", NickInvalid),
        ("server", NickReserved),
        ("SERVER", NickReserved),
        ("Ädmin", NickReserved),
        ("_", NickInvalid),
        ("_-_", NickInvalid),
        ("\U0001f4a9", NickInvalid),
        ("guest7", NickReserved),
        ("Guest12", NickReserved),
    ],
)
def test_bad_nicks_refused_with_reason(bad, error):
    h = Harness()
    member, _ = h.add("alice")
    with pytest.raises(error) as info:
        h.service.set_nick(member, bad)
    assert info.value.message


def test_unicode_nick_allowed():
    h = Harness()
    member, _ = h.add("zoë")
    assert member.nick == "zoë"
    h.service.set_nick(member, "日本語")
    assert member.nick == "日本語"


def test_nick_change_told_once_to_everyone_sharing_a_room():
    h = Harness()
    alice, pa = h.add("alice")
    bob, pb = h.add("bob")
    carol, pc = h.add("carol")
    for m in (alice, bob):
        h.service.join(m, "#ops")
    for p in (pa, pb, pc):
        p.clear()
    h.service.set_nick(alice, "alicia")
    assert len(pb.of_type("nick")) == 1  # shares #lobby and #ops, told once
    assert len(pc.of_type("nick")) == 1
    assert len(pa.of_type("nick")) == 1
    assert h.service.nicks.owner("alice") is None


def test_message_reaches_every_other_member_of_the_room_only():
    h = Harness()
    alice, pa = h.add("alice")
    bob, pb = h.add("bob")
    carol, pc = h.add("carol")
    h.service.join(alice, "#ops")
    h.service.join(bob, "#ops")
    for p in (pa, pb, pc):
        p.clear()
    h.service.say(alice, "hello ops")
    assert pb.texts() == ["[#ops] <alice> hello ops"]
    assert pa.events == []
    assert pc.events == []


def test_lines_from_other_rooms_name_their_room():
    h = Harness()
    alice, _ = h.add("alice")
    bob, pb = h.add("bob")
    h.service.join(bob, "#ops")  # bob's current room is now #ops; alice talks in #lobby
    pb.clear()
    h.service.say(alice, "hi lobby")
    assert pb.texts() == ["[#lobby] <alice> hi lobby"]


def test_join_part_rooms_who():
    h = Harness()
    alice, pa = h.add("alice")
    bob, pb = h.add("bob")
    h.service.join(alice, "ops")  # '#' is optional
    assert TEXT.text(pa.of_type("join")[-1]) == "*** [#ops] alice joined (1 here)"
    h.service.join(bob, "#OPS")  # same room, ignoring case
    assert TEXT.text(pa.of_type("join")[-1]) == "*** [#ops] bob joined (2 here)"
    pa.clear()
    h.service.list_rooms(alice)
    assert pa.texts() == ["*** Rooms: #lobby (2), #ops (2)"]
    pa.clear()
    h.service.who(alice, "#ops")
    assert JSON.document(pa.events[0])["members"] == ["alice", "bob"]
    pb.clear()
    h.service.part(alice, None, "lunch")
    # alice made #ops, so was its operator: bob, present longest, is one now.
    assert pb.texts() == [
        "*** [#ops] alice left (lunch)",
        "*** [#ops] bob is an operator now (the room had no operator left)",
    ]
    assert alice.current is not None and alice.current.name == "#lobby"
    h.service.part(bob, "#ops")
    assert "#ops" not in [r.name for r in h.service.rooms.rooms()]  # empty rooms go away
    with pytest.raises(NoSuchRoom):
        h.service.who(alice, "#ops")
    with pytest.raises(RoomInvalid):
        h.service.join(alice, "#no way")
    with pytest.raises(NoSuchRoom):
        h.service.part(bob, "#nowhere-x")


def test_part_room_not_in_and_say_without_room():
    h = Harness()
    alice, _ = h.add("alice")
    bob, _ = h.add("bob")
    h.service.join(bob, "#ops")
    with pytest.raises(NotInRoom):
        h.service.part(alice, "#ops")
    h.service.part(alice, None)
    assert alice.current is None
    with pytest.raises(NotInRoom, match="/join"):
        h.service.say(alice, "anyone?")


def test_private_message_to_recipient_and_sender_only():
    h = Harness()
    alice, pa = h.add("alice")
    bob, pb = h.add("bob")
    carol, pc = h.add("carol")
    for p in (pa, pb, pc):
        p.clear()
    h.service.private(alice, "BOB", "psst")
    assert pb.texts() == ["[PM alice -> bob] psst"]
    assert pa.texts() == ["[PM alice -> bob] psst"]
    assert pc.events == []
    with pytest.raises(NoSuchNick):
        h.service.private(alice, "nobody", "hi")


def test_control_and_escape_sequences_never_reach_others():
    h = Harness()
    alice, _ = h.add("alice")
    bob, pb = h.add("bob")
    h.service.say(alice, "a\x1b[2J\x1b]0;pwned\x07b\rc\u202ed\x07e\x00f")
    (line,) = pb.texts()
    assert line == "[#lobby] <alice> abcdef"
    with pytest.raises(EmptyMessage):
        h.service.say(alice, "\x1b[2J\x07")


def test_one_failing_recipient_is_dropped_and_the_rest_still_receive(logged_errors):
    logged_errors.expected = True
    h = Harness()
    alice, _ = h.add("alice")
    broken, pbroken = h.add("broken")
    carol, pc = h.add("carol")
    pc.clear()

    def explode(event):
        raise RuntimeError("boom")

    pbroken.deliver = explode  # type: ignore[method-assign]
    h.service.say(alice, "still here?")
    assert "[#lobby] <alice> still here?" in pc.texts()
    assert not broken.present
    assert any("broken lost connection" in t for t in pc.texts())
    assert pbroken.closed
    assert len(logged_errors.events) == 1


def test_quit_is_told_once_per_member_and_later_connection_lost_is_silent():
    h = Harness()
    alice, pa = h.add("alice")
    bob, pb = h.add("bob")
    h.service.join(alice, "#ops")
    h.service.join(bob, "#ops")
    pb.clear()
    h.service.quit(alice, "bye \x1b[31mnow")
    h.service.connection_lost(alice, "connection closed")
    h.service.quit(alice, "again")
    assert pb.texts() == [
        "*** [#lobby, #ops] alice quit (bye now)",  # once for both rooms
        "*** [#ops] bob is an operator now (the room had no operator left)",
    ]
    assert [e.type for e in pa.closed if e] == ["bye"]
    assert h.service.nicks.owner("alice") is None


def test_connection_lost_tells_rooms_once():
    h = Harness()
    alice, _ = h.add("alice")
    bob, pb = h.add("bob")
    h.service.connection_lost(alice, "connection reset")
    h.service.connection_lost(alice, "connection reset")
    assert pb.texts() == ["*** [#lobby] alice lost connection (connection reset)"]
    assert alice not in h.service.members


def test_format_switch_resends_welcome_in_new_format():
    h = Harness()
    alice, pa = h.add("alice")
    h.service.set_format(alice, "json")
    assert pa.format is JSON
    welcome = JSON.document(pa.events[-1])
    assert welcome["type"] == "welcome" and welcome["format"] == "json"
    assert welcome["rooms"] == ["#lobby"] and welcome["nick"] == "alice"


def test_ping_answers_with_token_cleaned_and_bounded():
    h = Harness()
    alice, pa = h.add("alice")
    h.service.ping(alice, "abc\x1b[2J" + "x" * 100)
    token = JSON.document(pa.events[-1])["token"]
    assert token.startswith("abc") and "\x1b" not in token and len(token) <= 64


def _flat(p: RecordingParticipant) -> list[str]:
    """What a participant was shown, in order, with batches opened up."""
    shown: list[str] = []
    for event in p.events:
        inner = getattr(event, "events", None)
        shown.extend(TEXT.text(e) for e in (inner if inner is not None else [event]))
    return shown


def test_lines_of_one_input_turn_share_one_delivery_per_recipient_in_order():
    h = Harness()
    alice, _ = h.add("alice")
    _, bob = h.add("bob")
    _, carol = h.add("carol")
    bob.clear()
    carol.clear()
    h.service.begin_batch()
    h.service.say(alice, "one")
    h.service.say(alice, "two")
    h.service.private(alice, "bob", "psst")
    h.service.say(alice, "three")
    h.service.end_batch()
    assert _flat(bob) == [
        "[#lobby] <alice> one",
        "[#lobby] <alice> two",
        "[PM alice -> bob] psst",
        "[#lobby] <alice> three",
    ]
    assert [e.type for e in bob.events] == ["batch", "private", "batch"]
    # The private message ended the first run: carol's deliveries follow bob's, not hers.
    assert _flat(carol) == [
        "[#lobby] <alice> one",
        "[#lobby] <alice> two",
        "[#lobby] <alice> three",
    ]
    assert len(carol.events) == 2
    h.service.say(alice, "after")  # outside a turn: plain events
    assert bob.events[-1].type == "message"


def test_a_run_never_reaches_someone_who_joined_after_it_started():
    h = Harness()
    alice, _ = h.add("alice")
    _, bob = h.add("bob")
    dave = RecordingParticipant()
    h.service.begin_batch()
    h.service.say(alice, "before dave")
    h.service.connect(dave)  # joins #lobby in the middle of alice's turn
    h.service.say(alice, "after dave")
    h.service.end_batch()
    assert "[#lobby] <alice> before dave" not in _flat(dave)
    assert _flat(dave)[-1] == "[#lobby] <alice> after dave"
    shown = _flat(bob)
    assert shown.index("[#lobby] <alice> before dave") < shown.index("[#lobby] <alice> after dave")
    assert len([s for s in shown if s.startswith("*** [#lobby] guest")]) == 1


def test_a_batch_is_sealed_once_encoded_or_the_turn_ends():
    h = Harness()
    alice, _ = h.add("alice")
    _, bob = h.add("bob")
    bob.clear()
    h.service.begin_batch()
    h.service.say(alice, "one")
    assert TEXT.encode(bob.events[0]) == b"[#lobby] <alice> one\r\n"
    h.service.say(alice, "two")  # a fresh delivery: what was encoded never grows
    h.service.end_batch()
    assert [len(e.events) for e in bob.events] == [1, 1]  # type: ignore[attr-defined]
    h.service.begin_batch()
    h.service.say(alice, "three")
    h.service.end_batch()
    assert len(bob.events) == 3


def _crowd(limit: int = 3, interval: float = 5.0) -> Harness:
    h = Harness()
    h.service.summarize_above = limit
    h.service.summary_interval = interval
    return h


def test_a_crowded_room_summarizes_arrivals_instead_of_telling_everyone_each_one():
    h = _crowd()
    _, alice = h.add("alice")
    h.add("bob")
    h.add("carol")  # three: not yet a crowd, so everyone was told
    assert alice.texts()[-2:] == [
        "*** [#lobby] guest3 joined (3 here)",
        "*** guest3 is now known as carol",
    ]
    alice.clear()
    dave = RecordingParticipant()
    h.service.set_nick(h.service.connect(dave), "dave")
    eve = RecordingParticipant()
    h.service.set_nick(h.service.connect(eve), "eve")
    assert alice.events == []  # two arrivals, nothing sent to the crowd yet
    assert [e.type for e in dave.events] == ["welcome", "join", "current", "nick"]  # no list
    h.clock.advance(5)
    assert alice.texts() == ["*** [#lobby] 2 joined: dave, eve; 5 here"]
    assert dave.texts()[-1] == alice.texts()[-1]
    crowd = JSON.document(alice.events[-1])
    assert (crowd["joined"], crowd["joined_count"], crowd["count"]) == (["dave", "eve"], 2, 5)
    h.clock.advance(60)
    assert len(alice.events) == 1  # nothing happened: no summary


def test_crowd_summary_counts_departures_and_renames_and_forgets_who_came_and_went():
    h = _crowd()
    bob, _ = h.add("bob")
    carol, _ = h.add("carol")
    h.add("dave")
    _, alice = h.add("alice")  # the fourth: a summary is now pending
    h.clock.advance(5)
    alice.clear()
    h.service.quit(carol, "bye")
    h.service.set_nick(bob, "robert")
    fleeting = RecordingParticipant()
    h.service.quit(h.service.connect(fleeting), "")
    assert alice.events == []
    h.clock.advance(5)
    assert alice.texts() == ["*** [#lobby] 1 left: carol; 1 renamed: bob -> robert; 3 here"]


def test_crowd_summary_lists_twenty_names_and_counts_the_rest():
    h = _crowd(limit=1)
    _, first = h.add("first")
    for _ in range(30):
        h.service.connect(RecordingParticipant())
    h.clock.advance(5)
    (summary,) = first.events
    assert JSON.document(summary)["joined_count"] == 30
    assert len(JSON.document(summary)["joined"]) == 20
    assert TEXT.text(summary).endswith("(+10); 31 here")


def test_a_member_timing_out_of_a_crowd_is_summarized_too():
    h = _crowd(limit=2)
    h.add("alice")
    _, bob = h.add("bob")
    carol = RecordingParticipant()
    h.service.set_nick(h.service.connect(carol), "carol")
    h.clock.advance(5)
    bob.clear()
    h.service.startService()
    for _ in range(25):
        h.clock.advance(1)
        h.service.touch(h.people["alice"][0])
        h.service.touch(h.people["bob"][0])
    for _ in range(10):
        h.clock.advance(1)
        h.service.touch(h.people["alice"][0])
        h.service.touch(h.people["bob"][0])
    assert carol.closed and carol.closed[0].type == "bye"  # type: ignore[union-attr]
    assert "carol" in bob.texts()[-1] and "1 left: carol" in bob.texts()[-1]
    h.service.stopService()


def test_case_is_ignored_even_for_letters_whose_cases_look_like_different_latin_letters():
    # Cyrillic capital BE looks like B but its small letter like 6 (Greek ETA: H and n):
    # one skeleton cannot ignore both case and look-alikes, so a name holds several keys.
    h = Harness()
    boris, pb = h.add("Борис")
    other, po = h.add("ilias")
    for spelling in ("борис", "БОРИС", "Бopиc"):
        with pytest.raises(NickTaken):
            h.service.set_nick(other, spelling)
    h.service.set_nick(other, "Ηλίας")
    with pytest.raises(NickTaken):
        h.service.set_nick(boris, "ηλίας")
    h.service.private(other, "борис", "hello")
    assert [e.type for e in pb.events][-1] == "private"
    h.service.set_nick(boris, "БОРИС")  # only the case of one's own name: allowed
    assert boris.nick == "БОРИС"
    h.service.quit(boris, "")
    assert cast(LocalNicks, h.service.nicks).keys().isdisjoint({"bopᴎc", "6opᴎc"})  # all keys


def test_nicknames_rooms_and_delivery_go_through_the_seams_a_backplane_replaces():
    from twisted.internet import task
    from zope.interface.verify import verifyObject

    from tests.doubles import RecordingParticipant
    from twisted_chat.core.interfaces import IDelivery, INickRegistry, IRoomDirectory
    from twisted_chat.core.local import LocalDelivery, LocalRooms
    from twisted_chat.core.service import ChatService

    seen: list[str] = []

    class Nicks(LocalNicks):
        def claim(self, nick, holder):
            seen.append(f"claim {nick}")
            super().claim(nick, holder)

        def release(self, nick, holder):
            seen.append(f"release {nick}")
            super().release(nick, holder)

    class Rooms(LocalRooms):
        def enter(self, room, member):
            seen.append(f"enter {room.name}")
            super().enter(room, member)

    class Delivery(LocalDelivery):
        def fanout(self, members, event, exclude):
            seen.append(f"fanout {event.type}")
            return super().fanout(members, event, exclude)

    nicks, rooms, delivery = Nicks(), Rooms(), Delivery()
    for interface, provider in (
        (INickRegistry, nicks),
        (IRoomDirectory, rooms),
        (IDelivery, delivery),
    ):
        assert verifyObject(interface, provider)
    svc = ChatService(task.Clock(), nicks=nicks, rooms=rooms, delivery=delivery)
    alice = svc.connect(RecordingParticipant())
    svc.connect(RecordingParticipant())
    svc.set_nick(alice, "alice")
    svc.join(alice, "#ops")
    svc.say(alice, "hello")
    assert "claim alice" in seen and "enter #ops" in seen and "fanout message" in seen
    assert rooms.find("#ops") is not None and nicks.owner("alice") is alice
    svc.quit(alice, "bye")
    assert "release alice" in seen
    assert rooms.find("#ops") is None  # its last member left
