"""End-to-end tests of the Redis backplane: several real ``twistd -n groupchat`` nodes
sharing one real ``redis-server``, real loopback sockets.

Every wait is bounded.  A node is used only once its log says it joined the network, and
a member of another node only once this node has shown its arrival (its nickname change),
so no test depends on how fast an envelope crosses Redis.  "Never received" is checked
after a ``/ping`` barrier on the observer *and* after a later line from the same sender
arrived there (one node publishes its envelopes in order; see ``tests/e2e_support.py``).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

from tests import redis_support
from tests.e2e_support import (
    ChatClient,
    ClientFactory,
    ServerFactory,
    ServerProcess,
    set_nick,
    wait_until,
)
from tests.redis_support import RedisProcess, start_redis, stop

LEASE = 5.0  # twisted_chat.backplane.redis.LEASE; checked every LEASE / 3
LOST_TIMEOUT = 10.0  # a killed node's members are gone within the lease and a check
REJOIN_TIMEOUT = 15.0  # txredisapi's reconnection backoff, then joining again
SPLIT = "*** Network: the network is split"
WHOLE = "*** Network: the network is whole again"
# Fast enough that a burst of numbered lines is not held back by the rate limit.
FAST = ("--rate", "1000", "--burst", "1000", "--connect-rate", "1000")
WHO = re.compile(r"^\*\*\* \[(#\S+)\] (?:(\d+) here: (.*)|nobody here)$")


# -- helpers -----------------------------------------------------------------------------


def start_node(start_server: ServerFactory, redis: RedisProcess, *options: str) -> ServerProcess:
    """A node on ``redis`` with the ``FAST`` limits, returned once it has joined the network."""
    return redis_support.start_node(start_server, redis, *FAST, *options)


def members(connect: ClientFactory, wanted: list[tuple[ServerProcess, str]]) -> list[ChatClient]:
    """Connect one member per (node, nickname), each renamed, each seen by all the others.

    A member of another node is known here once its nickname change has been shown here
    (its arrival and its join of #lobby came before it, from the same node); the earlier
    members are known to a new one's node once its /who lists them.
    """
    clients: list[ChatClient] = []
    for server, nick in wanted:
        client = connect(server, nick)
        old = client.nick
        set_nick(client, nick)
        for other in clients:
            other.expect(f"*** {old} is now known as {nick}")
        wait_known(client, {other.nick for other in clients}, 5.0)
        clients.append(client)
    return clients


def who(client: ChatClient, room: str = "#lobby", ops: bool = False) -> set[str]:
    """The nicknames ``/who room`` lists for ``client`` now (and no earlier listing);
    none for a room that does not exist (yet).  With ``ops``, operators keep their ``@``."""
    client.barrier()
    client.skip_seen()
    client.say(f"/who {room}")
    line = client.expect(
        lambda line: (
            line.startswith("!!! ") or ((m := WHO.match(line)) is not None and m[1] == room)
        )
    )
    if line.startswith("!!! no-such-room: "):
        return set()
    m = WHO.match(line)
    assert m is not None, line
    if m[2] is None:
        return set()
    names = set(m[3].split(", "))
    assert len(names) == int(m[2]), line  # nobody twice
    return names if ops else {name.removeprefix("@") for name in names}


def wait_who(client: ChatClient, room: str, expected: set[str], timeout: float) -> None:
    """Until ``/who room`` lists ``expected`` (with ``@`` for operators when it has any)."""
    seen: list[set[str]] = []
    ops = any(name.startswith("@") for name in expected)

    def listed() -> bool:
        seen.append(who(client, room, ops))
        return seen[-1] == expected

    assert wait_until(listed, timeout), f"{client.label}: /who {room} gave {seen[-3:]}"


def wait_known(client: ChatClient, nicks: set[str], timeout: float) -> None:
    """Wait until ``/who`` in #lobby lists (at least) ``nicks`` for ``client``."""
    seen: list[set[str]] = []

    def listed() -> bool:
        seen.append(who(client))
        return nicks <= seen[-1]

    assert wait_until(listed, timeout), f"{client.label}: /who gave {seen[-3:]}, not {nicks}"


def numbered(
    client: ChatClient, prefix: str, room: str, sender: str, history: bool = False
) -> list[str]:
    """The texts of ``sender``'s lines in ``room`` starting with ``prefix``, in order;
    with ``history``, those it was shown as history (``[#room DATE TIME] <nick> ...``)."""
    if history:
        shown = re.compile(rf"^\[{re.escape(room)} [0-9-]+ [0-9:]+\] <{sender}> ({prefix}.*)$")
        return [m[1] for line in client.lines_so_far if (m := shown.match(line))]
    head = f"[{room}] <{sender}> {prefix}"
    return [
        line[len(head) - len(prefix) :] for line in client.lines_so_far if line.startswith(head)
    ]


def at_once(lines: list[tuple[ChatClient, str]]) -> None:
    """Each client says its line, all released together (a race between nodes)."""
    go = threading.Barrier(len(lines))

    def say(client: ChatClient, line: str) -> None:
        go.wait(timeout=5)
        client.say(line)

    threads = [threading.Thread(target=say, args=pair) for pair in lines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)


def heard_line(client: ChatClient, line: str, timeout: float) -> bool:
    """Whether ``line`` arrives within ``timeout`` or had arrived (taken by an earlier
    ``poll`` or not): unlike ``expect``, it does not consume the line."""
    return wait_until(
        lambda: line in client.lines_so_far or client.poll(line, 0.1) is not None, timeout
    )


# -- tests -------------------------------------------------------------------------------


def test_two_nodes_share_rooms_who_and_private_messages(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    one, two = (start_node(start_server, redis_server) for _ in range(2))
    alice, bob = members(connect, [(one, "alice"), (two, "bob")])

    # Both speak at once, 20 numbered lines each; each hears the other's, in order, once.
    count = 20
    for i in range(1, count + 1):
        alice.say(f"a-{i:02}")
        bob.say(f"b-{i:02}")
    expected_a = [f"a-{i:02}" for i in range(1, count + 1)]
    expected_b = [f"b-{i:02}" for i in range(1, count + 1)]
    bob.expect(f"[#lobby] <alice> a-{count:02}")
    alice.expect(f"[#lobby] <bob> b-{count:02}")
    for client in (alice, bob):
        client.barrier()
    assert numbered(bob, "a-", "#lobby", "alice") == expected_a, bob.lines_so_far
    assert numbered(alice, "b-", "#lobby", "bob") == expected_b, alice.lines_so_far
    assert alice.count("<alice>") == 0 and bob.count("<bob>") == 0  # no echo, no loop

    # /who and /rooms on either node show the whole network.
    assert who(alice) == {"alice", "bob"}
    assert who(bob) == {"alice", "bob"}
    bob.say("/rooms")
    assert bob.expect("*** Rooms") == "*** Rooms: #lobby (2)"

    # Private messages, both ways: the recipient gets it, the sender its echo.
    alice.say("/msg bob psst over there")
    assert bob.expect("psst") == "[PM alice -> bob] psst over there"
    assert alice.expect("psst") == "[PM alice -> bob] psst over there"
    bob.say("/msg alice and back")
    assert alice.expect("and back") == "[PM bob -> alice] and back"
    assert bob.expect("and back") == "[PM bob -> alice] and back"
    for client in (alice, bob):
        client.barrier()
        assert client.count("[PM") == 2, client.lines_so_far  # once each, never twice

    # A room created on one node is seen, joined and talked in from the other.
    alice.say("/join #pair")
    alice.expect("*** Now talking in #pair")
    wait_who(bob, "#pair", {"@alice"}, 5.0)  # its founder: an operator on every node
    bob.say("/join #pair")
    alice.expect("*** [#pair] bob joined (2 here)")
    bob.say("in the pair")
    assert alice.expect("in the pair") == "[#pair] <bob> in the pair"


def test_nicknames_are_unique_across_nodes(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    one, two = (start_node(start_server, redis_server) for _ in range(2))
    alice, bob = members(connect, [(one, "alice"), (two, "bob")])

    for taken in ("alice", "AIice", "ALICE"):
        bob.say(f"/nick {taken}")
        assert bob.expect("!!!").startswith("!!! nick-taken: "), taken
    bob.barrier()
    assert bob.count("*** bob is now known as") == 0, bob.lines_so_far
    assert who(bob) == who(alice) == {"alice", "bob"}

    alice.say("/quit see you")
    bob.expect("*** [#lobby] alice quit (see you)")
    alice.expect_closed()
    set_nick(bob, "alice")  # free again, on the other node
    assert who(bob) == {"alice"}

    # A look-alike taken on node 2 now blocks the original on node 1.
    newcomer = connect(one, "newcomer")
    newcomer.say("/nick AIice")
    assert newcomer.expect("!!!").startswith("!!! nick-taken: ")


def test_simultaneous_nick_claims_on_two_nodes_have_one_winner(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    one, two = (start_node(start_server, redis_server) for _ in range(2))
    # Five races, each between two fresh members: the same name, then look-alikes.
    races = [("carol", "carol"), ("dave", "dave"), ("erin", "erin"), ("alice", "AIice"),
             ("mallory", "MaIlory")]  # fmt: skip
    for round_no, (name1, name2) in enumerate(races):
        c1 = connect(one, f"r{round_no}-one")
        c2 = connect(two, f"r{round_no}-two")
        for client in (c1, c2):  # each node knows of both
            wait_known(client, {c1.nick, c2.nick}, 5.0)
        at_once([(c1, f"/nick {name1}"), (c2, f"/nick {name2}")])

        outcome = {}
        for client, name in ((c1, name1), (c2, name2)):
            won = f"*** {client.nick} is now known as {name}"

            def answer(line: str, won: str = won) -> bool:
                return line == won or line.startswith("!!! ")

            line = client.expect(answer)
            assert line == won or line.startswith("!!! nick-taken: "), line
            outcome[client.label] = line == won
        assert sorted(outcome.values()) == [False, True], (races[round_no], outcome)

        # Both nodes agree on who holds it.
        winner, name = (c1, name1) if outcome[c1.label] else (c2, name2)
        loser = c2 if winner is c1 else c1
        loser.expect(f"*** {winner.nick} is now known as {name}")
        winner.nick = name
        for client in (c1, c2):
            assert who(client) >= {name, loser.nick}
        c1.say("/quit done")
        c2.say("/quit done")
        c1.expect_closed()
        c2.expect_closed()


def test_a_login_is_held_once_across_nodes_even_when_raced(
    redis_server: RedisProcess, start_server: ServerFactory, tmp_path: Path
) -> None:
    users = tmp_path / "users.txt"
    users.write_text("alice:secret1\nbob:hunter22\n")
    one, two = (start_node(start_server, redis_server, "--auth", f"file:{users}")
                for _ in range(2))  # fmt: skip
    welcome = "*** Welcome to groupchat 0.1.0, alice!"
    in_use = "!!! login-in-use: alice (or a name that looks like it) is logged in"

    def answer(line: str) -> bool:
        return line.startswith((welcome, "!!! "))

    for round_no in range(5):
        clients = [ChatClient.connect(server.port, f"r{round_no}-{i}")
                   for i, server in enumerate((one, two))]  # fmt: skip
        for client in clients:
            client.expect("This server needs a login")
        at_once([(client, "/login alice secret1") for client in clients])
        said = [client.expect(answer) for client in clients]
        assert said.count(in_use) == 1, said
        assert sum(line.startswith(welcome) for line in said) == 1, said
        winner, loser = clients if said[1] == in_use else clients[::-1]
        loser.close()
        winner.say("/quit done")
        winner.expect_closed()

    # Held by a member of node one: node two refuses it until that member leaves (and
    # node one, until it has heard that the last round's winner left, if on node two).
    holders: list[ChatClient] = []
    assert wait_until(lambda: _logged_in(one.port, holders), 5.0), "alice never free on one"
    late = ChatClient.connect(two.port, "late")
    late.expect("This server needs a login")
    late.say("/login alice secret1")
    assert late.expect(answer) == in_use
    holders[0].say("/quit bye")
    holders[0].expect_closed()
    assert wait_until(lambda: _logged_in(two.port, []), 5.0), "alice never free again on two"


def _logged_in(port: int, into: list[ChatClient]) -> bool:
    """Log in as alice on ``port``: True and the client kept in ``into``, or False."""
    client = ChatClient.connect(port, "alice")
    client.expect("This server needs a login")
    client.say("/login alice secret1")
    if client.expect(lambda line: line.startswith(("*** Welcome", "!!! "))).startswith("!!! "):
        client.close()
        return False
    into.append(client)
    return True


def test_three_nodes_one_room(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    nodes = [start_node(start_server, redis_server) for _ in range(3)]
    xena, yuri, zed = clients = members(
        connect, list(zip(nodes, ["xena", "yuri", "zed"], strict=True))
    )

    for client in clients:
        client.say("/join #trio")
        client.expect("*** Now talking in #trio")
    for client in clients:
        wait_who(client, "#trio", {"xena", "yuri", "zed"}, 5.0)

    for client in clients:
        client.say(f"hello from {client.nick}")
    for client in clients:
        for other in clients:
            if other is not client:
                line = f"[#trio] <{other.nick}> hello from {other.nick}"
                assert client.expect(f"hello from {other.nick}") == line
    for client in clients:
        client.barrier()
        assert client.count("hello from") == 2, client.lines_so_far  # not its own

    zed.say("/quit off to bed")
    zed.expect("*** Disconnected: you quit")
    zed.expect_closed()
    for client in (xena, yuri):
        assert client.expect("zed quit") == "*** [#lobby, #trio] zed quit (off to bed)"
        assert who(client, "#trio") == {"xena", "yuri"}
        assert client.count("zed quit") == 1
    assert who(xena) == {"xena", "yuri"}


def test_killed_node_members_are_lost_within_the_lease(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    one, two = (start_node(start_server, redis_server) for _ in range(2))
    alice, bob, bea = members(connect, [(one, "alice"), (two, "bob"), (two, "bea")])

    one.proc.kill()  # SIGKILL, by its own PID: no goodbye to the network
    one.wait_exit(5.0)
    killed = time.monotonic()
    for client in (bob, bea):
        line = client.expect("alice lost connection", timeout=LOST_TIMEOUT)
        assert line == "*** [#lobby] alice lost connection (lost with its server)", line
    took = time.monotonic() - killed
    assert took < 2 * LEASE, took
    alice.expect_closed()

    assert who(bob) == {"bob", "bea"}
    set_nick(bob, "alice")  # its name is free again
    bea.expect("*** bob is now known as alice")
    for client in (bob, bea):
        client.barrier()
        assert client.count("lost with its server") == 1, client.lines_so_far


def test_redis_restarted_under_traffic(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    one, two = (start_node(start_server, redis_server) for _ in range(2))
    restarted: list[RedisProcess] = []
    try:
        split_and_rejoin(redis_server, restarted, connect, one, two)
    finally:
        for node in (one, two):  # the nodes first, then the Redis this test started
            node.stop()
        for redis in restarted:
            stop(redis)


def split_and_rejoin(
    redis: RedisProcess,
    restarted: list[RedisProcess],
    connect: ClientFactory,
    one: ServerProcess,
    two: ServerProcess,
) -> None:
    alice, amy, bob = members(connect, [(one, "alice"), (one, "amy"), (two, "bob")])
    guest = connect(two, "guest")  # keeps a guest name through the restart
    wait_known(alice, {guest.nick}, 5.0)

    # amy talks all along: every 50 ms, from before Redis goes until after it is back.
    stop_talking = threading.Event()
    sent: list[str] = []

    def talk() -> None:
        n = 0
        while not stop_talking.is_set():
            n += 1
            sent.append(f"tick-{n:04}")
            amy.say(sent[-1])
            stop_talking.wait(0.05)

    talker = threading.Thread(target=talk)
    talker.start()
    try:
        assert alice.poll("<amy> tick-0003", 5.0), alice.lines_so_far
        assert bob.poll("<amy> tick-0003", 5.0), bob.lines_so_far

        stop(redis)
        for client in (alice, amy, bob):
            line = client.expect(SPLIT)
            assert line.startswith(SPLIT + ": "), line

        # Split: amy's node still works by itself.
        alice.say("/msg amy still here")
        assert amy.expect("still here") == "[PM alice -> amy] still here"
        split_tick = len(sent) + 1
        assert alice.poll(f"<amy> tick-{split_tick + 2:04}", 5.0), alice.lines_so_far

        restarted.append(start_redis(redis.folder, redis.port, "redis2.log"))
        for client in (alice, amy, bob):
            client.expect(WHOLE, timeout=REJOIN_TIMEOUT)
        back_tick = len(sent) + 1  # said after both nodes were whole again
        assert bob.poll(f"<amy> tick-{back_tick + 5:04}", 5.0), bob.lines_so_far[-20:]
    finally:
        stop_talking.set()
        talker.join(timeout=5)

    for client in (alice, bob):  # the last line, whether or not a poll above took it
        assert heard_line(client, f"[#lobby] <amy> {sent[-1]}", 5.0), client.lines_so_far[-20:]
    # On amy's own node, every line, in order; across the split, an increasing run
    # (lines said while apart are not sent later) that ends with every line said since.
    assert numbered(alice, "tick-", "#lobby", "amy") == sent
    heard = numbered(bob, "tick-", "#lobby", "amy")
    assert heard == sorted(set(heard)), heard
    assert heard[-(len(sent) - back_tick + 1) :] == sent[back_tick - 1 :], heard

    # Both ways across the nodes again: rooms, private messages, /who.
    bob.say("hello again")
    assert alice.expect("hello again") == "[#lobby] <bob> hello again"
    alice.say("/msg bob welcome back")
    assert bob.expect("welcome back") == "[PM alice -> bob] welcome back"
    everyone = {"alice", "amy", "bob", guest.nick}
    wait_who(bob, "#lobby", everyone, 5.0)
    wait_who(alice, "#lobby", everyone, 5.0)
    # The restarted Redis lost its guest counter: each node raised it past every guest
    # number it knew of (its own blocks, the other's guest) before taking a block.
    reply = restarted[-1].command("GET", "gc:guests")
    counter = int(reply.split(b"\r\n")[1])
    assert counter > int(guest.nick.removeprefix("guest")) + 100, (counter, guest.nick)
    for server in (one, two):
        newcomer = connect(server, "newcomer")
        assert newcomer.nick not in everyone, newcomer.nick
        everyone.add(newcomer.nick)
    # Nicknames are arbitrated by the new Redis: bob's is held there again.
    alice.say("/nick bob")
    assert alice.expect("!!!").startswith("!!! nick-taken: ")


def test_a_hung_redis_is_noticed_within_the_lease(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    one, two = (start_node(start_server, redis_server) for _ in range(2))
    alice, bob = members(connect, [(one, "alice"), (two, "bob")])
    redis_server.proc.send_signal(signal.SIGSTOP)  # by its PID: it hangs, sockets stay open
    try:
        hung = time.monotonic()
        for client in (alice, bob):
            client.expect(SPLIT, timeout=LEASE + 2.0)
        took = time.monotonic() - hung
        assert took < LEASE, took  # before a lease could run out unnoticed
        alice.say("/join #apart")  # each node goes on serving its own members
        alice.expect("*** Now talking in #apart")
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    for client in (alice, bob):
        client.expect(WHOLE, timeout=REJOIN_TIMEOUT)
    wait_who(alice, "#lobby", {"alice", "bob"}, 5.0)
    alice.say("/join #lobby")
    alice.say("back")
    assert bob.expect("back") == "[#lobby] <alice> back"
    for client in (alice, bob):
        client.barrier()
        assert client.count("lost with its server") == 0, client.lines_so_far


def test_a_node_that_falls_behind_is_reported(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    big = ("--max-line", "70000", "--byte-rate", "100000000", "--send-queue", "100000000")
    one, two = (start_node(start_server, redis_server, *big) for _ in range(2))
    slow_id = re.search(r"node (\w+) joined the network", two.log())
    assert slow_id is not None, two.log()
    alice, amy, bob = members(connect, [(one, "alice"), (one, "amy"), (two, "bob")])
    amy.say("/join #flood")  # nobody else in it: the flood only fills node two's queue
    amy.expect("*** Now talking in #flood")
    report = f"node {slow_id[1]} is falling behind"
    line = "x" * 65000
    two.proc.send_signal(signal.SIGSTOP)  # by its PID: it stops reading Redis
    try:
        for _ in range(15):  # at most 15 MiB, under Redis's 32 MiB hard limit
            for _ in range(16):
                amy.say(line)
            if wait_until(lambda: report in one.log(), 0.5):
                break
        assert report in one.log(), one.log()[-2000:]
    finally:
        two.proc.send_signal(signal.SIGCONT)
    # Caught up (within Redis's limits nothing was dropped): the network goes on.
    amy.say("/join #lobby")
    amy.say("after the flood")
    assert bob.expect("after the flood", timeout=REJOIN_TIMEOUT) == "[#lobby] <amy> after the flood"
    assert alice.expect("after the flood") == "[#lobby] <amy> after the flood"


CROWD = re.compile(r"^\*\*\* \[#crowd\] (.*); (\d+) here$")


def crowd_changes(client: ChatClient, until_here: int, timeout: float) -> dict[str, set[str]]:
    """The names in ``client``'s #crowd summaries (by change: joined, left, renamed) up to
    and including the first that counts ``until_here`` members."""
    changes: dict[str, set[str]] = {"joined": set(), "left": set(), "renamed": set()}
    while True:
        line = client.expect(lambda line: CROWD.match(line) is not None, timeout=timeout)
        m = CROWD.match(line)
        assert m is not None
        for part in m[1].split("; "):
            kind_and_count, _, names = part.partition(": ")
            changes[kind_and_count.split()[1]].update(names.split(", "))
        if int(m[2]) == until_here:
            return changes


def test_crowded_rooms_are_summarized_alike_on_every_node(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    crowd = ("--summarize-above", "4", "--summary-interval", "1")
    one, two = (start_node(start_server, redis_server, *crowd) for _ in range(2))
    seated: list[ChatClient] = []
    for server, nick in [(one, "a1"), (two, "b1"), (one, "a2"), (two, "b2")]:
        client = connect(server, nick)
        set_nick(client, nick)
        client.say("/join #crowd")
        client.expect("*** Now talking in #crowd")
        seated.append(client)
    a1, b1 = seated[0], seated[1]
    for observer in (a1, b1):
        wait_who(observer, "#crowd", {"a1", "a2", "b1", "b2"}, 5.0)
        observer.skip_seen()

    # Two more, one on each node: the room passes 4 and is summarized, on both nodes.
    late = []
    for server, nick in [(one, "a3"), (two, "b3")]:
        client = connect(server, nick)
        set_nick(client, nick)
        client.say("/join #crowd")
        client.expect("*** Now talking in #crowd")
        late.append(client)
    for observer in (a1, b1):
        changes = crowd_changes(observer, 6, 5.0)
        assert changes == {"joined": {"a3", "b3"}, "left": set(), "renamed": set()}, changes
        assert observer.count(lambda line: line.startswith("*** [#crowd] a3 joined")) == 0
    late[1].say("/nick b3x")
    late[0].say("/quit bye")
    for observer in (a1, b1):
        changes = crowd_changes(observer, 5, 5.0)
        assert changes == {"joined": set(), "left": {"a3"}, "renamed": {"b3 -> b3x"}}, changes


def test_history_is_kept_in_redis_for_every_node_and_outlives_them(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    one, two = (start_node(start_server, redis_server) for _ in range(2))
    alice, bob = members(connect, [(one, "alice"), (two, "bob")])
    alice.say("/join #tea")
    alice.expect("*** Now talking in #tea")
    for i in range(30):
        alice.say(f"tea-{i:02}")
    # One node publishes in order: once bob has this, his node has every line before it.
    alice.say("/join #lobby")
    alice.say("all poured")
    bob.expect("[#lobby] <alice> all poured")

    # A joiner on the other node is shown the last 20, then pages back through Redis.
    bob.say("/join #tea")
    bob.expect("*** [#tea] earlier messages (20), times in UTC:")
    bob.expect("*** Now talking in #tea")
    assert numbered(bob, "tea-", "#tea", "alice", history=True) == [
        f"tea-{i:02}" for i in range(10, 30)
    ]
    bob.say("/history 50")
    bob.expect("*** [#tea] earlier messages (10), times in UTC:")
    bob.expect("*** [#tea] end of earlier messages (nothing older is kept)")
    assert numbered(bob, "tea-", "#tea", "alice", history=True) == [
        *(f"tea-{i:02}" for i in range(10, 30)),
        *(f"tea-{i:02}" for i in range(10)),
    ]

    # Every node stopped; a new one reads the rooms' last lines from Redis.
    for node in (one, two):
        node.stop()
    three = start_node(start_server, redis_server)
    carol = connect(three, "carol")
    carol.say("/join #tea")
    carol.expect("*** [#tea] earlier messages (20), times in UTC:")
    carol.expect("*** Now talking in #tea")
    assert numbered(carol, "tea-", "#tea", "alice", history=True) == [
        f"tea-{i:02}" for i in range(10, 30)
    ]


def test_a_server_ban_reaches_nodes_started_later(
    redis_server: RedisProcess, start_server: ServerFactory, tmp_path: Path
) -> None:
    from tests.test_moderation_e2e import logged_in

    users = tmp_path / "users.txt"
    users.write_text("chief:pw-chief\nboss:pw-boss\n")
    ops = ("--auth", f"file:{users}", "--operator", "chief", "--operator", "boss")
    one = start_node(start_server, redis_server, *ops)
    chief = logged_in(one, "chief")
    chief.say("/gban 192.0.2.0/24 known spammers")
    chief.expect("*** banned 192.0.2.0/24 from the server; 0 disconnected")
    stored = lambda: b"192.0.2.0/24" in redis_server.command("HGETALL", "gc:gbans")  # noqa: E731
    assert wait_until(stored, 5.0), "the ban never reached redis"
    later = start_node(start_server, redis_server, *ops)
    boss = logged_in(later, "boss")
    boss.say("/gbans")
    boss.expect("*** Server bans: 192.0.2.0/24 (by chief: known spammers)")


def test_room_moderation_crosses_nodes_and_reaches_nodes_started_later(
    redis_server: RedisProcess, start_server: ServerFactory, connect: ClientFactory
) -> None:
    one = start_node(start_server, redis_server)
    two = start_node(start_server, redis_server)
    alice, bob = members(connect, [(one, "alice"), (two, "bob")])
    alice.say("/join #den")
    alice.expect("*** Now talking in #den")
    wait_who(bob, "#den", {"@alice"}, 5.0)  # alice founded it: its operator, everywhere
    bob.say("/join #den")
    bob.expect("*** Now talking in #den")
    wait_who(alice, "#den", {"@alice", "bob"}, 5.0)
    alice.say("/topic #den the plan")
    bob.expect("*** [#den] alice set the topic: the plan")
    alice.say("/mute bob")
    bob.expect("*** [#den] alice muted bob")
    bob.say("can I talk?")
    bob.expect("!!! not-allowed: you are muted in #den: you can read, not talk")
    alice.say("/kick bob enough")  # bob's own node puts him out
    bob.expect("*** [#den] bob left (kicked by alice: enough)")
    alice.expect("*** [#den] bob left (kicked by alice: enough)")

    def kept() -> bool:
        return b"the plan" in redis_server.command("HGET", "gc:rooms", "#den")

    assert wait_until(kept, 5.0), "the room's state never reached redis"
    later = start_node(start_server, redis_server)
    (carol,) = members(connect, [(later, "carol")])
    carol.say("/join #den")
    carol.expect(lambda line: line.startswith("*** [#den] Topic: the plan (set by alice"))
    wait_who(carol, "#den", {"@alice", "carol"}, 5.0)


def test_rooms_state_and_server_bans_outlive_a_redis_restart(
    redis_server: RedisProcess, start_server: ServerFactory, tmp_path: Path
) -> None:
    """Redis without persistence loses its data when restarted: the nodes write back
    what they hold as they rejoin, so a node started afterwards still enforces it."""
    from tests.test_moderation_e2e import logged_in

    users = tmp_path / "users.txt"
    users.write_text("chief:pw-chief\nboss:pw-boss\n")
    ops = ("--auth", f"file:{users}", "--operator", "chief", "--operator", "boss")
    one = start_node(start_server, redis_server, *ops)
    nodes = [one]
    restarted: list[RedisProcess] = []
    try:
        chief = logged_in(one, "chief")
        chief.say("/join #den")
        chief.expect("*** Now talking in #den")
        chief.say("/topic #den kept through it all")
        chief.expect("*** [#den] chief set the topic: kept through it all")
        chief.say("/gban 192.0.2.0/24 spam")
        chief.expect("*** banned 192.0.2.0/24 from the server; 0 disconnected")
        stop(redis_server)
        chief.expect(SPLIT, timeout=REJOIN_TIMEOUT)
        redis = start_redis(redis_server.folder, redis_server.port, "redis2.log")
        restarted.append(redis)
        chief.expect(WHOLE, timeout=REJOIN_TIMEOUT)

        def written_back() -> bool:
            return b"kept through it all" in redis.command(
                "HGET", "gc:rooms", "#den"
            ) and b"192.0.2.0/24" in redis.command("HGETALL", "gc:gbans")

        assert wait_until(written_back, 5.0), "the nodes never wrote their state back"
        later = start_node(start_server, redis, *ops)
        nodes.append(later)
        boss = logged_in(later, "boss")
        boss.say("/gbans")
        boss.expect("*** Server bans: 192.0.2.0/24 (by chief: spam)")
        boss.say("/join #den")
        boss.expect(lambda line: line.startswith("*** [#den] Topic: kept through it all"))
    finally:
        for node in nodes:  # the nodes first, then the Redis this test started
            node.stop()
        for redis in restarted:
            stop(redis)
