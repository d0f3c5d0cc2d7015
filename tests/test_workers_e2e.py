"""End-to-end tests of ``--workers N``: the real ``twistd -n groupchat --workers 2`` with
a real ``redis-server``, on real loopback sockets.

Which worker a client landed on is read from the parent's log: each worker's lines say
``worker N`` and its connect line names the client's own port.  Worker PIDs come from
the parent's ``worker N started (pid P)`` lines; a test kills only those, by PID.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_support import (
    HOST,
    ChatClient,
    ClientFactory,
    ServerFactory,
    ServerProcess,
    server_env,
    set_nick,
    twistd_command,
    wait_until,
)
from tests.redis_support import JOIN_TIMEOUT, RedisProcess
from tests.test_backplane_e2e import FAST, LOST_TIMEOUT, wait_known, who
from tests.ws_support import WsClient

STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
STOP_TIMEOUT = 20.0  # the supervisor's STOP_GRACE and KILL_WAIT, and a margin
MAX_CLIENTS = 40  # connected one by one until both workers have one


# -- helpers -----------------------------------------------------------------------------


def start_workers(
    start_server: ServerFactory, redis: RedisProcess, *options: str, port: str | None = None
) -> ServerProcess:
    """A parent with two workers, returned once both have joined the network."""
    where = {} if port is None else {"port": port, "wait": False}
    server = start_server("--backplane", f"redis://{HOST}:{redis.port}", "--workers", "2",
                          *FAST, *options, **where)  # fmt: skip
    assert wait_until(lambda: joined(server) >= {1, 2}, JOIN_TIMEOUT), server.log()
    return server


def joined(server: ServerProcess) -> set[int]:
    found = re.findall(r"\[worker (\d+) \S+\] backplane: node \S+ joined the network", server.log())
    return {int(n) for n in found}


def pids(server: ServerProcess) -> dict[int, list[int]]:
    """Each worker's PIDs so far, oldest first."""
    seen: dict[int, list[int]] = {}
    for number, pid in STARTED.findall(server.log()):
        seen.setdefault(int(number), []).append(int(pid))
    return seen


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_of(server: ServerProcess, client: ChatClient) -> int:
    """The worker that accepted ``client``, from its connect line in the parent's log."""
    port = client.sock.getsockname()[1]
    pattern = re.compile(rf"\[worker (\d+) [^\]]*\] connect {HOST}:{port} as ")
    assert wait_until(lambda: pattern.search(server.log()) is not None, 5.0), server.log()
    found = pattern.search(server.log())
    assert found is not None
    return int(found[1])


def one_on_each(
    server: ServerProcess, connect: ClientFactory, workers: set[int]
) -> dict[int, ChatClient]:
    """A connected client on each of ``workers``; the extra ones are closed."""
    placed: dict[int, ChatClient] = {}
    for i in range(MAX_CLIENTS):
        client = connect(server, f"c{i}")
        number = worker_of(server, client)
        if number in workers and number not in placed:
            placed[number] = client
            if set(placed) == workers:
                return placed
        else:
            client.say("/quit")
    raise AssertionError(f"{MAX_CLIENTS} clients, all on workers {set(placed)}:\n{server.log()}")


@pytest.fixture
def leftovers() -> Iterator[list[ServerProcess]]:
    """Servers whose workers are killed (by PID) if any outlives its test."""
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.stop()
        for pid in (pid for found in pids(server).values() for pid in found):
            with contextlib.suppress(OSError):  # gone meanwhile
                ours = b"twisted_chat.workers" in Path(f"/proc/{pid}/cmdline").read_bytes()
                if ours and alive(pid):
                    os.kill(pid, signal.SIGKILL)


# -- tests -------------------------------------------------------------------------------


def test_two_workers_behind_one_port_are_one_chat(
    redis_server: RedisProcess,
    start_server: ServerFactory,
    connect: ClientFactory,
    leftovers: list[ServerProcess],
) -> None:
    server = start_workers(start_server, redis_server)
    leftovers.append(server)
    assert server.log().count("groupchat listening on") == 1  # the parent's, once
    placed = one_on_each(server, connect, {1, 2})
    alice, bob = placed[1], placed[2]
    old = alice.nick
    set_nick(alice, "alice")
    bob.expect(f"*** {old} is now known as alice")  # heard on the other worker
    old = bob.nick
    set_nick(bob, "bob")
    alice.expect(f"*** {old} is now known as bob")

    # One room, across workers; private messages both ways; one nickname each.
    for client in (alice, bob):
        client.say("/join #pair")
        client.expect("*** Now talking in #pair")
    alice.expect("*** [#pair] bob joined (2 here)")
    alice.say("hello from worker 1")
    assert bob.expect("hello from") == "[#pair] <alice> hello from worker 1"
    bob.say("/msg alice psst")
    assert alice.expect("psst") == "[PM bob -> alice] psst"
    alice.say("/msg bob back")
    assert bob.expect("back") == "[PM alice -> bob] back"
    bob.say("/nick ALICE")
    assert bob.expect("!!!").startswith("!!! nick-taken: ")
    assert who(bob, "#pair") == who(alice, "#pair") == {"alice", "bob"}

    # Worker 1 is killed: it is started again, and its members are lost to the others.
    first = pids(server)
    os.kill(first[1][0], signal.SIGKILL)
    line = bob.expect("alice lost connection", timeout=LOST_TIMEOUT)
    assert line == "*** [#lobby, #pair] alice lost connection (lost with its server)"
    alice.expect_closed()
    assert wait_until(lambda: len(pids(server).get(1, [])) == 2, 5.0), server.log()
    assert re.search(rf"worker 1 \(pid {first[1][0]}\) was killed by SIGKILL", server.log())
    assert wait_until(lambda: server.log().count("joined the network") == 3, JOIN_TIMEOUT)
    carol = one_on_each(server, connect, {1})[1]  # the new worker 1 serves, as one chat
    wait_known(carol, {"bob"}, 5.0)

    # SIGTERM to the parent stops every worker, and none is left behind.
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(STOP_TIMEOUT) == -signal.SIGTERM
    everyone = [pid for found in pids(server).values() for pid in found]
    assert len(everyone) == 3 and not [pid for pid in everyone if alive(pid)], everyone
    log = server.log()
    assert "stopping 2 workers" in log and "did not stop" not in log
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_workers_share_a_tls_port_and_end_with_their_parent(
    redis_server: RedisProcess,
    start_server: ServerFactory,
    tmp_path: Path,
    leftovers: list[ServerProcess],
) -> None:
    from tests.test_client_e2e import _make_certificate

    key, cert, _ = _make_certificate(tmp_path)
    port = f"ssl:0:privateKey={key}:certKey={cert}:interface={HOST}"
    server = start_workers(start_server, redis_server, port=port)
    leftovers.append(server)
    found = re.search(r"groupchat listening on ssl:127\.0\.0\.1:(\d+)", server.log())
    assert found, server.log()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(4):
        raw = socket.create_connection((HOST, int(found[1])), timeout=5.0)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert b"Welcome to groupchat" in tls.recv(4096)

    # The parent is killed outright: its workers see their pipe end and stop by themselves.
    workers = [found[0] for found in pids(server).values()]
    server.proc.kill()
    server.wait_exit(5.0)
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 10.0), workers


def test_workers_share_a_unix_socket_and_a_worker_stopped_alone_is_replaced(
    redis_server: RedisProcess,
    start_server: ServerFactory,
    tmp_path: Path,
    leftovers: list[ServerProcess],
) -> None:
    path = tmp_path / "chat.sock"
    server = start_workers(start_server, redis_server, port=f"unix:{path}")
    leftovers.append(server)

    def greeted() -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5.0)
            sock.connect(str(path))
            return "Welcome to groupchat" in ChatClient(sock, "unix").expect("Welcome")

    assert greeted()

    # Each worker in turn stops cleanly (SIGTERM) and is replaced; the socket keeps working.
    def restarted(number: int) -> bool:
        return len(pids(server)[number]) == 2

    for number in (1, 2):
        os.kill(pids(server)[number][0], signal.SIGTERM)
        assert wait_until(functools.partial(restarted, number), 5.0), server.log()
    assert wait_until(lambda: server.log().count("joined the network") == 4, JOIN_TIMEOUT)
    assert path.exists()
    assert all(greeted() for _ in range(4))
    server.stop()
    assert not path.exists()  # the parent removes it


def test_workers_without_a_backplane_are_refused_in_one_line(tmp_path: Path) -> None:
    argv = [*twistd_command(), "-n", "--pidfile=", "groupchat", "--workers", "2"]
    done = subprocess.run(argv, cwd=tmp_path, env=server_env(), capture_output=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 1
    message = done.stderr.decode().strip()
    assert message.startswith("twistd groupchat: error: --workers 2 needs --backplane")
    assert len(message.splitlines()) == 1


def test_the_web_door_is_shared_by_the_workers_too(
    redis_server: RedisProcess,
    start_server: ServerFactory,
    connect: ClientFactory,
    leftovers: list[ServerProcess],
) -> None:
    server = start_workers(start_server, redis_server, "--web", f"tcp:0:interface={HOST}")
    leftovers.append(server)
    assert server.log().count("groupchat web client at http://") == 1  # the parent's
    webs = [WsClient(server.web_port(), f"web{i}") for i in range(4)]
    for web in webs:
        web.expect_type("welcome")
    served = set(re.findall(r"\[worker (\d) \S+ChatWebSocket#info\] connect", server.log()))
    nc = connect(server, "nc")
    set_nick(nc, "ncat")
    nc.say("/join #both")
    for i, web in enumerate(webs):
        web.say(f"/nick web{i}")
        web.say("/join #both")
        web.expect_type("current", room="#both", timeout=JOIN_TIMEOUT)
    webs[0].say("across workers")
    nc.expect("[#both] <web0> across workers")
    for web in webs[1:]:
        assert web.expect_type("message", nick="web0")["text"] == "across workers"
    assert served <= {"1", "2"} and served
