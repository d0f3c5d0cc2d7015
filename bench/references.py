"""Reference servers in C, beside which our server's fan-out is judged.

redis-server (pub/sub) is about the fastest fan-out there is; ngIRCd is a real chat server
in C, with an IRC server's per-message work (prefixes, channel membership).  Each runs like
``minimal_server``: a context manager yielding ``(port, pid)``, pinned to CPU 0, on
127.0.0.1 only, with every limit lifted that can be lifted, and ended by its own PID.

A :class:`Dialect` per server lets one load generator drive them all: how a connection
gets into the one room, and how one message's payload is framed on the wire.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Protocol

HOST = "127.0.0.1"
ROOM = "bench"
Role = Literal["receiver", "sender"]


class Unavailable(Exception):
    """The server's binary is not installed: the benchmark skips it instead of failing."""


def _binary(name: str, package: str) -> str:
    # ngircd lives in /usr/sbin, which a non-root PATH usually lacks.
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise Unavailable(f"{name} is not installed (Debian package {package}); skipped")
    return found


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if os.path.exists("/usr/bin/taskset") else []


def _free_port() -> int:
    """A loopback port free right now (neither server can report one it picked itself)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextmanager
def _run(name: str, argv: list[str], port: int, tmp: Path) -> Iterator[tuple[int, int]]:
    """Start ``argv`` pinned, wait until ``port`` accepts, yield; then stop it by its PID."""
    log_path = tmp / "log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*_pin(0), *argv], cwd=tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"{name} did not start: {' / '.join(tail)}")
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port, proc.pid
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 10 s (our PID only)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def redis_server() -> Iterator[tuple[int, int]]:
    """redis-server with no persistence and no output-buffer limit on subscribers.

    ``pubsub 0 0 0``: a subscriber that falls behind is buffered for, not disconnected, as
    our server is run with a 64 MiB send queue.
    """
    binary = _binary("redis-server", "redis-server")
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            tmp,
            "--logfile",
            "",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "20000",
            "--client-output-buffer-limit",
            "pubsub 0 0 0",
        ]
        with _run("redis-server", argv, port, Path(tmp)) as running:
            yield running


# Every input limit ngIRCd lets a configuration lift.  MaxPenaltyTime = 0 turns penalty
# delays (and so its flood throttling) off; senders also become operators with user mode
# +F (see IrcDialect), which lifts the cap of 3 commands per client per loop to 10.  Not
# configurable: a 32 KiB write buffer per client (a receiver further behind than that plus
# its kernel socket buffer is disconnected: "Write buffer space exhausted") and 512-byte
# lines.  As root ngIRCd refuses to stay root and runs as "nobody" (same PID).
NGIRCD_CONF = """\
[Global]
Name = bench.invalid
Info = groupchat benchmark reference
AdminInfo1 = groupchat benchmark
AdminInfo2 = loopback only
AdminEMail = nobody@bench.invalid
Listen = {host}
Ports = {port}
PidFile =
MotdPhrase = bench
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 31
MaxPenaltyTime = 0
PingTimeout = 3600
PongTimeout = 3600
[Options]
DNS = no
Ident = no
PAM = no
IncludeDir = {include}
[Operator]
Name = bench
Password = bench
"""


@contextmanager
def ngircd_server() -> Iterator[tuple[int, int]]:
    """ngIRCd in the foreground, with no DNS, ident or PAM and its flood limits lifted.

    Its listen backlog is 10 (compiled in): open connections a few at a time, or a burst
    loses SYNs and waits out 1 s retransmits.  It does not set TCP_NODELAY.
    """
    binary = _binary("ngircd", "ngircd")
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        include = Path(tmp) / "conf.d"  # so nothing from /etc/ngircd is read
        include.mkdir()
        conf = Path(tmp) / "ngircd.conf"
        conf.write_text(NGIRCD_CONF.format(host=HOST, port=port, include=include))
        with _run("ngircd", [binary, "-n", "-f", str(conf)], port, Path(tmp)) as running:
            yield running


class Dialect(Protocol):
    """How the load generator speaks to one server."""

    name: str
    #: The server answers every sent message (redis: ``:N``), so senders must drain.
    sender_replies: bool

    async def join(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int, role: Role
    ) -> None:
        """Get a fresh connection into the room; returns once it is in, its replies read.

        ``index`` must be unique per connection and role (it names IRC nicknames).
        Lines other connections cause may still arrive afterwards (IRC and groupchat
        announce every join): the generator drains them.
        """
        ...

    def wire(self, payload: bytes) -> bytes:
        """The bytes that send one message with body ``payload`` (no line break in it)."""
        ...


class LineDialect:
    """groupchat and the minimal Twisted server: one line is one message to the room.

    groupchat seats every connection in ``#lobby`` and greets it; the greeting is read up
    to the line that says so (a connection still in the listen queue has no greeting
    yet, and must not be counted as in the room).  The minimal server says nothing.
    """

    sender_replies = False

    def __init__(self, name: str, *, ready: bytes | None) -> None:
        self.name = name
        self.ready = ready

    async def join(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int, role: Role
    ) -> None:
        while self.ready is not None:
            line = await reader.readline()
            if not line:
                raise ConnectionError(f"{self.name} closed the connection while joining")
            if line.startswith(self.ready):
                return

    def wire(self, payload: bytes) -> bytes:
        return payload + b"\n"


class RedisDialect:
    """Pub/sub on one channel: receivers SUBSCRIBE, senders PUBLISH (and get ``:N`` back)."""

    name = "redis"
    sender_replies = True

    async def join(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int, role: Role
    ) -> None:
        if role == "sender":
            return
        writer.write(_resp(b"SUBSCRIBE", ROOM.encode()))
        # *3 $9 subscribe $5 bench :1, read line by line so nothing after it is consumed.
        lines = [await reader.readline()]
        if lines[0].startswith(b"*3"):
            lines += [await reader.readline() for _ in range(5)]
        if lines[2:3] != [b"subscribe\r\n"] or not lines[5].startswith(b":"):
            raise RuntimeError(f"redis refused SUBSCRIBE: {b''.join(lines)!r}")

    def wire(self, payload: bytes) -> bytes:
        return _resp(b"PUBLISH", ROOM.encode(), payload)


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class IrcDialect:
    """IRC: register (``r<index>``/``s<index>``), then JOIN ``#bench``.

    Senders also OPER and set user mode +F, ngIRCd's "no flood protection", so their
    commands are not held to 3 per client per server loop.  Every JOIN is announced to
    the whole channel (N joins send N²/2 lines): keep reading members while others join,
    or one more than about 32 KiB plus its socket buffers behind is disconnected.
    """

    name = "ngircd"
    sender_replies = False

    async def join(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int, role: Role
    ) -> None:
        nick = f"{role[0]}{index}"
        writer.write(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
        await _irc_until(reader, writer, lambda words: words[1] in ("376", "422"))  # MOTD end
        if role == "sender":
            writer.write(f"OPER bench bench\r\nMODE {nick} +F\r\n".encode())
            await _irc_until(reader, writer, lambda words: words[1:] == ["MODE", nick, ":+F"])
        writer.write(f"JOIN #{ROOM}\r\n".encode())
        # The end of NAMES comes after our own JOIN: the join is complete.
        await _irc_until(reader, writer, lambda words: words[1] == "366" and words[3] == f"#{ROOM}")

    def wire(self, payload: bytes) -> bytes:
        return b"PRIVMSG #%s :%s\r\n" % (ROOM.encode(), payload)


async def _irc_until(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    done: Callable[[list[str]], bool],
) -> None:
    """Read lines until ``done(words)``; answer PINGs, fail on errors, skip the rest.

    ``words`` is the line split on spaces, with the prefix first (``""`` if none), so
    ``words[1]`` is the command.  Lines are read one at a time: nothing after the
    awaited line is consumed.
    """
    while True:
        raw = await reader.readline()
        if not raw:
            raise ConnectionError("ngircd closed the connection while joining")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        words = line.split(" ") if line.startswith(":") else ["", *line.split(" ")]
        words += [""] * (4 - len(words))
        if words[1] == "PING":
            writer.write(f"PONG {' '.join(words[2:]).strip()}\r\n".encode())
        elif done(words):
            return
        elif words[1] == "ERROR" or (
            words[1][:1] in "45" and words[1].isdigit() and words[1] != "422"
        ):
            raise RuntimeError(f"ngircd refused: {line}")


DIALECTS: dict[str, Dialect] = {
    "groupchat": LineDialect("groupchat", ready=b"*** Now talking in #lobby"),
    "minimal-twisted": LineDialect("minimal-twisted", ready=None),
    "redis": RedisDialect(),
    "ngircd": IrcDialect(),
}
