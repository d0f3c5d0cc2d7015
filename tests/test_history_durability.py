"""History durability end to end: the real twistd killed with SIGKILL, and run out of disk.

The store writes its pending batch every ``FLUSH_EVERY`` (0.2 s): a SIGKILL may lose what
was said in that last interval, nothing older, and never a line in the middle of the
history; a disk that refuses writes costs the history, never the chat, and is
logged as one error, not one a second.

The test reads the server's SQLite file itself, read-only and in short transactions, to
know what the server has written; it never writes to it.
"""

from __future__ import annotations

import json
import resource
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from twisted.internet.task import Clock

from tests.e2e_support import (
    HOST,
    STOP_TIMEOUT,
    ChatClient,
    ClientFactory,
    ServerFactory,
    ServerProcess,
    server_env,
    set_nick,
    twistd_command,
    wait_until,
)
from twisted_chat.history.store import FLUSH_EVERY, stored_lines

FLUSH_INTERVAL = FLUSH_EVERY  # SQLiteHistory's default, which the server uses
# A line appended just after a flush is written by the next one, a flush interval later,
# plus the time the writer thread takes; this is the allowance for that write, generous
# for a loaded CI machine.
WRITE_SLACK = 0.5
FLUSHED_WITHIN = 3.0  # how long the test waits for the writer to show a line in the file
# No line rate limit gets in the way of a test that talks fast.
FAST = ("--rate", "10000", "--burst", "10000", "--byte-rate", "100000000")

Row = tuple[int, str, str, str, str]  # id, room, kind, nick, text


def stored(path: Path) -> list[Row]:
    """Every row of the history file, by id; read-only, one short read transaction."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    try:
        return [(e.id, e.room, e.kind, e.nick, e.text) for e in stored_lines(db)]
    finally:
        db.close()


def join(client: ChatClient, room: str) -> None:
    client.say(f"/join {room}")
    client.expect(f"*** Now talking in {room}")


def json_history(client: ChatClient, room: str) -> list[dict[str, Any]]:
    """Switch ``client`` to JSON, join ``room`` and return the history items it is shown
    (checking they come between the join and the ``current`` event)."""
    client.say("/format json")
    client.expect('"type":"welcome"')
    client.say(f"/join {room}")
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] != "current":
        events.append(json.loads(client.expect(lambda line: line.startswith("{"))))
    kinds = [e["type"] for e in events]
    assert kinds in (["join", "members", "current"], ["join", "members", "history", "current"])
    return [item for e in events if e["type"] == "history" for item in e["items"]]


# -- SIGKILL -----------------------------------------------------------------------------


def test_sigkill_loses_at_most_the_last_flush_interval(
    start_server: ServerFactory, connect: ClientFactory, tmp_path: Path
):
    path = tmp_path / "history.sqlite3"
    options = ("--history", str(path), "--history-replay", "200", *FAST)
    server = start_server(*options)
    alice = connect(server, "alice")
    set_nick(alice, "alice")
    join(alice, "#tea")

    sent: list[str] = []
    sent_at: dict[str, float] = {}

    def say(text: str) -> None:
        sent_at[text] = time.monotonic()
        sent.append(text)
        alice.say(text)

    for i in range(30):
        say(f"early {i}")
    alice.barrier()  # the server has appended them all (in memory)
    assert wait_until(lambda: len(stored(path)) == 30, FLUSHED_WITHIN), stored(path)
    flushed = stored(path)
    assert [r[4] for r in flushed] == sent  # a whole batch, in order
    for i in range(5):
        say(f"late {i}")
    alice.barrier()  # appended too: only the writer may not have seen them yet
    killed_at = time.monotonic()
    server.proc.kill()
    assert server.wait_exit(STOP_TIMEOUT) == -signal.SIGKILL

    survived = stored(path)  # what SQLite recovers from the file and its WAL
    texts = [r[4] for r in survived]
    assert texts == sent[: len(texts)], "the file holds a prefix of what was said, in order"
    assert survived[: len(flushed)] == flushed, "what was written before the kill stays"
    ids = [r[0] for r in survived]
    assert ids == sorted(set(ids))
    assert {(r[1], r[2], r[3]) for r in survived} == {("#tea", "message", "alice")}
    lost = sent[len(texts) :]
    assert all(t.startswith("late") for t in lost), lost
    for text in lost:  # only the last flush interval is lost
        assert killed_at - sent_at[text] < FLUSH_INTERVAL + WRITE_SLACK, text

    again = start_server(*options)
    bob = connect(again, "bob")
    set_nick(bob, "bob")
    items = json_history(bob, "#tea")
    assert [(i["id"], i["kind"], i["nick"], i["text"]) for i in items] == [
        (r[0], r[2], r[3], r[4]) for r in survived
    ], "replayed: everything in the file, once each, in order"

    bob.say("after the restart")
    bob.barrier()
    assert wait_until(lambda: len(stored(path)) == len(survived) + 1, FLUSHED_WITHIN)
    (new,) = stored(path)[len(survived) :]
    assert new[3:] == ("bob", "after the restart")
    assert new[0] > max(ids), "the restarted server numbers on above the old lines"
    again.stop()
    assert "#error]" not in server.log() + again.log()


# -- a full disk -------------------------------------------------------------------------

# The file-size limit the server runs under: above the SQLite file as --history creates it
# (16 KiB) and its shared-memory index (32 KiB, which SQLite grows by writing into it, so
# a smaller limit fails every read too), below what a few seconds of long lines make its
# write-ahead log grow to.
FSIZE_LIMIT = 64 * 1024
LONG = "x" * 1500


def _pump(source: IO[bytes], log_path: Path) -> None:
    with open(log_path, "ab") as log:
        for line in iter(source.readline, b""):
            log.write(line)
            log.flush()


@pytest.fixture
def start_limited(tmp_path: Path) -> Iterator[Any]:
    """``start_limited(fsize, *options)``: a server (as ``start_server`` starts them) whose
    files may not grow past ``fsize`` bytes.

    RLIMIT_FSIZE holds for every regular file the process writes, a descriptor it
    inherited included: with ``start_server``'s log file as its stdout, the server's log
    would be cut off at the limit too (and a print past it fails with EFBIG). So its
    output goes to a pipe, which the limit does not apply to, and a thread here copies it
    to the log file, written by this process, which has no such limit. What is left under
    the limit is the history file (and the port file, 20 bytes).
    """
    started: list[tuple[ServerProcess, threading.Thread]] = []

    def start(fsize: int, *options: str) -> ServerProcess:
        def limit() -> None:  # in the child, before exec
            # The soft limit only: the hard one stays, so the test can lift it later.
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, hard))
            # Past the limit a write raises SIGXFSZ, which kills by default; ignored, the
            # write fails with EFBIG instead, as on a full disk. (Python ignores it at
            # startup anyway; this does not depend on that.)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

        workdir = tmp_path / f"limited{len(started)}"
        workdir.mkdir()
        port_file = workdir / "port"
        argv = [*twistd_command(), "-n", "--pidfile=", "groupchat"]
        argv += ["--port", f"tcp:0:interface={HOST}", "--port-file", str(port_file), *options]
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,
        )
        assert proc.stdout is not None
        log_path = workdir / "server.log"
        pump = threading.Thread(target=_pump, args=(proc.stdout, log_path), daemon=True)
        pump.start()
        server = ServerProcess(proc, workdir, log_path, port_file)
        started.append((server, pump))
        server.wait_listening()
        return server

    yield start
    for server, pump in started:
        server.stop()
        pump.join(STOP_TIMEOUT)
        assert server.proc.stdout is not None
        server.proc.stdout.close()


def failed_writes(log: str) -> list[str]:
    return [line for line in log.splitlines() if "history write to" in line]


def test_a_full_disk_costs_the_history_not_the_chat(
    start_limited: Any, connect: ClientFactory, tmp_path: Path
):
    path = tmp_path / "history.sqlite3"
    server = start_limited(FSIZE_LIMIT, "--history", str(path), *FAST)
    alice, bob = connect(server, "alice"), connect(server, "bob")
    set_nick(alice, "alice")
    set_nick(bob, "bob")
    join(alice, "#tea")
    join(bob, "#tea")

    # Talk until the writer has failed, then on for more than two flush intervals (more
    # failing writes, logged at most once a minute), each line delivered live and each
    # heartbeat answered meanwhile.
    said = 0
    deadline = time.monotonic() + 10.0
    failed_at: float | None = None
    while failed_at is None or time.monotonic() < failed_at + 2.5:
        assert time.monotonic() < deadline, f"no failed writes after {said} lines:\n{server.log()}"
        alice.say(f"line {said} {LONG}")
        assert bob.expect(f"<alice> line {said} ").endswith(LONG)
        alice.barrier()
        said += 1
        if failed_at is None and failed_writes(server.log()):
            failed_at = time.monotonic()
    assert server.proc.poll() is None

    # It goes on: a newcomer joins and hears the room, the others hear it.
    carol = connect(server, "carol")
    set_nick(carol, "carol")
    join(carol, "#tea")
    alice.expect("*** [#tea] carol joined")
    carol.say("still here?")
    alice.expect("<carol> still here?")
    bob.expect("<carol> still here?")
    for client in (alice, bob, carol):
        client.barrier()

    log = server.log()
    errors = [line for line in log.splitlines() if "#error]" in line]
    assert len(errors) == 1, log
    assert "history write to" in errors[0] and "history unavailable" in errors[0]
    assert len(failed_writes(log)) == 1, log  # the next report would be a minute on
    assert "Traceback" not in log

    # Room again (the limit lifted from outside, as an operator frees disk space): the
    # next write succeeds, says so once, and lines are kept again.
    _, hard = resource.prlimit(server.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (hard, hard))
    alice.say("room again")
    bob.expect("<alice> room again")
    assert wait_until(lambda: "room again" in [r[4] for r in stored(path)], FLUSHED_WITHIN)
    assert wait_until(lambda: "is writable again" in server.log(), FLUSHED_WITHIN)
    server.stop()
    log = server.log()
    assert log.count("is writable again") == 1
    assert len([line for line in log.splitlines() if "#error]" in line]) == 1, log
    assert "Server Shut Down." in log


# -- ids across a crash ------------------------------------------------------------------


def test_an_id_shown_before_a_crash_is_not_given_to_another_line(tmp_path: Path):
    # Entry's documented promise: ids are "increasing, unique across restarts", and the
    # JSON history event shows them to clients. The store is abandoned as SIGKILL leaves
    # it: two lines appended and shown by recent() (as a joiner's history would), never
    # written.
    from tests.test_history_store import make, result

    path = tmp_path / "history.sqlite3"
    clock = Clock()
    crashed = make(path, clock)
    for i in range(3):
        crashed.append("#tea", float(i), "message", "alice", f"kept {i}")
    clock.advance(FLUSH_INTERVAL)
    crashed.append("#tea", 3.0, "message", "alice", "lost 0")
    crashed.append("#tea", 4.0, "message", "alice", "lost 1")
    shown = {e.id: e.text for e in crashed.recent("#tea", 200)[0]}
    assert [e[4] for e in stored(path)] == ["kept 0", "kept 1", "kept 2"]
    assert crashed._lock_file is not None
    crashed._lock_file.close()  # the killed process's lock goes with it

    restarted = make(path, Clock())
    new = restarted.append("#tea", 5.0, "message", "bob", "after the restart")
    result(restarted.close())
    assert new not in shown, f"id {new} was shown for {shown[new]!r} before the crash"
