"""Support for end-to-end tests: the real ``twistd -n groupchat`` in a subprocess, real
loopback sockets, and a small blocking line client.

Every wait is bounded (a socket timeout or a polling deadline); nothing sleeps for a fixed
time.  "Never received" is checked after a *barrier*: the observer sends ``/ping TOKEN`` and
waits for its pong.  The server writes each event to every recipient in one synchronous
fan-out and a TCP connection keeps order, so anything the server would have sent the observer
before the pong has arrived by then.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
EXPECT_TIMEOUT = 5.0
POLL_STEP = 0.05

Match = str | Callable[[str], bool]
TELNET_COMMAND = re.compile(rb"\xff[\xfb-\xfe].")


# -- the server process ------------------------------------------------------------------


def twistd_command() -> list[str]:
    """How to run twistd with this interpreter.

    ``python -m twisted.scripts.twistd`` does nothing (that module has no ``__main__``
    block), so use the ``twistd`` script installed next to the interpreter, run by the
    interpreter itself; without one, call ``run()`` directly.
    """
    script = Path(sys.executable).with_name("twistd")
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    port_file: Path | None
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_listening(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """Poll for the port file (written atomically once listening) and read the port."""
        assert self.port_file is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.port_file.exists():
                content = self.port_file.read_text().strip()
                m = re.fullmatch(r"(?:tcp|ssl):127\.0\.0\.1:(\d+)", content)
                assert m, f"unexpected port file content {content!r}"
                self.port = int(m.group(1))
                return self.port
            if time.monotonic() >= deadline:
                raise AssertionError(f"no port file after {timeout} s:\n{self.log()}")
            # Bounded wait on the other condition that ends this poll: the server exiting.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=POLL_STEP)
                raise AssertionError(
                    f"server exited with {self.proc.returncode} before listening:\n{self.log()}"
                )

    def web_port(self, timeout: float = STARTUP_TIMEOUT) -> int:
        """The --web door's port, from the --web-port-file ``start_server`` asked for."""
        path = self.workdir / "web-port"
        assert wait_until(path.exists, timeout), f"no web port file:\n{self.log()}"
        m = re.fullmatch(r"(?:tcp|ssl):127\.0\.0\.1:(\d+)", path.read_text().strip())
        assert m, f"unexpected web port file content {path.read_text()!r}"
        return int(m.group(1))

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout} s:\n{self.log()}") from None

    def stop(self) -> None:
        """Terminate this server (by its own PID), then kill it if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)


ServerFactory = Callable[..., ServerProcess]


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every ``POLL_STEP`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        threading.Event().wait(min(POLL_STEP, remaining))
    return True


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """``start_server(*options, port=..., wait=True)`` starts a server; all die at teardown."""
    started: list[ServerProcess] = []

    def start(
        *options: str, port: str = f"tcp:0:interface={HOST}", wait: bool = True
    ) -> ServerProcess:
        workdir = tmp_path / f"server{len(started)}"
        workdir.mkdir()
        port_file = workdir / "port" if wait else None
        argv = [*twistd_command(), "-n", "--pidfile=", "groupchat", "--port", port]
        if port_file is not None:
            argv += ["--port-file", str(port_file)]
        if "--web" in options:
            argv += ["--web-port-file", str(workdir / "web-port")]
        argv += options
        log_path = workdir / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=server_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = ServerProcess(proc, workdir, log_path, port_file)
        started.append(server)  # before waiting: a server that never listens still dies
        if wait:
            server.wait_listening()
        return server

    yield start
    for server in started:
        server.stop()


# -- the client ------------------------------------------------------------------------


def recv_by(sock: socket.socket, deadline: float) -> bytes | None:
    """One recv, waiting at most until ``deadline``: None on timeout, b"" at the end of
    the stream (a reset included)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    sock.settimeout(remaining)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _matcher(pred: Match) -> Callable[[str], bool]:
    if isinstance(pred, str):
        return lambda line: pred in line
    return pred


@dataclass(eq=False)
class ChatClient:
    """A blocking line client.  Lines are split on ``\\n`` (a trailing ``\\r`` dropped)."""

    sock: socket.socket
    label: str
    nick: str = ""
    raw: bytearray = field(default_factory=bytearray)  # every byte received
    raw_lines: list[bytes] = field(default_factory=list)  # complete lines, no line ending
    eof: bool = False
    _partial: bytes = b""
    _used: set[int] = field(default_factory=set)
    _tokens: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def connect(cls, port: int, label: str) -> ChatClient:
        sock = socket.create_connection((HOST, port), timeout=EXPECT_TIMEOUT)
        return cls(sock, label)

    @property
    def lines_so_far(self) -> list[str]:
        return [_decode(line) for line in self.raw_lines]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def say(self, text: str) -> None:
        self.send(text.encode("utf-8") + b"\r\n")

    def _read(self, deadline: float) -> bool:
        """One recv, waiting at most until ``deadline``; False on timeout or end of stream."""
        if self.eof:
            return False
        data = recv_by(self.sock, deadline)
        if data is None:
            return False
        if not data:
            self.eof = True
            return False
        self.raw += data
        # It sends CR LF like telnet, so the server may ask it for a timing mark (see
        # docs/PROTOCOL.md); like telnet's, its lines do not show those three bytes.
        data = TELNET_COMMAND.sub(b"", data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        self.raw_lines += [line.removesuffix(b"\r") for line in complete]
        return True

    def _find(self, match: Callable[[str], bool]) -> str | None:
        for i, line in enumerate(self.raw_lines):
            if i not in self._used and match(_decode(line)):
                self._used.add(i)
                return _decode(line)
        return None

    def poll(self, pred: Match, timeout: float) -> str | None:
        """The first not-yet-matched line matching ``pred`` within ``timeout``, else None."""
        match = _matcher(pred)
        deadline = time.monotonic() + timeout
        while True:
            found = self._find(match)
            if found is not None or not self._read(deadline):
                return found if found is not None else self._find(match)

    def expect(self, pred: Match, timeout: float = EXPECT_TIMEOUT) -> str:
        """Read until a (not yet matched) line matches ``pred``; each line matches once."""
        found = self.poll(pred, timeout)
        if found is None:
            shown = "\n  ".join(repr(line) for line in self.lines_so_far)
            raise AssertionError(
                f"{self.label}: no line matching {pred!r} within {timeout} s "
                f"(eof={self.eof}, trailing={self._partial!r}); received:\n  {shown}"
            )
        return found

    def expect_closed(self, timeout: float = EXPECT_TIMEOUT) -> None:
        """Read (keeping what arrives) until the server closes the connection."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._read(deadline) and not self.eof:
                raise AssertionError(
                    f"{self.label}: connection still open after {timeout} s; received: "
                    f"{self.lines_so_far!r}"
                )

    def barrier(self) -> None:
        """Round trip a /ping: whatever the server sent us before has now been read."""
        token = f"sync-{self.label}-{next(self._tokens)}"
        self.say(f"/ping {token}")
        self.expect(lambda line: "pong" in line and token in line)

    def skip_seen(self) -> None:
        """Let no line received so far match a later ``expect``."""
        self._used.update(range(len(self.raw_lines)))

    def count(self, pred: Match) -> int:
        match = _matcher(pred)
        return sum(1 for line in self.lines_so_far if match(line))

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with an RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


ClientFactory = Callable[[ServerProcess, str], ChatClient]
WELCOME = re.compile(r"^\*\*\* Welcome to groupchat \S+, (\S+)! You are in #lobby\.$")


@pytest.fixture
def connect() -> Iterator[ClientFactory]:
    """``connect(server, label)``: a client that has read its whole greeting."""
    clients: list[ChatClient] = []

    def make(server: ServerProcess, label: str) -> ChatClient:
        client = ChatClient.connect(server.port, label)
        clients.append(client)
        m = WELCOME.match(client.expect(lambda line: WELCOME.match(line) is not None))
        assert m is not None
        client.nick = m.group(1)
        client.expect(f"*** [#lobby] {client.nick} joined")
        client.expect("*** Now talking in #lobby")
        client.skip_seen()
        return client

    yield make
    for client in clients:
        client.close()


def set_nick(client: ChatClient, nick: str) -> None:
    client.say(f"/nick {nick}")
    client.expect(f"*** {client.nick} is now known as {nick}")
    client.nick = nick
