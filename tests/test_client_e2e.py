"""End-to-end tests of ``python -m twisted_chat.client`` against the real server.

The client runs as a subprocess (piped, listen, or on a pseudo-terminal); observers are
plain socket clients from ``tests/e2e_support.py``.  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.e2e_support import (
    HOST,
    ChatClient,
    ClientFactory,
    ServerFactory,
    ServerProcess,
    server_env,
    set_nick,
)

CLIENT = [sys.executable, "-m", "twisted_chat.client"]


class ListenProcess:
    """A client subprocess whose stdout lines are collected by a thread."""

    def __init__(self, argv: list[str], stdin: bytes | None = None, hold: bool = False) -> None:
        """``hold``: give the client a stdin that stays open (a pipe nobody writes to)."""
        self.proc = subprocess.Popen(
            argv,
            env=server_env(),
            stdin=subprocess.PIPE if stdin is not None or hold else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        # stderr (errors, connection news) is read here only once a test asks for a line
        # of it: most tests read the whole of it when the client has ended.
        self.errors: queue.Queue[str] | None = None
        threading.Thread(
            target=self._pump, args=(self.proc.stdout, self.lines), daemon=True
        ).start()
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()

    @staticmethod
    def _pump(stream: IO[bytes] | None, into: queue.Queue[str]) -> None:
        assert stream is not None
        for raw in stream:
            into.put(raw.decode("utf-8", "replace").rstrip("\n"))

    def expect_stderr(self, text: str, timeout: float = 10.0) -> str:
        if self.errors is None:
            self.errors = queue.Queue()
            threading.Thread(
                target=self._pump, args=(self.proc.stderr, self.errors), daemon=True
            ).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.errors.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} on the client's stderr") from None
            if text in line:
                return line

    def expect(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if text in line:
                    self.seen.remove(line)
                    return line
            try:
                self.seen.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {text!r} in client output: {self.seen!r}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def clients() -> Iterator[list[ListenProcess]]:
    started: list[ListenProcess] = []
    yield started
    for client in started:
        client.stop()


def spawn(
    started: list[ListenProcess],
    server: ServerProcess | int | str,
    *args: str,
    stdin: bytes | None = None,
) -> ListenProcess:
    """A client of ``server``: a running server, a port, or an endpoint description."""
    if isinstance(server, str):
        target = server
    else:
        target = f"{HOST}:{server if isinstance(server, int) else server.port}"
    client = ListenProcess([*CLIENT, "--server", target, *args], stdin=stdin)
    started.append(client)
    return client


def wait_member(observer: ChatClient, room: str, nick: str, timeout: float = 15.0) -> None:
    """Wait until ``nick`` is in ``room`` (the client connects asynchronously).

    The observer joins the room: the member list it gets is a snapshot, and any later
    arrival is announced to it, so there is nothing to poll.
    """
    observer.say(f"/join {room}")
    observer.say(f"/who {room}")
    members = observer.expect(lambda text: text.startswith(f"*** [{room}] ") and "here:" in text)
    if nick in [n.lstrip("@") for n in members.split("here:", 1)[1].strip().split(", ")]:
        return
    arrivals = [f"*** [{room}] {nick} joined"]
    if room == "#lobby":  # a client is seated in #lobby as a guest, then renames itself
        arrivals.append(f" is now known as {nick}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if observer.poll(lambda text: any(a in text for a in arrivals), 0.3) is not None:
            return
        observer.barrier()  # keep the observer's own heartbeat going
    raise AssertionError(f"{nick} never appeared in {room}")


def test_piped_mode_delivers_every_line_and_exits_zero(
    start_server: ServerFactory, connect: ClientFactory, clients: list[ListenProcess]
) -> None:
    server = start_server()
    bob = connect(server, "bob")
    set_nick(bob, "bob")
    bob.say("/join #ops")
    bob.expect("*** Now talking in #ops")
    before = len(bob.lines_so_far)
    lines = b"build finished\nsecond line\n/me deploys\nno newline at the end"
    ci = spawn(clients, server, "--nick", "ci", "--room", "#ops", stdin=lines)
    assert ci.proc.wait(timeout=20) == 0
    bob.expect("[#ops] <ci> build finished")
    bob.expect("[#ops] <ci> second line")
    bob.expect("[#ops] * ci deploys")
    bob.expect("[#ops] <ci> no newline at the end")
    bob.expect("*** [#ops] ci quit")  # a clean quit, not a timeout or lost connection
    bob.barrier()
    assert bob.count("ci lost connection") == 0 and bob.count("ci timed out") == 0
    # Seen once, under its name, in its room: no guest in #lobby, no rename.
    about_ci = [line for line in bob.lines_so_far if re.search(r"(<| |\* )ci\b", line)]
    assert about_ci == [
        "*** [#ops] ci joined (2 here)",
        "[#ops] <ci> build finished",
        "[#ops] <ci> second line",
        "[#ops] * ci deploys",
        "[#ops] <ci> no newline at the end",
        "*** [#ops] ci quit",
    ], about_ci
    assert not any("guest" in line for line in bob.lines_so_far[before:]), bob.lines_so_far


def test_sigterm_while_piping_quits_cleanly_without_a_traceback(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server()
    bob = connect(server, "bob")
    set_nick(bob, "bob")
    ci = ListenProcess([*CLIENT, "--server", f"{HOST}:{server.port}", "--nick", "ci"], hold=True)
    try:
        ci.expect("connected as ci")  # connected, named, still reading its input
        ci.proc.terminate()
        ci.proc.wait(timeout=20)  # bounded; its stderr is read once it has ended
        assert ci.proc.stderr is not None
        err = ci.proc.stderr.read().decode("utf-8", "replace")
    finally:
        ci.stop()
    assert "Traceback" not in err and "Error" not in err, err
    bob.expect("*** [#lobby] ci quit")  # it said goodbye on the way out


def test_piped_mode_exits_one_when_the_server_is_unreachable(
    clients: list[ListenProcess], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: bind, learn it, close
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    client = spawn(clients, port, "--connect-timeout", "2", stdin=b"hello\n")
    assert client.proc.wait(timeout=20) == 1
    assert time.monotonic() - start < 15
    assert client.proc.stderr is not None
    err = client.proc.stderr.read().decode().strip().splitlines()
    assert len(err) == 1 and "cannot reach" in err[0], err


def test_client_outlives_a_short_server_heartbeat_timeout(
    start_server: ServerFactory, connect: ClientFactory, clients: list[ListenProcess]
) -> None:
    server = start_server(
        "--heartbeat-interval",
        "0.5",
        "--heartbeat-timeout",
        "1.5",
        "--sweep-interval",
        "0.2",
        "--idle-warning",
        "0.5",
    )
    observer = connect(server, "observer")
    listener = spawn(clients, server, "--listen", "--nick", "quiet")
    wait_member(observer, "#lobby", "quiet")
    deadline = time.monotonic() + 6.0  # four timeouts long
    while time.monotonic() < deadline:
        observer.barrier()  # the observer heartbeats too
        # Bounded wait on the one line this test must never see.
        assert observer.poll("quiet timed out", 0.3) is None
    observer.say("still there?")
    listener.expect(f"[#lobby] <{observer.nick}> still there?")
    assert observer.count("quiet timed out") == 0
    assert listener.proc.poll() is None


def test_client_reconnects_and_rejoins_after_a_server_restart(
    start_server: ServerFactory, connect: ClientFactory, clients: list[ListenProcess]
) -> None:
    server = start_server()
    port = server.port
    listener = spawn(clients, server, "--listen", "--nick", "watcher", "--room", "#ops")
    observer = connect(server, "observer")
    wait_member(observer, "#ops", "watcher")
    server.proc.kill()  # a crash: no shutdown notice
    server.proc.wait(timeout=10)
    observer.close()
    again = start_server(port=f"tcp:{port}:interface={HOST}")
    observer2 = connect(again, "observer2")
    wait_member(observer2, "#ops", "watcher", timeout=30)
    observer2.say("/join #ops")
    observer2.say("welcome back")
    listener.expect(f"[#ops] <{observer2.nick}> welcome back")
    # Said beside "reconnecting", once back: and under which name.
    assert "reconnecting" in listener.expect_stderr("reconnecting")
    assert listener.expect_stderr("reconnected as").startswith(
        "groupchat client: reconnected as watcher"
    )


def _prompt_back(fd: int, buffer: bytearray, after: bytes) -> None:
    """Wait until the prompt is drawn again after ``after``, printed above it."""
    deadline = time.monotonic() + 15.0
    while b"alice>" not in buffer[buffer.rfind(after) :]:
        assert time.monotonic() < deadline, bytes(buffer[-500:])
        if select.select([fd], [], [], 0.1)[0]:
            buffer += os.read(fd, 65536)


def _read_pty(fd: int, buffer: bytearray, until: bytes, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while until not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{until!r} never appeared on the terminal: {bytes(buffer)!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"terminal closed before {until!r}: {bytes(buffer)!r}")
            buffer += chunk


def test_interactive_typing_survives_an_incoming_message(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server()
    bob = connect(server, "bob")
    set_nick(bob, "bob")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the client on a terminal
        env = server_env()
        env["TERM"] = "xterm"
        env["PROMPT_TOOLKIT_NO_CPR"] = "1"
        os.execve(
            sys.executable, [*CLIENT, "--server", f"{HOST}:{server.port}", "--nick", "alice"], env
        )
    screen = bytearray()
    try:
        _read_pty(fd, screen, b"alice>")
        bob.expect("*** [#lobby] alice joined")  # it arrives under its name
        # Type only when the prompt is back, as a person would: each line printed above
        # it puts the terminal in cooked mode for a moment, where keys are the tty's.
        _read_pty(fd, screen, b"now talking in #lobby")
        _prompt_back(fd, screen, b"now talking in #lobby")
        os.write(fd, b"discard me")
        _read_pty(fd, screen, b"discard me")
        os.write(fd, b"\x03")  # Ctrl-C on a half-typed line clears it, and stays
        os.write(fd, b"hello wor")
        _read_pty(fd, screen, b"hello wor")
        bob.say("interrupting you")
        _read_pty(fd, screen, b"interrupting you")
        _prompt_back(fd, screen, b"interrupting you")
        os.write(fd, b"ld\r")
        bob.expect("[#lobby] <alice> hello world")  # the typed line arrived whole
        assert bob.count("discard me") == 0
        os.write(fd, b"\x04")  # Ctrl-D: leave cleanly
        bob.expect("*** [#lobby] alice quit")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = 0
                assert os.waitstatus_to_exitcode(status) == 0, bytes(screen)
                break
            try:
                if select.select([fd], [], [], 0.1)[0]:
                    screen.extend(os.read(fd, 65536))
            except OSError:
                pass
        else:
            raise AssertionError("the client did not exit after Ctrl-D")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_piped_mode_paces_a_long_input_under_the_rate_limit(
    start_server: ServerFactory, connect: ClientFactory, clients: list[ListenProcess]
) -> None:
    server = start_server("--rate", "20", "--burst", "5", "--flood-timeout", "2")
    bob = connect(server, "bob")
    lines = b"".join(b"note %d\n" % i for i in range(60))  # 3 s at the limit: a flood
    ci = spawn(clients, server, "--nick", "ci", "-q", stdin=lines)
    assert ci.proc.wait(timeout=30) == 0
    for i in range(60):
        bob.expect(f"[#lobby] <ci> note {i}")
    bob.expect("*** [#lobby] ci quit")
    assert bob.count("flooding") == 0


def test_piped_mode_exit_status_tells_refused_lines_and_bad_options(
    start_server: ServerFactory, clients: list[ListenProcess]
) -> None:
    server = start_server()
    too_long = spawn(clients, server, "-q", stdin=b"x" * 3000 + b"\nfine\n")
    assert too_long.proc.wait(timeout=20) == 2
    assert too_long.proc.stderr is not None
    err = too_long.proc.stderr.read().decode()
    # Refused by the client, which knows the limit from the welcome: never sent.
    assert "not sent: that line is 3000 bytes, longer than the server's limit of 2048" in err
    assert "line longer than" not in err  # the server's own refusal
    bad_room = spawn(clients, server, "--room", "#bad room", stdin=b"hello\n")
    assert bad_room.proc.wait(timeout=20) == 1
    assert bad_room.proc.stderr is not None
    err = bad_room.proc.stderr.read().decode().strip()
    assert err.startswith("groupchat client:") and "room name" in err and len(err.splitlines()) == 1


def _make_certificate(
    folder: Path, names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = (HOST,)
) -> tuple[Path, Path, Path]:
    """A self-signed certificate (by default for localhost and 127.0.0.1), and a trust
    folder holding it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]
                + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path, trust = folder / "key.pem", folder / "cert.pem", folder / "trust"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    trust.mkdir()
    (trust / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path, trust


def test_tls_end_to_end_with_a_verified_certificate(
    start_server: ServerFactory, clients: list[ListenProcess], tmp_path: Path
) -> None:
    key, cert, trust = _make_certificate(tmp_path)
    server = start_server(port=f"ssl:0:privateKey={key}:certKey={cert}:interface={HOST}")
    trusting = f"tls:localhost:{server.port}:trustRoots={trust}"
    listener = spawn(clients, trusting, "--listen", "--json")
    listener.expect('"type": "welcome"', timeout=20)  # seated before anyone speaks
    sender = spawn(clients, trusting, "--nick", "secure", stdin=b"over tls\n")
    assert sender.proc.wait(timeout=30) == 0
    listener.expect('"text": "over tls"')
    untrusted = spawn(
        clients,
        f"tls:localhost:{server.port}",
        "--connect-timeout",
        "3",
        stdin=b"should not go\n",
    )
    assert untrusted.proc.wait(timeout=30) == 1
    assert untrusted.proc.stderr is not None
    assert "TLS certificate is not trusted" in untrusted.proc.stderr.read().decode()


def test_login_with_a_password_file_and_refusals(
    start_server: ServerFactory,
    connect: ClientFactory,
    clients: list[ListenProcess],
    tmp_path: Path,
) -> None:
    users = tmp_path / "users.txt"
    users.write_text("alice:secret1\nbob:hunter22\n")
    server = start_server("--auth", f"file:{users}")
    watcher = ChatClient.connect(server.port, "watcher")
    watcher.expect("This server needs a login")
    watcher.say("/login bob hunter22")
    watcher.expect("*** Welcome to groupchat 0.1.0, bob!")
    password = tmp_path / "alice.pw"
    password.write_text("secret1\n")
    alice = spawn(
        clients,
        server,
        "--nick",
        "alice",
        "--password-file",
        str(password),
        "-q",
        stdin=b"logged in and talking\n",
    )
    assert alice.proc.wait(timeout=20) == 0
    watcher.expect("[#lobby] <alice> logged in and talking")
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("guess\n")
    refused = spawn(
        clients,
        server,
        "--nick",
        "alice",
        "--password-file",
        str(wrong),
        stdin=b"should not arrive\n",
    )
    assert refused.proc.wait(timeout=20) == 1
    assert refused.proc.stderr is not None
    assert "login refused: wrong name or password" in refused.proc.stderr.read().decode()
    anonymous = spawn(clients, server, stdin=b"nor this\n")
    assert anonymous.proc.wait(timeout=20) == 1
    watcher.barrier()
    assert watcher.count("should not arrive") == 0 and watcher.count("nor this") == 0
    watcher.close()


def _exit_and_stderr(client: ListenProcess, timeout: float) -> tuple[int, list[str]]:
    code = client.proc.wait(timeout=timeout)
    assert client.proc.stderr is not None
    return code, client.proc.stderr.read().decode("utf-8", "replace").strip().splitlines()


def test_piped_mode_with_a_taken_nick_sends_nothing_and_exits_one(
    start_server: ServerFactory, connect: ClientFactory, clients: list[ListenProcess]
) -> None:
    server = start_server()
    frank = connect(server, "frank")
    set_nick(frank, "Frank")
    frank.say("/join #ops")
    frank.expect("*** Now talking in #ops")
    script = spawn(clients, server, "--nick", "frank", "--room", "#ops", stdin=b"deploy done\n")
    code, err = _exit_and_stderr(script, timeout=20)
    assert code == 1
    assert err == [
        "groupchat client: cannot talk as frank: the nickname 'frank' is taken (or looks too "
        "much like one that is); nothing was sent"
    ]
    # Seated in #lobby as a guest by the server, it left cleanly, never reaching #ops.
    quit_line = frank.expect(lambda line: line.startswith("*** [#lobby] guest") and " quit" in line)
    guest = quit_line.split()[2]
    frank.barrier()
    assert frank.count("deploy done") == 0
    assert frank.count(f"*** [#ops] {guest}") == 0, "\n".join(frank.lines_so_far)
    assert frank.count(f"{guest} lost connection") == 0


def test_tls_mistakes_fail_with_one_clear_line(
    start_server: ServerFactory, clients: list[ListenProcess], tmp_path: Path
) -> None:
    key, cert, trust = _make_certificate(tmp_path, names=("chat.example.org",), ips=())
    tls = start_server(port=f"ssl:0:privateKey={key}:certKey={cert}:interface={HOST}")
    # A certificate for another name: permanent, so no retrying for the connect timeout.
    start = time.monotonic()
    wrong_name = spawn(
        clients,
        f"tls:localhost:{tls.port}:trustRoots={trust}",
        "--connect-timeout",
        "20",
        stdin=b"should not go\n",
    )
    code, err = _exit_and_stderr(wrong_name, timeout=20)
    assert code == 1
    assert time.monotonic() - start < 10
    assert err == [
        "groupchat client: the server's TLS certificate is not valid for localhost "
        "(it is for chat.example.org); check the host name in --server"
    ]
    # A plain client on the TLS port: the server closes without a word.
    plain = spawn(clients, tls, "--connect-timeout", "2", stdin=b"should not go\n")
    code, err = _exit_and_stderr(plain, timeout=20)
    assert code == 1
    assert err == [
        f"groupchat client: cannot reach {HOST}:{tls.port} (the server closed the connection "
        f"before greeting us; is it a TLS port? try --server tls:{HOST}:{tls.port}) within 2 s"
    ]
    # A TLS client on a plain port: permanent too.
    plain_server = start_server()
    start = time.monotonic()
    tls_client = spawn(
        clients,
        f"tls:{HOST}:{plain_server.port}",
        "--connect-timeout",
        "20",
        stdin=b"should not go\n",
    )
    code, err = _exit_and_stderr(tls_client, timeout=20)
    assert code == 1
    assert time.monotonic() - start < 10
    assert err == [
        "groupchat client: the server did not answer in TLS: is it a plain port? "
        f"try --server {HOST}:{plain_server.port}"
    ]


def _spawn_on_terminal(*args: str) -> tuple[int, int]:
    """The client on a pseudo-terminal: (pid, fd of the terminal)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        env = server_env()
        env["TERM"] = "xterm"
        env["PROMPT_TOOLKIT_NO_CPR"] = "1"
        os.execve(sys.executable, [*CLIENT, *args], env)
    return pid, fd


_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]")


def _visible(screen: bytearray) -> str:
    """The terminal's text without escape sequences (styles split a line into pieces)."""
    return _ESCAPES.sub(b"", bytes(screen)).decode("utf-8", "replace")


def _read_visible(fd: int, screen: bytearray, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in _visible(screen):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{text!r} never appeared on the terminal: {_visible(screen)!r}")
        if select.select([fd], [], [], remaining)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"terminal closed before {text!r}: {_visible(screen)!r}")
            screen += chunk


def _end_terminal(pid: int, fd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)


def test_interactive_line_typed_offline_is_sent_and_shown_once_connected(
    start_server: ServerFactory,
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on yet
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    pid, fd = _spawn_on_terminal("--server", f"{HOST}:{port}", "--nick", "alice")
    screen = bytearray()
    try:
        _read_visible(fd, screen, "(offline)>")
        os.write(fd, b"typed while offline\r")
        _read_visible(fd, screen, "your line will be sent when the connection is back")
        assert "? typed while offline" not in _visible(screen)  # not shown as sent
        start_server(port=f"tcp:{port}:interface={HOST}")
        # Shown when it really goes out: under the nickname the server confirmed.
        _read_visible(fd, screen, "alice typed while offline", timeout=20)
    finally:
        _end_terminal(pid, fd)


def test_interactive_taken_nick_says_which_name_you_have(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = start_server()
    bob = connect(server, "bob")
    set_nick(bob, "Frank")
    pid, fd = _spawn_on_terminal("--server", f"{HOST}:{server.port}", "--nick", "frank")
    screen = bytearray()
    try:
        _read_visible(fd, screen, "type /nick NAME to pick another name")
        guest = _visible(screen).split("you are chatting as ")[-1].split(";")[0]
        assert re.fullmatch(r"guest\d+", guest), guest
        _read_visible(fd, screen, f"{guest}>")  # and the prompt says so too
    finally:
        _end_terminal(pid, fd)
