"""Several nodes as one server, through the backplane's replica over an in-memory link.

Each node is a whole server (ProtocolHarness) whose ``INetwork`` is a ``replica.Node``;
the link stands in for Redis: envelopes wait in a list until ``settle`` hands them to
every node, claims are decided in one dictionary.  Time and delivery are both driven.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.doubles import ProtocolHarness
from twisted_chat.backplane.history import NetworkHistory, to_id
from twisted_chat.backplane.replica import LOST_WITH_SERVER, Node
from twisted_chat.core.names import room_key, skeletons
from twisted_chat.rules.login import Authenticator


class Bus:
    """The network: one channel, one arbiter, every node's stored state."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.nodes: list[Node] = []
        self.channel: list[bytes] = []
        self.names: dict[str, str] = {}  # look-alike key -> "node/id"
        self.states: dict[str, dict[str, str]] = {}
        self.seqs: dict[str, int] = {}
        self.up = True
        self.slow_claims: list[Callable[[], object]] | None = None
        self.slow_ids: list[Callable[[], object]] | None = None  # history ids held back
        self.streams: dict[str, list[tuple[str, dict[str, str]]]] = {}  # history
        self.stream_ms = 1_700_000_000_000
        self.apart: set[str] = set()  # nodes cut off from the bus
        self.rooms: dict[str, str] = {}  # each room's moderation state

    def keep_room(
        self, key: str, state: str | None, born: str, mode: str, shared: bool = False
    ) -> tuple[bool, str | None]:
        """What the Redis script ``_KEEP_ROOM`` does: (written, the state kept)."""
        cur = self.rooms.get(key)
        if mode == "drop":
            if cur is not None and json.loads(cur)["born"] == born:
                del self.rooms[key]
            return False, None
        assert state is not None
        take = True
        if cur is not None:
            old, new = json.loads(cur), json.loads(state)
            if old["born"] == new["born"]:
                take = mode == "keep" and new["v"] > old["v"]
            elif mode == "merge" and shared:
                take = old["born"] == "" or (
                    new["born"] != "" and (new["bt"], new["born"]) < (old["bt"], old["born"])
                )
        if take:
            self.rooms[key] = state
            return True, state
        return False, cur

    def settle(self) -> None:
        """Run every node's turn and deliver every envelope, until nothing is left."""
        for _ in range(100):
            self.clock.advance(0)
            if not self.channel:
                return
            sent, self.channel = self.channel, []
            for data in sent:
                for node in self.nodes:
                    if node.id not in self.apart:
                        node.received(data)
        raise AssertionError("the network never settled")


class MemoryLink:
    def __init__(self, bus: Bus, name: str) -> None:
        self.bus = bus
        self.name = name

    def connected(self) -> bool:
        return self.bus.up and self.name not in self.bus.apart

    def publish(
        self,
        envelope: bytes,
        seq: int,
        state: dict[str, str | None],
        lines: Sequence[tuple[str, str]] = (),
    ) -> defer.Deferred[list[Any]] | None:
        """As the Redis script does: lines into their streams, their ids into the
        envelope, the state stored, the envelope on the channel."""
        ids = []
        for stream, line in lines:
            self.bus.stream_ms += 1
            ids.append(f"{self.bus.stream_ms}-0")
            self.bus.streams.setdefault(stream, []).append((ids[-1], {"e": line}))
        if ids:
            envelope = envelope[:-1] + b',"h":' + json.dumps(ids).encode() + b"}"
        stored = self.bus.states.setdefault(self.name, {})
        for mid, desc in state.items():
            if desc is None:
                stored.pop(mid, None)
            else:
                stored[mid] = desc
        self.bus.seqs[self.name] = seq
        self.bus.channel.append(envelope)
        if not lines:
            return None
        if self.bus.slow_ids is not None:  # answered when the test says so
            d: defer.Deferred[list[Any]] = defer.Deferred()
            self.bus.slow_ids.append(lambda: d.callback(ids))
            return d
        return defer.succeed(ids)

    def read_back(self, stream: str, before: str, count: int) -> defer.Deferred[Any]:
        entries = self.bus.streams.get(stream, [])
        if before != "+":
            limit = to_id(before.lstrip("("))
            entries = [e for e in entries if to_id(e[0]) < limit]
        return defer.succeed(list(reversed(entries))[:count])

    def claim(self, keys: list[str], owner: str) -> defer.Deferred[bool]:
        if self.bus.slow_claims is not None:  # answered when the test says so
            d: defer.Deferred[bool] = defer.Deferred()
            self.bus.slow_claims.append(lambda: self._decide(keys, owner).chainDeferred(d))
            return d
        return self._decide(keys, owner)

    def _decide(self, keys: list[str], owner: str) -> defer.Deferred[bool]:
        if any(self.bus.names.get(k, owner) != owner for k in keys):
            return defer.succeed(False)
        for k in keys:
            self.bus.names[k] = owner
        return defer.succeed(True)

    def release(self, keys: list[str], owner: str) -> None:
        for k in keys:
            if self.bus.names.get(k) == owner:
                del self.bus.names[k]

    def save_room(self, key: str, state: str | None, born: str) -> None:
        self.bus.keep_room(key, state, born, "keep" if state is not None else "drop")


def network(
    count: int, logins: bool = False, replay: int | None = None
) -> tuple[Bus, list[ProtocolHarness]]:
    """``count`` nodes on one bus; with ``logins``, each asks alice and bob for a
    password (``/login alice secret``); with ``replay``, they keep history in the bus's
    streams and show a joiner that many lines."""
    bus = Bus()
    servers = []
    for i in range(count):
        link = MemoryLink(bus, f"n{i + 1}")
        node = Node(f"n{i + 1}", bus.clock, link)
        node.guests.extend(range(100 * i + 1, 100 * i + 100))
        node.on_read = _reader(bus, node)
        history = None
        if replay is not None:
            history = node.history = NetworkHistory(bus.clock, replay, keep=1000)
            history.reader = link
        h = ProtocolHarness(network=node, clock=bus.clock, history=history)
        if logins:
            checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret", bob=b"hunter2")
            h.rules.authenticator = Authenticator([checker], bus.clock, failure_floor=0)
        node.attach(h.service, batching=h.rules.batcher)
        bus.nodes.append(node)
        servers.append(h)
    return bus, servers


def _reader(bus: Bus, node: Node) -> Callable[[str, bool], None]:
    """What the Redis link does on a gap: read the other node's stored state."""

    def read_state(other: str, announced: bool) -> None:
        node.read_done(other, bus.seqs.get(other), dict(bus.states.get(other, {})))

    return read_state


def join(bus: Bus, h: ProtocolHarness, nick: str) -> Any:
    conn = h.connect()
    bus.settle()
    conn.send(f"/nick {nick}\r\n".encode())
    bus.settle()
    conn.new_lines()
    return conn


def quiet(*conns: Any) -> None:
    for conn in conns:
        conn.new_lines()


def test_a_room_spans_nodes_in_order_and_without_duplicates():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    quiet(alice, bob)
    for i in range(5):
        alice.send(f"line {i}\r\n".encode())
    bus.settle()
    assert bob.new_lines() == [f"[#lobby] <alice> line {i}" for i in range(5)]
    assert alice.new_lines() == []  # not echoed back by the other node
    bob.send(b"/me waves\r\n")
    bus.settle()
    assert alice.new_lines() == ["[#lobby] * bob waves"]


def test_who_and_rooms_see_the_whole_network():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    bob.send(b"/join #x\r\n")
    bus.settle()
    alice.new_lines()
    alice.send(b"/who\r\n/rooms\r\n")
    lines = alice.new_lines()
    assert "*** [#lobby] 2 here: alice, bob" in lines
    assert any("#x (1)" in line for line in lines), lines


def test_nicknames_and_their_look_alikes_are_unique_over_the_network():
    bus, (one, two) = network(2)
    join(bus, one, "alice")
    bob = join(bus, two, "bob")
    bob.send(b"/nick AIice\r\n")
    bus.settle()
    assert bob.new_lines()[0].startswith("!!! nick-taken:")


def test_two_nodes_racing_for_a_name_give_it_to_one():
    bus, (one, two) = network(2)
    a, b = join(bus, one, "anna"), join(bus, two, "bert")
    a.send(b"/nick carol\r\n")  # both before either node hears of the other
    b.send(b"/nick carol\r\n")
    bus.settle()
    said = a.new_lines() + b.new_lines()
    assert sum("is now known as carol" in line for line in said) >= 1
    assert sum(line.startswith("!!! nick-taken:") for line in said) == 1
    holders = [m.nick for h in (one, two) for m in h.service.members]
    assert holders.count("carol") == 1


def test_a_private_message_reaches_a_member_of_another_node():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    quiet(alice, bob)
    alice.send(b"/msg bob psst\r\n")
    bus.settle()
    assert bob.new_lines() == ["[PM alice -> bob] psst"]
    assert alice.new_lines() == ["[PM alice -> bob] psst"]


def test_quits_parts_renames_and_timeouts_are_told_on_every_node():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    quiet(alice, bob)
    alice.send(b"/nick alicia\r\n")
    bus.settle()
    assert bob.new_lines() == ["*** alice is now known as alicia"]
    alice.send(b"/quit see you\r\n")
    bus.settle()
    assert bob.new_lines() == ["*** [#lobby] alicia quit (see you)"]
    join(bus, two, "alice")  # the names are free again
    carol = join(bus, one, "carol")
    bob.new_lines()
    one.service.startService()
    two.service.startService()
    for _ in range(40):  # all but bob silent past the timeout: each node removes its own
        bus.clock.advance(1)
        bob.send(b"/ping\r\n")
        bus.settle()
    assert carol.output().endswith(b"*** Disconnected: no heartbeat for 31.0 s\r\n")
    assert "*** [#lobby] carol timed out (no heartbeat for 31.0 s)" in bob.new_lines()
    assert one.service.members == {} and len(one.service.by_id) == 1  # bob


def test_a_lost_node_takes_its_members_with_it_and_frees_their_names():
    bus, (one, two) = network(2)
    join(bus, one, "alice")
    bob = join(bus, two, "bob")
    bob.new_lines()
    bus.nodes[1].forget("n1", LOST_WITH_SERVER)
    bus.settle()
    assert bob.new_lines() == ["*** [#lobby] alice lost connection (lost with its server)"]
    assert not two.service.nick_in_use("alice")
    assert two.service.remote_members("n1") == []


def test_a_node_that_missed_envelopes_reads_the_whole_state_instead():
    bus, (one, two) = network(2)
    alice = join(bus, one, "alice")
    bob = join(bus, two, "bob")
    bob.new_lines()
    bus.up = False  # n1's next turn never reaches n2
    alice.send(b"/join #x\r\n")
    bus.settle()
    bus.up = True
    one_node = bus.nodes[0]
    one_node.seq += 1  # as after a split: the next envelope leaves a gap
    alice.send(b"/join #y\r\n")
    described = one_node.whole_state()["1"]
    assert described is not None
    bus.states["n1"]["1"] = described
    bus.settle()
    remote = two.service.remote_members("n1")[0]
    assert sorted(remote.rooms) == ["#lobby", "#x", "#y"]


def test_a_name_lost_during_a_split_makes_its_member_a_guest():
    bus, (one, _) = network(2)
    alice = join(bus, one, "alice")
    member = next(iter(one.service.members))
    one.service.lost_name(member, "while the network was split, alice was taken elsewhere")
    lines = alice.new_lines()
    # Told why first, then renamed: the explanation names the new nickname.
    assert lines[0].startswith(
        "*** Network: while the network was split, alice was taken elsewhere; you are guest"
    )
    assert lines[1] == f"*** alice is now known as {member.nick}"


IN_USE = "!!! login-in-use: alice (or a name that looks like it) is logged in"


def login(bus: Bus, h: ProtocolHarness, name: str = "alice", password: str = "secret") -> Any:
    conn = h.connect()
    conn.new_lines()
    conn.send(f"/login {name} {password}\r\n".encode())
    bus.settle()
    return conn


def welcomed(line: str) -> bool:
    return line.startswith("*** Welcome to groupchat") and ", alice!" in line


def test_a_login_name_is_held_once_over_the_network():
    bus, (one, two) = network(2, logins=True)
    first = login(bus, one)
    assert welcomed(first.new_lines()[0])
    second = login(bus, two)
    assert second.new_lines() == [IN_USE]
    assert [m.nick for m in two.service.members] == []
    first.send(b"/quit\r\n")
    bus.settle()
    third = login(bus, two)  # free again once its holder left
    assert welcomed(third.new_lines()[0])


def test_two_nodes_racing_for_one_login_admit_it_once():
    bus, (one, two) = network(2, logins=True)
    bus.slow_claims = []
    first, second = login(bus, one), login(bus, two)  # both wait for the arbiter
    assert first.new_lines() == [] and second.new_lines() == []
    for answer in bus.slow_claims:
        answer()
    bus.slow_claims = None
    bus.settle()
    said = first.new_lines() + second.new_lines()
    assert sum(welcomed(line) for line in said) == 1, said
    assert said.count(IN_USE) == 1, said
    holders = [m.nick for h in (one, two) for m in h.service.members]
    assert holders == ["alice"]


def test_a_login_claimed_for_a_connection_that_left_is_given_back():
    bus, (one, two) = network(2, logins=True)
    bus.slow_claims = []
    gone = login(bus, one)
    gone.protocol.connectionLost(Failure(ConnectionDone()))
    for answer in bus.slow_claims:
        answer()
    bus.slow_claims = None
    bus.settle()
    assert not any(owner.startswith("n1/") for owner in bus.names.values()), bus.names
    assert welcomed(login(bus, two).new_lines()[0])


def test_a_name_the_arbiter_gave_elsewhere_is_given_up_on_arrival():
    bus, (one, two) = network(2)
    for key in skeletons("guest1"):  # as when Redis lost its guest counter
        bus.names[key] = "n2/7"
    bus.slow_claims = []
    conn = one.connect()  # its welcome read: then the arbiter answers
    (answer,) = bus.slow_claims
    bus.slow_claims = None
    answer()
    bus.settle()
    lines = conn.new_lines()
    assert "*** Network: guest1 is held on another server; you are guest2 now" in lines
    assert "*** guest1 is now known as guest2" in lines
    assert [m.nick for m in one.service.members] == ["guest2"]
    assert bus.names[next(iter(skeletons("guest2")))] == "n1/1"  # confirmed there too


def test_the_guest_floor_passes_every_guest_number_known():
    bus, (one, two) = network(2)
    two.connect()  # guest101, known to node one as a remote member
    bus.settle()
    first = bus.nodes[0]
    assert first.guest_floor() == 101
    first.guests.append(150)  # a block not used up yet
    assert first.guest_floor() == 150
    first.guests.clear()
    bus.up = False
    one.connect()  # named while split, from the fallback numbers: they do not count
    (named,) = one.service.members
    assert named.nick.startswith("guest") and int(named.nick[5:]) >= 10**6
    assert first.guest_floor() == 101


def test_a_state_read_answered_after_its_node_was_forgotten_is_dropped():
    bus, (one, two) = network(2)
    alice = join(bus, one, "alice")
    join(bus, two, "bob")
    second = bus.nodes[1]
    reads: list[str] = []
    second.on_read = lambda other, announced: reads.append(other)
    bus.nodes[0].seq += 1  # the next envelope leaves a gap: node two reads n1's state
    alice.send(b"/join #y\r\n")
    bus.settle()
    assert reads == ["n1"]
    second.forget("n1", LOST_WITH_SERVER)  # its lease ran out meanwhile
    second.read_done("n1", bus.seqs["n1"], dict(bus.states["n1"]))  # the late answer
    assert two.service.remote_members("n1") == []
    assert not two.service.nick_in_use("alice")


def test_a_heartbeat_measures_how_late_a_node_reads_and_reveals_a_lost_envelope():
    bus, (one, two) = network(2)
    alice = join(bus, one, "alice")
    bob = join(bus, two, "bob")
    first, second = bus.nodes
    lags: list[float] = []
    first.on_beat = lags.append
    bus.channel.append(first.beat())
    bus.clock.advance(1.5)  # it comes back 1.5 s later
    bus.settle()
    assert lags == [1.5]
    assert second.seen["n1"] == first.seq  # nothing missed: no read
    reads: list[str] = []
    second.on_read = lambda other, announced: reads.append(other)
    alice.send(b"lost\r\n")
    bus.clock.advance(0)
    bus.channel.clear()  # that envelope never reaches node two
    bus.channel.append(first.beat())
    bus.settle()
    assert reads == ["n1"]
    assert bob.new_lines() == []


def test_what_one_read_from_the_network_brings_is_written_once_per_member():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    carol = join(bus, two, "carol")
    quiet(alice, bob, carol)
    writes: list[bytes] = []
    write = bob.transport.write

    def counted(data: bytes) -> None:
        writes.append(data)
        write(data)

    bob.transport.write = counted
    for i in range(3):  # three turns: three envelopes, then read by node two at once
        alice.send(f"line {i}\r\n".encode())
        bus.clock.advance(0)
    sent, bus.channel = bus.channel, []
    assert len(sent) == 3
    with bus.nodes[1].batch():  # as the Redis subscriber does around one read
        for data in sent:
            bus.nodes[1].received(data)
    bus.clock.advance(0)  # written at the end of the reactor iteration
    assert bob.new_lines() == [f"[#lobby] <alice> line {i}" for i in range(3)]
    assert len(writes) == 1, writes


# -- server operators over the network -------------------------------------------------------


def test_a_server_operator_reaches_every_node_with_wall_kill_and_gban():
    from twisted_chat.core.names import skeleton

    bus, (one, two) = network(2, logins=True)
    for h in (one, two):
        h.service.moderator.operators = frozenset({skeleton("alice")})
    alice = login(bus, one)  # an operator, on n1
    bob = login(bus, two, "bob", "hunter2")  # on n2
    for conn in (alice, bob):
        conn.new_lines()

    alice.send(b"/wall restart at 6\r\n")
    bus.settle()
    assert bob.new_lines() == ["*** Notice from alice (server operator): restart at 6"]
    alice.new_lines()  # her own notice too

    alice.send(b"/kill bob spamming\r\n")
    bus.settle()
    assert alice.new_lines()[0] == (
        "*** bob is on another server of the network, which disconnects it"
    )
    assert "*** Disconnected: disconnected by server operator alice: spamming" in bob.new_lines()
    assert bob.protocol.member is not None and not bob.protocol.member.present
    assert one.service.nicks.owner("bob") is None  # gone from n1's replica too

    bob = login(bus, two, "bob", "hunter2")
    assert bob.protocol.member is not None
    address = bob.protocol.member.address = "192.0.2.7"  # not alice's (both are loopback)
    alice.send(f"/gban {address} bots\r\n".encode())
    bus.settle()
    for h in (one, two):  # every node refuses that address from now on
        assert h.service.moderator.server_bans.find(address) is not None
    assert bob.new_lines()[-1].startswith("*** Disconnected: banned from this server by alice")
    alice.send(f"/gunban {address}\r\n".encode())
    bus.settle()
    assert all(not h.service.moderator.server_bans.bans for h in (one, two))


# -- room moderation over the network --------------------------------------------------------


def say(bus: Bus, conn: Any, line: str) -> None:
    conn.send(f"{line}\r\n".encode())
    bus.settle()


def ops_of(h: Any, room: str) -> list[str]:
    found = h.service.rooms.find(room_key(room))
    return [] if found is None else sorted(m.nick for m in found.ops)


def test_room_operators_act_on_members_of_every_node():
    bus, (one, two) = network(2)
    alice, carol = join(bus, one, "alice"), join(bus, one, "carol")
    bob, dave = join(bus, two, "bob"), join(bus, two, "dave")
    for conn in (alice, bob, carol, dave):
        say(bus, conn, "/join #den")
    quiet(alice, bob, carol, dave)
    assert ops_of(one, "#den") == ops_of(two, "#den") == ["alice"]

    say(bus, alice, "/topic #den plans for friday")
    assert bob.new_lines() == ["*** [#den] alice set the topic: plans for friday"]
    assert two.service.rooms.find("#den").topic == "plans for friday"

    say(bus, alice, "/op bob")
    assert ops_of(one, "#den") == ops_of(two, "#den") == ["alice", "bob"]
    assert dave.new_lines()[-1] == "*** [#den] alice made bob an operator"
    quiet(alice, bob, carol)

    say(bus, bob, "/kick carol spam")  # bob on n2 kicks carol on n1
    assert "*** [#den] carol left (kicked by bob: spam)" in alice.new_lines()
    assert "*** [#den] carol left (kicked by bob: spam)" in dave.new_lines()
    assert not one.service.is_member_of(carol.protocol.member, "#den")
    assert not two.service.is_member_of(two.service.nicks.owner("carol"), "#den")

    say(bus, alice, "/mute dave")  # alice on n1 mutes dave on n2
    assert dave.new_lines()[-1] == "*** [#den] alice muted dave"
    quiet(alice, bob)
    say(bus, dave, "hello?")
    assert dave.new_lines() == ["!!! not-allowed: you are muted in #den: you can read, not talk"]
    assert alice.new_lines() == []
    say(bus, bob, "/unmute dave")
    say(bus, dave, "hello again")
    assert alice.new_lines()[-1] == "[#den] <dave> hello again"

    say(bus, alice, "/ban dave trolling")
    assert "*** [#den] dave left (banned by alice: trolling)" in bob.new_lines()
    assert not two.service.is_member_of(dave.protocol.member, "#den")
    say(bus, dave, "/join #den")
    assert dave.new_lines()[-1] == "!!! banned: you are banned from #den: trolling"
    say(bus, bob, "/bans")  # every node lists the same bans
    assert bob.new_lines() == ["*** [#den] bans: dave (by alice: trolling)"]
    say(bus, bob, "/unban dave")
    say(bus, dave, "/join #den")
    assert "*** Now talking in #den" in dave.new_lines()
    for h in (one, two):
        room = h.service.rooms.find("#den")
        assert not room.bans and not room.muted and room.topic == "plans for friday"


def test_a_ban_by_address_keeps_out_a_member_of_another_node():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    alice.protocol.member.address = "198.51.100.1"  # not bob's, so the ban may hold it
    for conn in (alice, bob):
        say(bus, conn, "/join #den")
    assert one.service.nicks.owner("bob").address == bob.protocol.member.address  # arrived
    say(bus, alice, "/ban bob")
    say(bus, bob, "/nick robert")  # another name, the same address
    say(bus, bob, "/join #den")
    assert bob.new_lines()[-1] == "!!! banned: you are banned from #den"


HEIR = "*** [#den] bob is an operator now (the room had no operator left)"


def test_when_the_last_operator_leaves_one_node_names_the_heir_for_all():
    bus, (one, two) = network(2)
    alice = join(bus, two, "alice")  # the operator, on n2
    bob, carol = join(bus, one, "bob"), join(bus, two, "carol")
    for conn in (alice, bob, carol):
        say(bus, conn, "/join #den")
    quiet(alice, bob, carol)
    say(bus, alice, "/part")
    # n1 comes first by name: it picks the member present longest, bob, and tells n2.
    assert ops_of(one, "#den") == ops_of(two, "#den") == ["bob"]
    assert bob.new_lines().count(HEIR) == 1
    assert carol.new_lines().count(HEIR) == 1
    assert json.loads(bus.rooms["#den"])["ops"] == [["n1", bob.protocol.member.id]]

    say(bus, bob, "/deop bob")  # giving it up passes it on, across the network
    assert ops_of(one, "#den") == ops_of(two, "#den") == ["carol"]


def test_a_lost_node_operators_are_succeeded_on_the_others():
    bus, (one, two) = network(2)
    alice, bob = join(bus, two, "alice"), join(bus, one, "bob")
    for conn in (alice, bob):
        say(bus, conn, "/join #den")
    quiet(bob)
    bus.nodes[0].forget("n2")
    bus.settle()
    assert ops_of(one, "#den") == ["bob"]
    assert HEIR in bob.new_lines()


def test_a_node_joining_later_takes_the_rooms_state_from_the_network():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, one, "bob")
    for conn in (alice, bob):
        say(bus, conn, "/join #den")
    say(bus, alice, "/topic #den the plan")
    say(bus, alice, "/mute bob")
    say(bus, alice, "/ban mallory")
    assert "#den" in bus.rooms
    # n2 has not seen any of it (as if it started now): it reads the members, then the
    # rooms' state, as the Redis link does when a node joins.
    late = two.service.rooms.find("#den")
    late.topic, late.bans, late.muted, late.ops = "", [], set(), {}
    two.service.moderator.restore("#den", bus.rooms["#den"])
    assert late.topic == "the plan" and [b.shown for b in late.bans] == ["mallory"]
    assert ops_of(two, "#den") == ["alice"]
    carol = join(bus, two, "carol")
    say(bus, carol, "/join #den")
    assert "*** [#den] Topic: the plan (set by alice" in " ".join(carol.new_lines())
    say(bus, alice, "/unmute bob")  # the mute restored on n2 is the one n1 lifts
    assert not late.muted

    say(bus, alice, "/part #den")
    say(bus, bob, "/part #den")
    say(bus, carol, "/part #den")
    assert "#den" not in bus.rooms  # gone with the room


def merge(bus: Bus, index: int) -> None:
    """What the Redis link does with the rooms' state as a node (re)joins."""
    node = bus.nodes[index]
    service = node.service
    assert service is not None
    for room in list(service.rooms.rooms()):
        state = service.moderator.snapshot(room)
        shared = any(m.node for m in room.members)
        written, kept = bus.keep_room(room.key, state, room.born, "merge", shared)
        node.merged(room.key, state, written, kept)
    bus.settle()


def rejoin(bus: Bus, index: int) -> None:
    """A node back on the bus (or new on it): it announces itself, the others read its
    state and it reads theirs, then the rooms' state is settled, as the Redis link does."""
    node = bus.nodes[index]
    bus.apart.discard(node.id)
    envelope, seq, state = node.announcement()
    node.link.publish(envelope, seq, state)
    bus.settle()
    for other in bus.nodes:
        if other is not node:
            node.begin_read(other.id)
            _reader(bus, node)(other.id, True)
    merge(bus, index)
    node.replay_apart()
    bus.settle()


def test_two_operators_acting_at_once_leave_every_node_alike():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    for conn in (alice, bob):
        say(bus, conn, "/join #den")
    say(bus, alice, "/op bob")
    say(bus, alice, "/ban spam*")
    quiet(alice, bob)
    # In one instant, before either hears of the other's:
    alice.protocol.dataReceived(b"/topic from alice\r\n/lock-topic\r\n/unban spam*\r\n")
    bob.protocol.dataReceived(b"/topic from bob\r\n/lock-topic\r\n/unban spam*\r\n")
    bus.settle()
    rooms = [h.service.rooms.find("#den") for h in (one, two)]
    assert rooms[0].topic == rooms[1].topic == "from bob"  # n1 published first
    assert rooms[0].topic_locked and rooms[1].topic_locked
    assert [b.shown for b in rooms[0].bans] == [b.shown for b in rooms[1].bans]
    seen = alice.new_lines()
    assert seen == bob.new_lines()  # the same story, in the same order, on both
    assert sum("locked the topic" in line for line in seen) == 1


def test_two_nodes_making_one_room_at_once_make_both_founders_operators_everywhere():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    alice.protocol.dataReceived(b"/join #new\r\n")
    bob.protocol.dataReceived(b"/join #new\r\n")
    bus.settle()
    assert ops_of(one, "#new") == ops_of(two, "#new") == ["alice", "bob"]
    assert one.service.rooms.find("#new").born == two.service.rooms.find("#new").born


def network_with_vip(redis_lost: bool) -> tuple[Bus, list[ProtocolHarness], Any]:
    """alice (n1) made #vip and locked its topic, bob (n2) is in it; n3 was apart all
    along, and mallory there made a #vip of her own; then n3 joins (after Redis lost
    the rooms' state, if ``redis_lost``, so that every node settles them again)."""
    bus, servers = network(3)
    bus.apart.add("n3")
    alice, bob = join(bus, servers[0], "alice"), join(bus, servers[1], "bob")
    for conn in (alice, bob):
        say(bus, conn, "/join #vip")
    say(bus, alice, "/topic #vip members only")
    say(bus, alice, "/lock-topic")
    bus.clock.advance(1)  # a moment later
    mallory = servers[2].connect("mallory")
    say(bus, mallory, "/join #vip")
    assert ops_of(servers[2], "#vip") == ["mallory"]  # apart: it made the room there
    if redis_lost:
        bus.rooms.clear()
    rejoin(bus, 2)  # n3 first
    if redis_lost:
        merge(bus, 0)
        merge(bus, 1)
    return bus, servers, mallory


def test_a_room_made_while_apart_does_not_take_over_the_networks_room():
    for redis_lost in (False, True):
        bus, servers, mallory = network_with_vip(redis_lost)
        for h in servers:
            room = h.service.rooms.find(room_key("#vip"))
            assert sorted(m.nick for m in room.members) == ["alice", "bob", "mallory"]
            assert ops_of(h, "#vip") == ["alice"], redis_lost
            assert room.topic == "members only" and room.topic_locked
        mallory.new_lines()
        say(bus, mallory, "/topic #vip mine now")
        assert mallory.new_lines() == ["!!! not-allowed: you are not an operator of #vip"]


def test_a_room_made_while_apart_replaces_a_forgotten_one_of_the_same_name():
    bus, (one, _) = network(2)
    alice = join(bus, one, "alice")
    say(bus, alice, "/join #old")
    say(bus, alice, "/ban newbie*")
    stale = bus.rooms[room_key("#old")]
    say(bus, alice, "/part #old")
    assert room_key("#old") not in bus.rooms  # forgotten with the room
    bus.rooms[room_key("#old")] = stale  # as if Redis was out of reach when the room emptied
    bus.apart.add("n1")
    newbie = one.connect("newbie1")
    say(bus, newbie, "/join #old")  # a new #old, made while apart
    rejoin(bus, 0)
    for node in bus.nodes:  # n2 takes n1's state of the room, as n1 settled it
        assert node.service is not None
        room = node.service.rooms.find(room_key("#old"))
        assert room is not None and not room.bans and ops_of(node, "#old") == ["newbie1"]
    assert (
        json.loads(bus.rooms[room_key("#old")])["born"]
        == one.service.rooms.find(room_key("#old")).born
    )


def test_an_operator_overtaken_by_another_does_not_act():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    for conn in (alice, bob):
        say(bus, conn, "/join #den")
    say(bus, alice, "/op bob")
    quiet(alice, bob)
    # Crossing bans: the first in the network's order puts bob out and takes his
    # operator status at once, so his ban of alice, checked before, is dropped everywhere.
    alice.protocol.dataReceived(b"/ban bob enough\r\n")
    bob.protocol.dataReceived(b"/ban alice no you\r\n")
    bus.settle()
    for h in (one, two):
        room = h.service.rooms.find("#den")
        assert [b.shown for b in room.bans] == ["bob"]
        assert [m.nick for m in room.members] == ["alice"] and ops_of(h, "#den") == ["alice"]


def test_actions_just_before_quitting_apply_on_every_node_alike():
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    for conn in (alice, bob):
        say(bus, conn, "/join #den")
    say(bus, alice, "/topic #den final words\r\n/lock-topic\r\n/ban zed\r\n/quit")
    for h in (one, two):
        room = h.service.rooms.find("#den")
        assert room.topic == "final words" and room.topic_locked
        assert [b.shown for b in room.bans] == ["zed"]
        assert ops_of(h, "#den") == ["bob"]  # and the heir, once alice was gone


def test_a_ban_made_while_its_targets_node_was_apart_puts_it_out_on_return():
    bus, (one, two) = network(2)
    alice, mallory = join(bus, one, "alice"), join(bus, two, "mallory")
    for conn in (alice, mallory):
        say(bus, conn, "/join #den")
    bus.apart.add("n2")
    say(bus, alice, "/ban mallory spam")
    assert "#den" in mallory.protocol.member.rooms  # n2 did not hear of it
    rejoin(bus, 1)
    assert "*** [#den] mallory left (banned by alice: spam)" in mallory.new_lines()
    for h in (one, two):
        assert [m.nick for m in h.service.rooms.find("#den").members] == ["alice"]


def test_a_room_action_redis_did_not_take_is_applied_here_alone(logged_errors: Any) -> None:
    logged_errors.expected = True  # the failed publish is logged
    bus, (one, _) = network(2)
    alice = join(bus, one, "alice")
    say(bus, alice, "/join #den")

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("redis went away")

    link = bus.nodes[0].link
    publish, link.publish = link.publish, refused  # type: ignore[method-assign]
    alice.send(b"/lock-topic\r\n")
    assert one.service.rooms.find("#den").topic_locked
    link.publish = publish  # type: ignore[method-assign]


def test_what_a_member_did_apart_is_checked_again_in_the_networks_order():
    bus, (one, two) = network(2)
    alice, mallory = join(bus, one, "alice"), join(bus, two, "mallory")
    for conn in (alice, mallory):
        say(bus, conn, "/join #den")
    bus.apart.add("n2")
    say(bus, alice, "/ban mallory spam")
    say(bus, alice, "/lock-topic")
    for i in range(5):  # n2 never heard of the lock: allowed there, for now
        say(bus, mallory, f"/topic mine{i}")
    rejoin(bus, 1)
    for h in (one, two):
        room = h.service.rooms.find("#den")
        assert room.topic_locked and [b.shown for b in room.bans] == ["mallory"]
        assert room.topic == "" and [m.nick for m in room.members] == ["alice"]


def test_an_operators_actions_redis_did_not_take_reach_the_network_when_it_is_back(
    logged_errors: Any,
) -> None:
    logged_errors.expected = True  # the failed publish is logged
    bus, (one, two) = network(2)
    alice, bob = join(bus, one, "alice"), join(bus, two, "bob")
    for conn in (alice, bob):
        say(bus, conn, "/join #den")
    link = bus.nodes[0].link

    def hung(*args: Any, **kwargs: Any) -> Any:
        return defer.fail(ConnectionError("lost connection"))

    publish, link.publish = link.publish, hung  # type: ignore[method-assign]
    say(bus, alice, "/lock-topic")
    assert one.service.rooms.find("#den").topic_locked  # here at once, alone
    assert not two.service.rooms.find("#den").topic_locked
    link.publish = publish  # type: ignore[method-assign]
    rejoin(bus, 0)
    assert two.service.rooms.find("#den").topic_locked


def test_a_room_without_operators_is_not_taken_over_by_one_made_apart():
    bus, servers = network(3)
    alice, bob = join(bus, servers[0], "alice"), join(bus, servers[1], "bob")
    for conn in (alice, bob):
        say(bus, conn, "/join #room")
    say(bus, alice, "/mute bob")
    say(bus, alice, "/part #room")  # the only heir is muted: no operator left
    assert ops_of(servers[1], "#room") == []
    bus.apart.add("n3")
    bus.clock.advance(1)
    mallory = servers[2].connect("mallory")
    say(bus, mallory, "/join #room")  # made afresh there
    rejoin(bus, 2)
    for h in servers:
        assert ops_of(h, "#room") == [], h.service.rooms.find(room_key("#room"))


def test_a_member_just_banned_on_another_node_is_not_made_heir():
    bus, servers = network(3)
    alice = join(bus, servers[0], "alice")
    zed, bob = join(bus, servers[1], "zed"), join(bus, servers[2], "bob")
    for conn in (alice, zed, bob):
        say(bus, conn, "/join #den")
    quiet(zed, bob)
    # In one read: the ban, then the quit; n1 is gone from #den before zed's part.
    alice.protocol.dataReceived(b"/ban zed\r\n/quit\r\n")
    bus.settle()
    for h in servers:
        assert ops_of(h, "#den") == ["bob"]
    assert not any("zed is an operator" in line for line in bob.new_lines())


def test_a_kick_while_the_targets_node_was_apart_puts_it_out_on_return():
    bus, (one, two) = network(2)
    alice, mallory = join(bus, one, "alice"), join(bus, two, "mallory")
    for conn in (alice, mallory):
        say(bus, conn, "/join #den")
    say(bus, alice, "/op mallory")
    bus.apart.add("n2")
    say(bus, alice, "/kick mallory go away")
    rejoin(bus, 1)
    assert "*** [#den] mallory left (kicked by alice: go away)" in mallory.new_lines()
    for h in (one, two):
        room = h.service.rooms.find("#den")
        assert [m.nick for m in room.members] == ["alice"] and not room.leaving
    assert json.loads(bus.rooms["#den"])["out"] == []  # forgotten once she was out
    say(bus, mallory, "/join #den")  # a kick is not a ban: she may come back
    assert [m.nick for m in one.service.rooms.find("#den").members] == ["alice", "mallory"]
