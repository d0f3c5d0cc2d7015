"""Several nodes as one server, through the backplane's replica over an in-memory link.

Each node is a whole server (ProtocolHarness) whose ``INetwork`` is a ``replica.Node``;
the link stands in for Redis: envelopes wait in a list until ``settle`` hands them to
every node, claims are decided in one dictionary.  Time and delivery are both driven.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task

from tests.doubles import ProtocolHarness
from twisted_chat.backplane.replica import LOST_WITH_SERVER, Node


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

    def settle(self) -> None:
        """Run every node's turn and deliver every envelope, until nothing is left."""
        for _ in range(100):
            self.clock.advance(0)
            if not self.channel:
                return
            sent, self.channel = self.channel, []
            for data in sent:
                for node in self.nodes:
                    node.received(data)
        raise AssertionError("the network never settled")


class MemoryLink:
    def __init__(self, bus: Bus, name: str) -> None:
        self.bus = bus
        self.name = name

    def connected(self) -> bool:
        return self.bus.up

    def publish(self, envelope: bytes, seq: int, state: dict[str, str | None]) -> None:
        stored = self.bus.states.setdefault(self.name, {})
        for mid, desc in state.items():
            if desc is None:
                stored.pop(mid, None)
            else:
                stored[mid] = desc
        self.bus.seqs[self.name] = seq
        self.bus.channel.append(envelope)

    def claim(self, keys: list[str], owner: str) -> defer.Deferred[bool]:
        if any(self.bus.names.get(k, owner) != owner for k in keys):
            return defer.succeed(False)
        for k in keys:
            self.bus.names[k] = owner
        return defer.succeed(True)

    def release(self, keys: list[str], owner: str) -> None:
        for k in keys:
            if self.bus.names.get(k) == owner:
                del self.bus.names[k]


def network(count: int) -> tuple[Bus, list[ProtocolHarness]]:
    bus = Bus()
    servers = []
    for i in range(count):
        node = Node(f"n{i + 1}", bus.clock, MemoryLink(bus, f"n{i + 1}"))
        node.guests.extend(range(100 * i + 1, 100 * i + 100))
        node.on_read = _reader(bus, node)
        h = ProtocolHarness(network=node, clock=bus.clock)
        node.attach(h.service)
        bus.nodes.append(node)
        servers.append(h)
    return bus, servers


def _reader(bus: Bus, node: Node) -> Callable[[str, bool], None]:
    """What the Redis link does on a gap: read the other node's stored state."""

    def read_state(other: str, announced: bool) -> None:
        node.reconcile(other, bus.seqs.get(other), dict(bus.states.get(other, {})))

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
    one.service.lost_name(member)
    lines = alice.new_lines()
    assert lines[0].startswith("*** alice is now known as guest")
    assert "while the network was split, alice was taken on another server" in lines[1]
