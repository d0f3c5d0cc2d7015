"""Topics, room operators and their powers, succession, mutes, bans, and server operators:
each rule through the one dispatcher, as members type it."""

from __future__ import annotations

from typing import Any

from twisted.internet import task

from tests.doubles import RecordingParticipant
from twisted_chat.core.events import Error
from twisted_chat.core.moderation import ServerBan, ServerBans, parse_network
from twisted_chat.core.service import ChatService, HeartbeatPolicy, Member


class Room:
    """A service on a fake clock; people typed in by nickname."""

    def __init__(self, operators: frozenset[str] = frozenset()) -> None:
        self.clock = task.Clock()
        self.service = ChatService(self.clock, HeartbeatPolicy(), operators=operators)
        self.people: dict[str, tuple[Member, RecordingParticipant]] = {}

    def add(self, nick: str, address: str = "", login: bool = False) -> Member:
        p = RecordingParticipant()
        if login:
            member = self.service.connect(p, login=nick, address=address)
        else:
            member = self.service.connect(p, address=address)
            self.service.set_nick(member, nick)
        p.clear()
        self.people[nick] = (member, p)
        return member

    def type(self, nick: str, line: str) -> None:
        self.service.dispatcher.dispatch(self.people[nick][0], line)

    def texts(self, nick: str) -> list[str]:
        p = self.people[nick][1]
        out = p.texts()
        p.clear()
        return out

    def errors(self, nick: str) -> list[str]:
        p = self.people[nick][1]
        found = [f"{e.code}: {e.message}" for e in p.events if isinstance(e, Error)]
        p.clear()
        return found

    def member(self, nick: str) -> Member:
        return self.people[nick][0]


def tea(*nicks: str, operators: frozenset[str] = frozenset(), login: bool = False) -> Room:
    """``nicks`` joined #tea in order (the first made it)."""
    r = Room(operators)
    for i, nick in enumerate(nicks):
        r.add(nick, address=f"198.51.100.{i + 1}", login=login)
        r.type(nick, "/join #tea")
    for nick in nicks:
        r.texts(nick)
    return r


def test_the_first_member_of_a_new_room_is_its_operator_and_who_shows_it():
    r = tea("alice", "bob")
    r.type("bob", "/who")
    assert r.texts("bob") == ["*** [#tea] 2 here: @alice, bob"]
    r.type("bob", "/who #lobby")  # #lobby has no room operators
    assert r.texts("bob") == ["*** [#lobby] 2 here: alice, bob"]


def test_topics_are_shown_on_join_in_rooms_and_locked_by_operators():
    r = tea("alice", "bob")
    r.type("bob", "/topic brewing: oolong")  # anyone, while unlocked
    assert r.texts("alice") == ["*** [#tea] bob set the topic: brewing: oolong"]
    r.texts("bob")
    r.type("alice", "/lock-topic")
    assert r.texts("bob") == ["*** [#tea] alice locked the topic: only operators may change it"]
    r.type("bob", "/topic mine now")
    assert r.errors("bob") == ["not-allowed: you are not an operator of #tea"]
    r.add("carol")
    r.type("carol", "/join #tea")
    topic = [t for t in r.texts("carol") if "Topic:" in t]
    assert topic == [
        "*** [#tea] Topic: brewing: oolong (set by bob 1970-01-01 00:00 UTC) "
        "(locked: only operators change it)"
    ]
    r.type("carol", "/rooms")
    assert r.texts("carol") == ["*** Rooms: #lobby (3), #tea (3) 'brewing: oolong'"]
    r.type("alice", "/topic -")
    assert r.texts("carol") == [
        "*** [#tea] alice cleared the topic (locked: only operators change it)"
    ]


def test_op_deop_and_succession_to_the_longest_present():
    r = tea("alice", "bob", "carol")
    r.type("bob", "/op carol")
    assert r.errors("bob") == ["not-allowed: you are not an operator of #tea"]
    r.type("alice", "/op carol")
    assert r.texts("bob") == ["*** [#tea] alice made carol an operator"]
    r.type("alice", "/part #tea")
    assert r.texts("bob") == ["*** [#tea] alice left"]  # carol is still an operator
    r.type("carol", "/deop carol")
    assert r.texts("bob") == [
        "*** [#tea] carol took operator status from carol",
        "*** [#tea] bob is an operator now (the room had no operator left)",
    ]


def test_kick_is_a_part_with_the_reason_and_the_kicked_can_come_back():
    r = tea("alice", "bob")
    r.type("alice", "/kick bob spamming links")
    assert r.texts("alice") == ["*** [#tea] bob left (kicked by alice: spamming links)"]
    assert r.texts("bob") == [
        "*** [#tea] bob left (kicked by alice: spamming links)",
        "*** Now talking in #lobby",
    ]
    assert "#tea" not in [room.name for room in r.member("bob").rooms.values()]
    r.type("bob", "/join #tea")
    assert "*** Now talking in #tea" in r.texts("bob")
    r.type("alice", "/kick nobody")
    assert r.errors("alice") == ["no-such-nick: nobody called 'nobody' is in #tea"]


def test_a_muted_member_reads_but_cannot_talk_even_renamed():
    r = tea("alice", "bob")
    r.type("alice", "/mute bob")
    assert r.texts("bob") == ["*** [#tea] alice muted bob"]
    r.type("bob", "hello?")
    r.type("bob", "/me waves")
    assert r.errors("bob") == ["not-allowed: you are muted in #tea: you can read, not talk"] * 2
    assert r.texts("alice") == ["*** [#tea] alice muted bob"]  # and nothing from bob
    r.type("alice", "still here")
    assert r.texts("bob") == ["[#tea] <alice> still here"]
    r.type("bob", "/nick robert")  # a guest renamed is still the member muted
    r.type("bob", "now?")
    assert r.errors("bob") == ["not-allowed: you are muted in #tea: you can read, not talk"]
    r.type("bob", "/nick bob")
    r.texts("alice")
    r.type("alice", "/unmute bob")
    r.type("bob", "thanks")
    assert r.texts("alice")[-1] == "[#tea] <bob> thanks"


def test_bans_by_nickname_pattern_login_and_address():
    r = tea("alice", "bob", "spambot1")
    r.type("alice", "/ban spambot* bots")
    assert r.texts("bob") == [
        "*** [#tea] alice banned spambot* (bots)",
        "*** [#tea] spambot1 left (banned by alice: bots)",
    ]
    r.add("spambot2", address="203.0.113.9")
    r.type("spambot2", "/join #tea")
    assert r.errors("spambot2") == ["banned: you are banned from #tea: bots"]
    # By nickname, and by the address it came from: a new name does not get it back in.
    r.type("alice", "/ban bob")
    r.texts("bob")
    r.type("bob", "/nick robert")
    r.type("bob", "/join #tea")  # (typed by the same member, now robert)
    assert r.errors("bob") == ["banned: you are banned from #tea"]
    member, p = r.people["bob"]
    r.texts("alice")
    r.type("alice", "/bans")
    assert r.texts("alice") == ["*** [#tea] bans: spambot* (by alice: bots), bob (by alice)"]
    r.type("alice", "/unban bob")
    p.clear()
    r.service.dispatcher.dispatch(member, "/join #tea")
    assert "*** Now talking in #tea" in p.texts()
    r.type("alice", "/ban al*")
    assert r.errors("alice") == ["not-allowed: that pattern would ban you too"]


def test_only_server_operators_act_in_the_lobby_and_on_server_operators():
    r = tea("chief", "alice", "bob", operators=frozenset({"chief"}), login=True)
    r.type("alice", "/kick bob")  # alice is no operator of #tea (chief made it)
    assert r.errors("alice") == ["not-allowed: you are not an operator of #tea"]
    r.type("chief", "/op alice")
    r.type("alice", "/kick chief")
    assert r.errors("alice") == ["not-allowed: chief is a server operator"]
    r.type("alice", "/mute #lobby bob")
    assert r.errors("alice") == ["not-allowed: only server operators act in #lobby"]
    r.texts("bob")
    r.type("chief", "/mute #lobby bob")
    assert r.texts("bob") == ["*** [#lobby] chief muted bob"]


def test_server_operators_kill_wall_and_ban_networks():
    r = tea("chief", "alice", "bob", operators=frozenset({"chief"}), login=True)
    r.type("alice", "/wall hello")
    assert r.errors("alice") == ["not-allowed: only server operators may do that (--operator)"]
    r.type("chief", "/wall maintenance at 6")
    assert r.texts("alice") == ["*** Notice from chief (server operator): maintenance at 6"]
    r.type("chief", "/kill bob flooding")
    bob = r.people["bob"][1]
    assert [getattr(e, "reason", None) for e in bob.closed if e] == [
        "disconnected by server operator chief: flooding"
    ]
    assert r.texts("alice") == [
        "*** [#lobby, #tea] bob lost connection (disconnected by chief: flooding)"
    ]
    assert r.service.tally.disconnects["killed"] == 1
    saved: list[list[tuple[str, str, str]]] = []
    r.service.moderator.server_bans.save = saved.append
    r.type("chief", "/gban 198.51.100.0/30 abuse")  # alice is .2: gone; chief is .1: refused
    assert r.errors("chief") == ["not-allowed: that would ban your own address"]
    r.type("chief", "/gban 198.51.100.2 abuse")
    assert r.texts("chief")[-1] == "*** banned 198.51.100.2/32 from the server; 1 disconnected"
    assert not r.member("alice").present
    assert [network for network, _, _ in saved[-1]] == ["198.51.100.2/32"]
    r.type("chief", "/gbans")
    assert r.texts("chief") == ["*** Server bans: 198.51.100.2/32 (by chief: abuse)"]
    r.type("chief", "/gunban 198.51.100.2")
    assert r.texts("chief") == ["*** lifted the server ban on 198.51.100.2"]
    assert saved[-1] == []


def test_server_bans_match_addresses_and_ipv6_networks():
    bans = ServerBans()
    bans.add(ServerBan(parse_network("203.0.113.0/24"), "chief", "spam"))
    bans.add(ServerBan(parse_network("2001:db8::/32"), "chief", ""))
    assert bans.find("203.0.113.77") is not None
    assert bans.find("203.0.114.1") is None
    assert bans.find("2001:db8:1:2::/64") is not None  # how rules counts an IPv6 host
    assert bans.find("local") is None
    assert bans.remove(parse_network("203.0.113.0/24")) and not bans.remove(
        parse_network("203.0.113.0/24")
    )


def test_the_help_shows_operator_commands_and_server_ones_only_to_server_operators():
    r = tea("chief", "alice", operators=frozenset({"chief"}), login=True)

    def usages(nick: str) -> list[Any]:
        member, p = r.people[nick]
        r.type(nick, "/help")
        (shown,) = p.of_type("help")
        p.clear()
        return [u for u, _ in shown.commands]  # type: ignore[attr-defined]

    assert "/kick [#room] NICK [reason]" in usages("alice")
    assert "/wall text" not in usages("alice")
    assert "/wall text" in usages("chief")
    # Logged in, a member's nickname is its login name: /nick is not offered.
    assert not any(u.startswith("/nick") for u in usages("alice"))
    guest = tea("bob")
    guest.type("bob", "/help")
    (shown,) = guest.people["bob"][1].of_type("help")
    assert any(u.startswith("/nick") for u, _ in shown.commands)  # type: ignore[attr-defined]


def test_admission_refuses_a_banned_address_with_the_reason():
    from twisted_chat.rules.admission import Admission

    admission = Admission(task.Clock())
    bans = ServerBans()
    admission.server_bans = bans
    addr = type("Addr", (), {"host": "203.0.113.5"})()
    assert admission.admit(addr)[1] is None
    bans.add(ServerBan(parse_network("203.0.113.0/24"), "chief", "spam"))
    refused = admission.admit(addr)[1]
    assert refused is not None and refused.reason == "your address is banned from this server: spam"


def test_a_client_asking_at_connect_for_a_room_that_bans_it_starts_in_the_lobby():
    from tests.doubles import Connection, ProtocolHarness

    h = ProtocolHarness()
    keeper = h.connect("keeper")
    keeper.send(b"/join #r\r\n/ban bad* bots\r\n")
    h.rules.seat_wait = 0.25  # a client's first lines choose where it starts
    bad = Connection(h.factory, 40999)  # asks for its name and the room at once
    bad.send(b"/nick badguy\r\n/join #r\r\n")
    h.clock.advance(1)
    lines = bad.new_lines()
    assert "*** Welcome to groupchat 0.1.0, badguy! You are in #lobby." in lines
    assert "!!! banned: you are banned from #r: bots" in lines
    bad.send(b"hello\r\n")
    assert bad.protocol.member is not None and bad.protocol.member.present
    assert [m.nick for m in h.service.members] == ["keeper", "badguy"]


def test_a_ban_puts_out_only_the_person_even_on_a_shared_address():
    r = Room()
    for nick in ("alice", "bob", "carol", "troll"):
        r.add(nick, address="192.0.2.1")  # one NAT
        r.type(nick, "/join #den")
    r.type("alice", "/op bob")
    for nick in r.people:
        r.texts(nick)
    r.type("alice", "/ban troll trolling")
    assert r.texts("carol") == [
        "*** [#den] alice banned troll (trolling)",
        "*** [#den] troll left (banned by alice: trolling)",
    ]
    (ban,) = r.member("alice").current.bans  # type: ignore[union-attr]
    assert ban.address is None  # the operator's own address is no address to ban
    r.type("troll", "/nick troll2")
    r.type("troll", "/join #den")
    assert r.errors("troll") == ["banned: you are banned from #den: trolling"]


def test_patterns_are_short_and_compiled_with_their_ban():
    r = tea("alice", "bob")
    r.type("alice", "/ban " + "*a" * 20)
    assert r.errors("alice")[0].startswith("bad-arguments: a pattern is at most 32 characters")
    r.type("alice", "/ban \u0455pam*")  # Cyrillic: a look-alike pattern names look-alikes
    r.add("spam1")
    r.type("spam1", "/join #tea")
    assert r.errors("spam1") == ["banned: you are banned from #tea"]


def test_a_muted_member_cannot_talk_through_a_topic_a_part_or_succession():
    r = tea("alice", "bob", "carol")
    r.type("alice", "/mute bob")
    r.type("bob", "/topic buy my tea")
    assert r.errors("bob") == ["not-allowed: you are muted in #tea: you can read, not talk"]
    r.texts("carol")
    r.type("bob", "/part #tea buy my tea at example.com")
    assert r.texts("carol") == ["*** [#tea] bob left"]
    r.type("bob", "/join #tea")
    r.texts("carol")
    r.type("alice", "/quit")
    assert "*** [#tea] carol is an operator now (the room had no operator left)" in r.texts("carol")


def test_network_bans_follow_how_addresses_are_counted():
    assert str(parse_network("::ffff:127.0.0.3")) == "127.0.0.3/32"
    assert str(parse_network("2001:db8:1:2::/64")) == "2001:db8:1:2::/64"
    try:
        parse_network("2001:db8:1:2::7")
    except Exception as e:
        assert "ban 2001:db8:1:2::/64" in str(e)
    else:
        raise AssertionError("a single IPv6 address was accepted")


def test_a_server_operator_cannot_kill_itself_and_hears_what_it_did_outside_a_room():
    r = tea("alice", "bob", operators=frozenset({"chief"}), login=True)
    r.add("chief", address="198.51.100.9", login=True)
    r.type("chief", "/kill chief")
    assert r.errors("chief") == ["not-allowed: to leave, /quit"]
    r.type("chief", "/kick #tea bob")
    assert r.texts("chief") == ["*** #tea: kicked bob"]


def test_unmuting_lifts_the_whole_mute_whatever_name_it_was_made_under():
    r = tea("alice", "bob", "carol")
    r.type("alice", "/mute bob")
    r.type("bob", "/nick robert")
    r.type("alice", "/unmute robert")
    r.type("bob", "free again")  # (typed by the same member, now robert)
    assert r.texts("carol")[-1] == "[#tea] <robert> free again"
    r.add("bob")  # a newcomer taking the old name is not muted by what was left over
    r.type("bob", "/join #tea")
    r.type("bob", "hello")
    assert r.errors("bob") == []
    assert not r.service.rooms.find("#tea").muted
    r.type("alice", "/mute alice")
    assert r.errors("alice") == ["not-allowed: you cannot mute yourself"]


def test_bans_by_address_and_their_limits():
    r = tea("alice", "bob")
    r.type("alice", "/ban 198.51.100.2 from there")  # bob's address, typed
    assert r.texts("bob")[0] == "*** [#tea] alice banned 198.51.100.2 (from there)"
    # Typed, it names nobody: whoever is here from that address is put out at once.
    assert r.texts("alice") == [
        "*** [#tea] alice banned 198.51.100.2 (from there)",
        "*** [#tea] bob left (banned by alice: from there)",
    ]
    r.add("carol", address="198.51.100.2")
    r.type("carol", "/join #tea")
    assert r.errors("carol") == ["banned: you are banned from #tea: from there"]
    r.type("alice", "/ban 198.51.100.1")
    assert r.errors("alice") == ["not-allowed: that is your own address"]
    r.type("alice", "/ban 2001:db8::1")  # IPv6, counted by /64 as admission counts it
    r.type("alice", "/bans")
    assert "2001:db8::/64 (by alice)" in r.texts("alice")[-1]
    r.type("alice", "/ban " + "x" * 40)
    assert r.errors("alice")[0].startswith("bad-arguments: nicknames are at most")
    r.type("alice", "/ban 198.51.100.2")
    assert r.errors("alice") == ["not-allowed: 198.51.100.2 is already banned from #tea"]


def test_an_operator_cannot_kick_itself_nor_ban_a_pattern_no_nickname_can_match():
    r = tea("alice", "bob")
    r.type("alice", "/kick alice bye")
    assert r.errors("alice") == ["not-allowed: you cannot kick yourself; to leave, /part #tea"]
    r.type("alice", "/ban 198.51.100.*")
    assert r.errors("alice") == [
        "bad-arguments: a pattern matches nicknames, which have no '.', ':' or '/'; "
        "ban an address as it is typed (203.0.113.7)"
    ]
    r.type("alice", "/who")
    assert r.texts("alice")[-1] == "*** [#tea] 2 here: @alice, bob"
