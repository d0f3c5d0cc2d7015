"""End-to-end tests of the server: the real ``twistd -n groupchat``, real loopback sockets.

Every wait is bounded; "never received" is checked after a ``/ping`` barrier (see
``tests/e2e_support.py``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest

from tests.e2e_support import (
    EXPECT_TIMEOUT,
    HOST,
    ChatClient,
    ClientFactory,
    ServerFactory,
    server_env,
    set_nick,
    twistd_command,
    wait_until,
)

# -- tests -------------------------------------------------------------------------------


def test_three_users_chat_in_rooms(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = start_server("--heartbeat-interval", "7", "--heartbeat-timeout", "21")
    alice, bob, carol = (connect(server, label) for label in ("alice", "bob", "carol"))

    for client in (alice, bob, carol):
        assert re.fullmatch(r"guest\d+", client.nick), client.nick
        heartbeat = next(line for line in client.lines_so_far if "Heartbeat" in line)
        assert "every 7 s" in heartbeat and "after 21 s of silence" in heartbeat, heartbeat
    assert len({alice.nick, bob.nick, carol.nick}) == 3

    old_alice = alice.nick
    for client, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        set_nick(client, nick)
    carol.expect(f"*** {old_alice} is now known as alice")  # everyone in #lobby is told

    alice.say("/join #room")
    alice.expect("*** [#room] alice joined (1 here)")
    alice.expect("*** Now talking in #room")
    bob.say("/join #room")
    bob.expect("*** [#room] 2 here: @alice, bob")  # alice made it: its operator
    alice.expect("*** [#room] bob joined (2 here)")

    alice.say("hello room")
    assert bob.expect("hello room") == "[#room] <alice> hello room"
    carol.say("hi lobby")  # alice and bob are still in #lobby as well
    assert alice.expect("hi lobby") == "[#lobby] <carol> hi lobby"
    assert bob.expect("hi lobby") == "[#lobby] <carol> hi lobby"

    for client in (alice, bob, carol):
        client.barrier()
    assert carol.count("hello room") == 0, carol.lines_so_far
    assert carol.count(lambda line: line.startswith(("[#room]", "*** [#room]"))) == 0
    assert alice.count("hello room") == 0  # a speaker does not get an echo
    assert carol.count("hi lobby") == 0


def test_private_messages(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = start_server()
    alice, bob, carol = (connect(server, label) for label in ("alice", "bob", "carol"))
    for client, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        set_nick(client, nick)

    alice.say("/msg bob the secret plan")
    assert bob.expect("secret") == "[PM alice -> bob] the secret plan"
    assert alice.expect("secret") == "[PM alice -> bob] the secret plan"

    alice.say("/msg ghost hello?")
    assert alice.expect("!!!").startswith("!!! no-such-nick: ")
    alice.say("/msg bob")
    assert alice.expect("!!!") == "!!! bad-arguments: usage: /msg NICK text"

    for client in (alice, bob, carol):
        client.barrier()
    assert carol.count("secret") == 0 and carol.count("[PM") == 0
    assert bob.count("[PM") == 1 and alice.count("[PM") == 1
    assert bob.count("ghost") == 0


def test_heartbeat_timeout_removes_silent_client(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server(
        "--heartbeat-interval", "0.5",
        "--heartbeat-timeout", "1.5",
        "--sweep-interval", "0.2",
        "--idle-warning", "0.5",
    )  # fmt: skip
    silent = connect(server, "silent")
    active = connect(server, "active")
    assert any("every 0.5 s; after 1.5 s" in line for line in silent.lines_so_far)
    started = time.monotonic()

    notice = f"*** [#lobby] {silent.nick} timed out"
    seen = None
    while seen is None:  # ping every 0.3 s until the silent one is gone
        assert time.monotonic() - started < 8, active.lines_so_far
        active.say("/ping alive")
        seen = active.poll(notice, timeout=0.3)
    assert re.fullmatch(re.escape(notice) + r" \(no heartbeat for \d+\.\d s\)", seen), seen

    warning = silent.expect("You have been silent for")
    assert warning.startswith("*** "), warning
    bye = silent.expect("*** Disconnected: no heartbeat for")
    silent.expect_closed()
    lines = silent.lines_so_far
    assert lines.index(warning) < lines.index(bye) == len(lines) - 1

    active.barrier()  # still connected, and nothing more about the silent one
    assert active.count(f"{silent.nick} timed out") == 1
    assert active.count(silent.nick) == 2, active.lines_so_far  # joined, timed out
    assert active.count("You have been silent") == 0


def test_quit_with_reason(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = start_server()
    a, b, quitter = (connect(server, label) for label in ("a", "b", "quitter"))

    quitter.say("/quit gone fishing")
    expected = f"*** [#lobby] {quitter.nick} quit (gone fishing)"
    assert a.expect("quit (") == expected
    assert b.expect("quit (") == expected
    assert quitter.expect("*** Disconnected") == "*** Disconnected: you quit"
    quitter.expect_closed()

    about_quitter = quitter.nick + " "
    for client in (a, b):
        client.barrier()
        assert client.count(lambda line: line == expected) == 1, client.lines_so_far
        assert client.count(about_quitter) == 2, client.lines_so_far  # joined, quit
    assert quitter.count("quit (") == 0  # the quitter is told "bye", not its own notice


def test_lf_and_crlf_clients(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = start_server()
    lf, crlf = connect(server, "lf"), connect(server, "crlf")
    lf.send(b"/nick lf_user\n")
    lf.expect("is now known as lf_user")
    crlf.send(b"/nick crlf_user\r\n")
    crlf.expect("is now known as crlf_user")

    lf.send(b"from lf\n")
    assert crlf.expect("from lf") == "[#lobby] <lf_user> from lf"
    crlf.send(b"from crlf\r\n")
    assert lf.expect("from crlf") == "[#lobby] <crlf_user> from crlf"

    crlf.send(b"bare\rreturn\r\n")
    lf.send(b"carriage\rin\rlf\r\r\n")
    lf.expect("return")
    crlf.expect("lf")
    for client in (lf, crlf):
        client.barrier()
        said = [line for line in client.raw_lines if line.startswith(b"[#lobby]")]
        assert said, client.lines_so_far
        for line in said:
            assert b"\r" not in line, line
        # The server ends every line with \r\n and sends no other \r.
        assert re.search(rb"\r(?!\n)", bytes(client.raw)) is None
        assert re.search(rb"(?<!\r)\n", bytes(client.raw)) is None


def test_telnet_negotiation_is_filtered_and_refused(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server()
    telnet, other = connect(server, "telnet"), connect(server, "other")

    telnet.send(b"\xff\xfd\x01\xff\xfb\x03hello\r\n")
    assert other.expect("hello") == f"[#lobby] <{telnet.nick}> hello"
    telnet.barrier()
    assert b"\xff\xfc\x01" in telnet.raw  # IAC WONT ECHO
    assert b"\xff\xfe\x03" in telnet.raw  # IAC DONT SUPPRESS-GO-AHEAD

    # A subnegotiation (NAWS), an escaped 0xFF, and a command split over writes.
    telnet.send(b"wi\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0de\xff\xff!\xff")
    telnet.send(b"\xfb")
    telnet.send(b"\x18 ok\r\n")
    assert other.expect(" ok") == f"[#lobby] <{telnet.nick}> wide! ok"
    telnet.barrier()
    assert b"\xff\xfe\x18" in telnet.raw  # IAC DONT TERMINAL-TYPE

    telnet.say("still talking")
    assert other.expect("still talking") == f"[#lobby] <{telnet.nick}> still talking"
    other.barrier()
    assert b"\xff" not in other.raw


def test_over_long_lines(start_server: ServerFactory, connect: ClientFactory) -> None:
    # Every byte counts against --byte-rate: lift it, the framing is what is tested here.
    server = start_server("--byte-rate", "1048576")
    sender, other = connect(server, "sender"), connect(server, "other")
    limit_error = "!!! line-too-long: line longer than 2048 bytes; it was dropped"

    sender.send(b"y" * 2048 + b"\r\n")  # exactly at the limit: accepted
    assert other.expect("yyyy").endswith("> " + "y" * 2048)

    sender.send(b"x" * 2049 + b"\n")
    assert sender.expect("!!!") == limit_error
    sender.send(b"after long\n")
    other.expect("after long")

    flood = b"z" * (1024 * 1024)  # no line ending at all
    sender.send(flood)
    sender.send(b" tail of the flood\n")
    sender.send(b"after flood\n")
    assert other.expect("after flood") == f"[#lobby] <{sender.nick}> after flood"
    assert sender.expect("!!!") == limit_error

    for client in (sender, other):
        client.barrier()
    assert sender.count("line-too-long") == 2
    assert other.count("xxx") == 0 and other.count("zzz") == 0 and other.count("tail") == 0
    assert not sender.eof and not other.eof


def test_invalid_utf8(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = start_server()
    sender, other = connect(server, "sender"), connect(server, "other")

    sender.send(b"caf\xe9\n")
    assert sender.expect("!!!").startswith("!!! invalid-utf8: ")
    line = other.expect("caf")
    assert line == f"[#lobby] <{sender.nick}> caf\ufffd"
    assert "caf\ufffd".encode() in other.raw

    # A character split across two writes is decoded per line, so it survives.
    sender.send(b"caf\xc3")
    sender.send(b"\xa9 ok\n")
    assert other.expect("> caf") == f"[#lobby] <{sender.nick}> café ok"
    sender.barrier()
    assert sender.count("invalid-utf8") == 1
    assert not sender.eof


def test_escape_sequences_and_bidi_are_removed(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server()
    evil, other = connect(server, "evil"), connect(server, "other")
    set_nick(other, "other")

    evil.send(b"\x1b[2J\x1b]0;title\x07hi\x1b[31mred\n")
    assert other.expect("red") == f"[#lobby] <{evil.nick}> hired"
    evil.send("abc\u202edef\u2066ghi\n".encode())
    assert other.expect("abc") == f"[#lobby] <{evil.nick}> abcdefghi"
    evil.send("/me waves\x1b[1A\u009b2K\n".encode())
    assert other.expect("waves") == f"[#lobby] * {evil.nick} waves"
    evil.send("/msg other psst\x1b[H\u202e\n".encode())
    assert other.expect("psst") == f"[PM {evil.nick} -> other] psst"
    evil.send("/quit bye\x1b[2J\u202e!\n".encode())
    assert other.expect("quit (") == f"*** [#lobby] {evil.nick} quit (bye!)"

    other.barrier()
    raw = bytes(other.raw)
    assert b"\x1b" not in raw
    assert "\u202e".encode() not in raw and "\u2066".encode() not in raw
    assert "\u009b".encode() not in raw


def test_json_rendering(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = start_server("--heartbeat-interval", "4", "--heartbeat-timeout", "12")
    viewer, talker = connect(server, "viewer"), connect(server, "talker")
    viewer.expect(f"*** [#lobby] {talker.nick} joined")
    viewer.barrier()
    first_json = len(viewer.raw_lines)

    viewer.say("/format json")
    welcome = json.loads(viewer.expect('"type":"welcome"'))
    assert welcome["heartbeat"]["interval"] == 4
    assert welcome["heartbeat"]["timeout"] == 12
    assert welcome["nick"] == viewer.nick and welcome["format"] == "json"

    talker.say("hello json")
    message = json.loads(viewer.expect("hello json"))
    assert {k: message[k] for k in ("type", "room", "nick", "text")} == {
        "type": "message",
        "room": "#lobby",
        "nick": talker.nick,
        "text": "hello json",
    }
    talker.say("/msg " + viewer.nick + " private")
    assert json.loads(viewer.expect("private"))["type"] == "private"
    viewer.say("/nosuchcommand")
    assert json.loads(viewer.expect("unknown-command"))["type"] == "error"
    viewer.say("/who")
    assert json.loads(viewer.expect('"type":"members"'))["members"] == [
        viewer.nick,
        talker.nick,
    ]
    viewer.barrier()

    json_lines = viewer.lines_so_far[first_json:]
    assert len(json_lines) >= 6
    for line in json_lines:
        event = json.loads(line)
        assert isinstance(event, dict) and "type" in event, line
        assert isinstance(event["ts"], int | float), line
    assert talker.count(lambda line: line.startswith("{")) == 0  # talker is still text


def test_sigterm_shuts_down_cleanly(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = start_server()
    reader = connect(server, "reader")
    # Never read from this one after its greeting (it asks for nothing more).
    idle = ChatClient.connect(server.port, "idle")
    try:
        reader.expect(lambda line: "joined (2 here)" in line)

        server.proc.send_signal(signal.SIGTERM)
        notice = reader.expect("shutting down")
        assert notice == "*** Server shutting down: the server is stopping"
        reader.expect_closed()
        assert server.wait_exit(10) in (-signal.SIGTERM, 0)
    finally:
        idle.close()
    log = server.log()
    assert "Traceback" not in log, log
    assert "Server Shut Down" in log, log


def test_abrupt_disconnects_are_announced_once(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server()
    a, b = connect(server, "a"), connect(server, "b")
    dropper, resetter = connect(server, "dropper"), connect(server, "resetter")
    for client in (a, b):
        client.expect(f"*** [#lobby] {resetter.nick} joined")

    dropper.barrier()  # unread data at close() would make the kernel send an RST
    dropper.send(b"partial")
    dropper.close()
    resetter.reset()
    for client in (a, b):
        lost_fin = client.expect(f"*** [#lobby] {dropper.nick} lost connection")
        assert lost_fin.endswith("(connection closed)"), lost_fin
        lost_rst = client.expect(f"*** [#lobby] {resetter.nick} lost connection")
        assert lost_rst.endswith("(connection reset)"), lost_rst

    a.say("still here")
    assert b.expect("still here") == f"[#lobby] <{a.nick}> still here"
    b.say("me too")
    assert a.expect("me too") == f"[#lobby] <{b.nick}> me too"
    for client in (a, b):
        client.barrier()
        for gone in (dropper, resetter):
            assert client.count(f"{gone.nick} lost connection") == 1, client.lines_so_far
            assert client.count(f"{gone.nick} quit") == 0


def test_port_in_use_and_bad_port(start_server: ServerFactory) -> None:
    first = start_server()
    second = start_server(port=f"tcp:{first.port}:interface={HOST}", wait=False)
    assert second.wait_exit(15) == 1
    log = second.log()
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if "cannot listen" in line]
    assert len(errors) == 1, log
    assert str(first.port) in errors[0] and "in use" in errors[0], errors
    assert first.proc.poll() is None  # the first one is unharmed

    bad = start_server(port="nonsense:1", wait=False)
    assert bad.wait_exit(15) == 1
    log = bad.log()
    assert "Traceback" not in log, log
    assert "nonsense:1" in log, log
    assert re.search(r"usage|error", log, re.IGNORECASE), log


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_client_that_never_reads_cannot_grow_server_memory_without_bound(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    # Input limits lifted: this test is about output to a reader that stopped.
    server = start_server("--rate", "1e9", "--burst", "1e9", "--byte-rate", "1e12")
    if not Path(f"/proc/{server.pid}/status").exists():
        pytest.skip("needs /proc to read the server's memory use")
    sender = connect(server, "sender")
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep the kernel out of it
    stalled.settimeout(EXPECT_TIMEOUT)
    try:
        stalled.connect((HOST, server.port))  # and never recv() on it
        joined = sender.expect("joined (2 here)")
        stalled_nick = joined.split()[2]
        sender.barrier()
        before = _rss_bytes(server.pid)

        megabyte = (b"x" * 999 + b"\n") * 1000
        for _ in range(48):
            sender.send(megabyte)
        sender.barrier()  # every line has been fanned out by now
        grown = _rss_bytes(server.pid) - before
        dropped = sender.count(lambda line: stalled_nick in line and "joined" not in line)
        assert dropped or grown < 16 * 1024 * 1024, (
            f"{stalled_nick} never read 48 MB sent to it, was not dropped, and the server "
            f"grew by {grown / 2**20:.0f} MB"
        )
    finally:
        stalled.close()


def _gone(path: Path) -> bool:
    return not path.exists()


def _daemon(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``twistd groupchat`` without ``-n``: the parent returns once the child started."""
    pidfile = tmp_path / "twistd.pid"
    argv = [
        *twistd_command(),
        "--pidfile", str(pidfile),
        "--logfile", str(tmp_path / "twistd.log"),
        "groupchat", *options,
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=tmp_path, env=server_env(), capture_output=True, text=True, timeout=30
    )
    return done, pidfile


def test_daemon_mode_reports_a_port_it_cannot_listen_on(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    first = start_server()
    for case, port, why in (
        ("in-use", f"tcp:{first.port}:interface={HOST}", "Address already in use"),
        # An address this machine does not have (TEST-NET-1).
        ("foreign", "tcp:0:interface=192.0.2.1", "Cannot assign requested address"),
    ):
        folder = tmp_path / case
        folder.mkdir()
        done, pidfile = _daemon(folder, "--port", port)
        assert done.returncode == 1, (case, done)
        assert f"groupchat: {why}: cannot listen on" in done.stderr, (case, done.stderr)
        # The daemon reports to its parent first, then removes its pidfile and writes
        # the log as it exits.
        assert wait_until(partial(_gone, pidfile), 10), case
        log = folder / "twistd.log"
        logged = lambda log=log: "cannot listen on" in log.read_text()  # noqa: E731
        assert wait_until(logged, 10), log.read_text()


def test_daemon_mode_starts_and_serves(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    done, pidfile = _daemon(
        tmp_path, "--port", f"tcp:0:interface={HOST}", "--port-file", str(port_file)
    )
    assert done.returncode == 0, done
    pid = int(pidfile.read_text())
    try:
        assert wait_until(port_file.exists, 15), (tmp_path / "twistd.log").read_text()
        port = int(port_file.read_text().strip().rsplit(":", 1)[1])
        client = ChatClient.connect(port, "daemon")
        client.expect("Welcome to groupchat")
        client.close()
    finally:
        os.kill(pid, signal.SIGTERM)  # the daemon we started, by the PID it wrote
        wait_until(lambda: not pidfile.exists(), 10)
