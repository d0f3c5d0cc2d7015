"""Under attack: does a well-behaved member notice, and does the server's memory stay bounded?

For each attack our server is started afresh with its README defaults (pinned to CPU 0,
on 127.0.0.1 only), plus ``--max-per-address 10000`` so that attackers, which all come
from loopback, are not simply refused at the door.  20 well-behaved members (this
process, CPU 1) sit in ``#bench``; each sends a 64-byte message every ``--interval``
seconds (0.2: the default ``--rate`` of 5 lines/s, which a member sending faster would
exceed) and a ``/ping`` every 5 s.  Every message carries its send time and is timed at
every other member.  Phase 1, quiet: 10 s.  Phase 2: the same traffic while one attack
runs for 15 s, from a separate process (also on CPU 1) whose connections come from
127.0.0.2, so the server's per-address rules see attackers and members apart, as they
would be on a real network.  In each phase: latency percentiles, lost messages, the
server's RSS, open file descriptors and CPU, and the time a newcomer takes to be seated.
The attackers record every reason the server gave them for ending their connections.

Attacks whose connections the server lets live until ``--flood-timeout`` (60 s) go on,
in the first round only, for ``--tail`` seconds after the measured phase, to see how
they end; the members keep talking meanwhile, but that time is not in the phase figures.

    python -m bench attack --rounds 3 --write

A run whose quiet or attacked phase lost more than 3 % of CPU 0 to the hypervisor is
redone once (while the whole run is under 14 minutes old).  ``--write`` replaces
docs/bench/attack.json only; its section in docs/PERFORMANCE.md is written by hand.
The attacker process is this module: ``python -m bench.attack --attacker KIND ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shlex
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    MARK,
    ROOT,
    _pin,
    cpu_seconds,
    rss_bytes,
    run_loop,
    steal_ticks,
    summarize,
    tap,
)
from bench.references import HOST

ATTACKER_HOST = "127.0.0.2"  # still loopback: Linux routes all of 127.0.0.0/8 to lo
MEMBERS = 20
ROOM = "#bench"
WARMUP = 1.0
QUIET = 10.0
ATTACK = 15.0
PING_EVERY = 5.0
MESSAGE = 64  # bytes on the wire, newline included
SEND_QUEUE = 256 * 1024  # the server's --send-queue default
TRANSPORT_BUFFER = 64 * 1024  # what Twisted buffers itself before that queue starts
STEAL_RETRY = 0.03
BUDGET = 14 * 60.0  # no run is redone for steal time once the whole run is this old
USERS = 3000
PASSWORD = "pw-{}"  # the members' passwords in the --auth file

ATTACKS: dict[str, str] = {
    "telnet-do": "20 connections that never read, each writing IAC DO 1 (FF FD 01) in 30 KB "
    "writes as fast as the socket takes them",
    "telnet-sb": "20 connections sending IAC SB then 2 MiB without IAC SE; reconnecting at once",
    "tls-silent": "200 TCP connections to the TLS port that never send a byte (server: "
    "--register-timeout 5); reconnecting when closed; members over TLS",
    "rooms": "40 connections each joining 50 new rooms at once, then /rooms 4 times a second",
    "logins": "20 connections sending /login alice wrongN, reconnecting when closed (server: "
    "--auth file: with 3,000 users; members logged in first)",
    "pings": "20 connections sending /ping as fast as the server answers (10 unanswered)",
    "lookalike": "20 connections in #bench cycling /nick through look-alikes of the members' "
    "names as fast as the server answers (10 unanswered)",
}
# The server lets these live until --flood-timeout: the first round watches them end.
PERSISTENT = ("telnet-do", "pings", "lookalike")


def member_name(k: int) -> str:
    return f"member{k + 1:02d}"


def lookalikes(name: str) -> list[str]:
    """Names the server must refuse as ``name`` (see docs/PROTOCOL.md, Nicknames)."""
    head, digits = name[:-2], name[-2:]
    swapped = digits.replace("0", "O").replace("1", "l")
    return [
        name.upper(),
        name.capitalize(),
        "rn" + name[1:],  # rn looks like m
        head.replace("e", "\u0435") + digits,  # Cyrillic e
        "\uff4d" + name[1:],  # fullwidth m (NFKC)
        head.replace("e", "\u00e9", 1) + digits,  # an accent
        head + swapped,  # 0 as O, 1 as l
        (head + swapped).upper(),  # 0 as O, 1 (l) as capital I
        name,
    ]


# -- the server ------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    pid: int
    args: list[str]  # what was given to groupchat, for the record
    log: Path
    tls: bool = False
    auth: bool = False


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (as in tests/test_client_e2e.py)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
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
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _users(path: Path) -> None:
    """3,000 logins: the members (and one newcomer), alice, and filler."""
    lines = [f"{member_name(k)}:{PASSWORD.format(k)}" for k in range(MEMBERS + 1)]
    lines.append("alice:correct-horse-battery")
    lines += [f"user{i:04d}:secret-{i * 7919 % 100003}" for i in range(USERS - len(lines))]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def server_args(kind: str, tmp: Path) -> tuple[list[str], bool, bool]:
    """groupchat's options for one attack: README defaults and what the attack needs."""
    args = ["--port", f"tcp:0:interface={HOST}", "--max-per-address", "10000"]
    tls = auth = False
    if kind == "tls-silent":
        key, cert = _certificate(tmp)
        args[1] = f"ssl:0:privateKey={key}:certKey={cert}:interface={HOST}"
        args += ["--register-timeout", "5"]
        tls = True
    elif kind == "logins":
        _users(tmp / "users.txt")
        args += ["--auth", f"file:{tmp / 'users.txt'}"]
        auth = True
    return args + shlex.split(os.environ.get("GROUPCHAT_ARGS", "")), tls, auth


@contextmanager
def attacked_server(kind: str, tmp: Path) -> Iterator[Server]:
    """Our server with its defaults, pinned to CPU 0; stopped by its PID whatever happens."""
    args, tls, auth = server_args(kind, tmp)
    twistd = Path(sys.executable).with_name("twistd")
    port_file = tmp / "port"
    argv = [*_pin(0), sys.executable, str(twistd), "-n", "--pidfile=", "groupchat", *args]
    argv += ["--port-file", str(port_file)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"groupchat did not start:\n{tail}")
            with suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
        port = int(port_file.read_text().strip().rsplit(":", 1)[1])
        shown = [a.replace(str(tmp), "TMP") for a in args]
        yield Server(port, proc.pid, shown, log_path, tls, auth)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_DROP = re.compile(r"dropping \S+ from \S+: (.*)$")
_BEFORE_LOGIN = re.compile(r"disconnect \S+ before login: (.*)$")
_REFUSED_LOGIN = re.compile(r"refused login from .*?by this (\w+)")


def server_reasons(log: Path) -> dict[str, int]:
    """Why the server ended connections, from its own log (a check on what attackers saw)."""
    found: Counter[str] = Counter()
    with suppress(OSError), open(log, errors="replace") as f:
        for line in f:
            for pattern, label in (
                (_DROP, "dropped"),
                (_BEFORE_LOGIN, "closed before login"),
                (_REFUSED_LOGIN, "login refused by"),
            ):
                m = pattern.search(line.rstrip())
                if m:
                    found[f"{label}: {re.sub(r'[0-9]+[.][0-9]+', 'N', m.group(1))}"] += 1
    return dict(found.most_common())


# -- the well-behaved members ----------------------------------------------------------


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float) -> None:
    async def look() -> None:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError(f"closed while waiting for {marker!r}")
            if marker in line:
                return

    await asyncio.wait_for(look(), timeout)


async def join(server: Server, k: int, timeout: float = 30.0) -> Any:
    """A member in #bench, logged in first when the server wants it; (reader, writer)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            HOST, server.port, limit=1 << 20, ssl=_client_tls() if server.tls else None
        ),
        timeout,
    )
    name = member_name(k)
    if server.auth:
        await _read_until(reader, b"needs a login", timeout)
        writer.write(f"/login {name} {PASSWORD.format(k)}\n".encode())
        await _read_until(reader, b"*** Welcome to groupchat", timeout)
        writer.write(f"/join {ROOM}\n".encode())
    else:
        writer.write(f"/nick {name}\n/join {ROOM}\n".encode())
    await _read_until(reader, f"*** Now talking in {ROOM}".encode(), timeout)
    return reader, writer


async def newcomer(server: Server) -> float:
    """Seconds for one more member to connect (log in) and be seated in #bench; it quits."""
    t0 = time.perf_counter()
    try:
        reader, writer = await join(server, MEMBERS, timeout=20.0)
    except (OSError, TimeoutError, ConnectionError):
        return float("inf")
    seated = time.perf_counter() - t0
    writer.write(b"/quit\n")
    with suppress(OSError, TimeoutError, ConnectionError):
        await asyncio.wait_for(_read_until(reader, b"never", 5), 5)
    writer.close()
    return seated


@dataclass
class Traffic:
    """What the members sent and received; phases are told apart by send time."""

    sent: list[float] = field(default_factory=list)  # send times of every message
    samples: list[tuple[float, float]] = field(default_factory=list)  # (sent, latency)
    pongs: list[tuple[float, float]] = field(default_factory=list)
    out_of_order: int = 0
    slow_downs: int = 0
    byes: Counter[str] = field(default_factory=Counter)
    dropped: int = 0

    def receiver(self, k: int) -> Callable[[bytes], None]:
        buffer = b""
        last = [-1] * MEMBERS

        def on_data(data: bytes) -> None:
            nonlocal buffer
            now = time.perf_counter()
            *lines, buffer = (buffer + data).split(b"\n")
            for line in lines:
                at = line.find(MARK)
                if at >= 0:
                    stamp, sender, n = line[at + 2 :].split(b"|", 3)[:3]
                    sent = float(stamp)
                    self.samples.append((sent, now - sent))
                    s, seq = int(sender), int(n)
                    if seq != last[s] + 1:
                        self.out_of_order += 1
                    last[s] = seq
                elif line.startswith(b"*** pong "):
                    with suppress(ValueError):
                        sent = float(line[9:].strip())
                        self.pongs.append((sent, now - sent))
                elif line.startswith(b"*** Slow down"):
                    self.slow_downs += 1
                elif line.startswith(b"*** Disconnected: "):
                    self.byes[line[18:].strip().decode(errors="replace")] += 1

        return on_data

    def closed(self) -> None:
        self.dropped += 1

    def phase(self, start: float, end: float, listeners: int) -> dict[str, float]:
        lat = sorted(lat for sent, lat in self.samples if start <= sent < end)
        expected = listeners * sum(1 for t in self.sent if start <= t < end)
        pongs = sorted(lat for sent, lat in self.pongs if start <= sent < end)

        def pct(values: list[float], p: float) -> float:
            if not values:
                return float("nan")
            return values[min(len(values) - 1, int(p * len(values)))] * 1000

        return {
            "p50_ms": pct(lat, 0.50),
            "p90_ms": pct(lat, 0.90),
            "p99_ms": pct(lat, 0.99),
            "p999_ms": pct(lat, 0.999),
            "over_1ms": sum(1 for x in lat if x > 0.001) / max(1, len(lat)),
            "max_ms": pct(lat, 1.0),
            "deliveries": len(lat),
            "lost": expected - len(lat),
            "ping_p99_ms": pct(pongs, 0.99),
        }


async def talk(
    writer: asyncio.StreamWriter, k: int, start: float, interval: float, traffic: Traffic
) -> None:
    """One member: a message every ``interval`` on a fixed schedule, a /ping every 5 s."""
    offset = interval * k / MEMBERS
    next_ping = start + PING_EVERY * k / MEMBERS
    n = 0
    while not writer.is_closing():
        due = start + offset + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.perf_counter()
        body = (MARK + f"{now:.6f}|{k}|{n}|".encode()).ljust(MESSAGE - 1, b".") + b"\n"
        if now >= next_ping:
            body += f"/ping {now:.6f}\n".encode()
            next_ping += PING_EVERY
        writer.write(body)
        traffic.sent.append(now)
        n += 1


# -- one run ---------------------------------------------------------------------------


async def _spawn_attacker(kind: str, port: int, tail: float) -> asyncio.subprocess.Process:
    argv = [sys.executable, "-m", "bench.attack", "--attacker", kind, "--port", str(port)]
    argv += ["--seconds", str(ATTACK), "--tail", str(tail)]
    argv += ["--targets", ",".join(member_name(k) for k in range(MEMBERS))]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 30)
    if ready.strip() != b"ready":
        raise RuntimeError(f"the attacker did not start: {ready!r}")
    return proc


async def _stop_attacker(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def scenario(
    kind: str, server: Server, interval: float, tail: float, target: int
) -> dict[str, Any]:
    pid = server.pid
    attacker = await _spawn_attacker(kind, target, tail)
    members: list[Any] = []
    talkers: list[asyncio.Task[None]] = []
    try:
        gate = asyncio.Semaphore(10)

        async def one(k: int) -> Any:
            async with gate:
                return await join(server, k)

        members = list(await asyncio.gather(*(one(k) for k in range(MEMBERS))))
        await asyncio.sleep(0.5)  # the last joins' notices
        traffic = Traffic()
        for k, conn in enumerate(members):
            tap(conn, traffic.receiver(k), on_close=traffic.closed)
        start = time.perf_counter() + 0.05
        talkers = [
            asyncio.create_task(talk(w, k, start, interval, traffic))
            for k, (_, w) in enumerate(members)
        ]
        samples: list[tuple[float, int, int]] = []  # (time, rss, fds)
        sampling = asyncio.Event()

        async def sample() -> None:
            while not sampling.is_set():
                with suppress(OSError):
                    samples.append((time.perf_counter(), rss_bytes(pid), open_fds(pid)))
                await asyncio.sleep(1.0)

        async def mark() -> dict[str, float]:
            return {
                "t": time.perf_counter(),
                "cpu": cpu_seconds(pid),
                "rss": rss_bytes(pid),
                "fds": open_fds(pid),
                "steal": steal_ticks(),
                "gen": time.process_time(),
            }

        await asyncio.sleep(start + WARMUP - time.perf_counter())
        q0 = await mark()
        sampler = asyncio.create_task(sample())
        await asyncio.sleep(QUIET / 2)
        seat_quiet = await newcomer(server)
        await asyncio.sleep(q0["t"] + QUIET - time.perf_counter())
        q1 = await mark()
        assert attacker.stdin is not None and attacker.stdout is not None
        attacker.stdin.write(b"go\n")
        await attacker.stdin.drain()
        await asyncio.sleep(ATTACK / 2)
        seat_attacked = await newcomer(server)
        await asyncio.sleep(q1["t"] + ATTACK - time.perf_counter())
        q2 = await mark()
        report = await asyncio.wait_for(attacker.stdout.read(), tail + 60)
        await _stop_attacker(attacker)
        q3 = await mark()
        for task in talkers:
            task.cancel()
        # In flight when the talking stopped: give every message time to arrive.
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline:
            expected = (MEMBERS - 1) * len(traffic.sent)
            if len(traffic.samples) >= expected or traffic.dropped:
                break
            await asyncio.sleep(0.05)
        sampling.set()
        await sampler
    finally:
        for task in talkers:
            task.cancel()
        for _, w in members:
            w.close()
        await _stop_attacker(attacker)

    def during(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        wall = b["t"] - a["t"]
        return {
            "server_cpu": (b["cpu"] - a["cpu"]) / wall,
            "generator_cpu": (b["gen"] - a["gen"]) / wall,
            "steal": (b["steal"] - a["steal"]) / (wall * os.sysconf("SC_CLK_TCK")),
        }

    listeners = MEMBERS - 1
    quiet = traffic.phase(q0["t"], q1["t"], listeners) | during(q0, q1)
    attacked = traffic.phase(q1["t"], q2["t"], listeners) | during(q1, q2)
    in_attack = [s for s in samples if q1["t"] <= s[0] <= q2["t"]] or [(0.0, q2["rss"], 0)]
    attackers = json.loads(report) if report.strip() else {"error": "no report"}
    row: dict[str, Any] = {
        "quiet_p50_ms": quiet["p50_ms"],
        "quiet_p99_ms": quiet["p99_ms"],
        "attack_p50_ms": attacked["p50_ms"],
        "attack_p99_ms": attacked["p99_ms"],
        "p99_ratio": attacked["p99_ms"] / quiet["p99_ms"],
        "quiet_p90_ms": quiet["p90_ms"],
        "attack_p90_ms": attacked["p90_ms"],
        "quiet_over_1ms": quiet["over_1ms"],
        "attack_over_1ms": attacked["over_1ms"],
        "quiet_ping_p99_ms": quiet["ping_p99_ms"],
        "attack_ping_p99_ms": attacked["ping_p99_ms"],
        "quiet_max_ms": quiet["max_ms"],
        "attack_max_ms": attacked["max_ms"],
        "rss_before_mb": q1["rss"] / 2**20,
        "rss_after_mb": q2["rss"] / 2**20,
        "rss_peak_mb": max(s[1] for s in in_attack) / 2**20,
        "rss_growth_mb": (q2["rss"] - q1["rss"]) / 2**20,
        "rss_quiet_growth_mb": (q1["rss"] - q0["rss"]) / 2**20,
        "fds_quiet": q1["fds"],
        "fds_peak": max(s[2] for s in in_attack),
        "fds_after": q2["fds"],
        "server_cpu_quiet": quiet["server_cpu"],
        "server_cpu_attack": attacked["server_cpu"],
        "generator_cpu_quiet": quiet["generator_cpu"],
        "generator_cpu_attack": attacked["generator_cpu"],
        "steal_quiet": quiet["steal"],
        "steal_attack": attacked["steal"],
        "lost": quiet["lost"] + attacked["lost"],
        "lost_quiet": quiet["lost"],
        "lost_attack": attacked["lost"],
        "deliveries_quiet": quiet["deliveries"],
        "deliveries_attack": attacked["deliveries"],
        "out_of_order": traffic.out_of_order,
        "members_dropped": traffic.dropped,
        "member_byes": dict(traffic.byes),
        "member_slow_downs": traffic.slow_downs,
        "newcomer_quiet_ms": seat_quiet * 1000,
        "newcomer_attack_ms": seat_attacked * 1000,
        "attackers": attackers,
    }
    # What the issue allows: the output queues of every extra connection the server held.
    extra = max(0, row["fds_peak"] - row["fds_quiet"])
    row["rss_bound_mb"] = extra * (SEND_QUEUE + TRANSPORT_BUFFER) / 2**20
    if tail > 0:
        row["tail"] = {
            "seconds": tail,
            **traffic.phase(q2["t"], q3["t"] - 0.5, listeners),
            "rss_mb": q3["rss"] / 2**20,
            "fds": q3["fds"],
        }
    return row


def server_code() -> str:
    """The commit the server ran from, marked when its code had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "twisted_chat", "twisted"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + (" + uncommitted changes" if changed else "")


def one_run(kind: str, interval: float, tail: float, decoy: bool = False) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        server = stack.enter_context(attacked_server(kind, Path(tmp)))
        target = server.port
        if decoy:
            other = stack.enter_context(tempfile.TemporaryDirectory())
            target = stack.enter_context(attacked_server(kind, Path(other))).port
        code = server_code()
        row = run_loop(scenario(kind, server, interval, tail, target))
        row["server_code"] = code
        row["server_args"] = shlex.join(server.args)
        row["server_log"] = server_reasons(server.log)
        return row


SUMMARY = [
    "quiet_p50_ms",
    "quiet_p99_ms",
    "attack_p50_ms",
    "attack_p99_ms",
    "p99_ratio",
    "rss_before_mb",
    "rss_after_mb",
    "rss_peak_mb",
    "rss_growth_mb",
    "rss_bound_mb",
    "fds_quiet",
    "fds_peak",
    "server_cpu_quiet",
    "server_cpu_attack",
    "generator_cpu_attack",
    "newcomer_quiet_ms",
    "newcomer_attack_ms",
    "steal_quiet",
    "steal_attack",
]


def _outcomes(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Each reason's count, median over the runs (a run without it counts 0)."""
    names: dict[str, None] = {}
    for r in runs:
        names |= dict.fromkeys(r["attackers"].get(key, {}))
    return {
        name: statistics.median(r["attackers"].get(key, {}).get(name, 0) for r in runs)
        for name in names
    }


def _ended(outcomes: dict[str, float], limit: int = 4) -> str:
    shown = sorted(outcomes.items(), key=lambda kv: -kv[1])[:limit]
    return "; ".join(f"{name} x{count:g}" for name, count in shown) or "-"


def run_attack(args: argparse.Namespace) -> list[dict[str, Any]]:
    began = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.attacks}
    for round_ in range(args.rounds):
        for kind in args.attacks:
            tail = args.tail if round_ == 0 and kind in PERSISTENT else 0.0
            best: dict[str, Any] | None = None
            for _ in range(2):
                try:
                    row = one_run(kind, args.interval, tail, args.decoy)
                except (OSError, RuntimeError, TimeoutError, ConnectionError) as e:
                    print(f"{kind:11} run failed: {e!r}", flush=True)
                    continue
                row["round"] = round_ + 1
                stolen = max(row["steal_quiet"], row["steal_attack"])
                if best is None or stolen < max(best["steal_quiet"], best["steal_attack"]):
                    best = row
                if stolen <= STEAL_RETRY or time.monotonic() - began > BUDGET:
                    break
                print(f"{kind:11} steal {stolen:.0%}: redone", flush=True)
            if best is None:
                continue
            runs[kind].append(best)
            print(_line(kind, best), flush=True)
    rows = []
    for kind, found in runs.items():
        if not found:
            continue
        row: dict[str, Any] = {"attack": kind, "what": ATTACKS[kind]}
        row["server_args"] = found[0]["server_args"]
        row["server_code"] = sorted({r["server_code"] for r in found})
        row |= summarize(found, SUMMARY)
        row["lost"] = max(r["lost"] for r in found)
        row["members_dropped"] = max(r["members_dropped"] for r in found)
        row["member_slow_downs"] = max(r["member_slow_downs"] for r in found)
        row["out_of_order"] = max(r["out_of_order"] for r in found)
        row["p99_within_2x"] = row["p99_ratio"] <= 2
        row["p99_within_2x_every_round"] = all(r["p99_ratio"] <= 2 for r in found)
        row["rss_within_bound"] = all(
            r["rss_peak_mb"] - r["rss_before_mb"] <= r["rss_bound_mb"] for r in found
        )
        row["ended"] = _outcomes(found, "outcomes")
        tails = [r for r in found if "tail" in r]
        if tails:
            row["tail"] = tails[0]["tail"]
            row["ended_in_tail"] = tails[0]["attackers"].get("tail_outcomes", {})
        row["attackers_median"] = {
            key: statistics.median(r["attackers"].get(key, 0) for r in found)
            for key in ("connections", "cpu", "lines_sent", "replies")
        }
        row["runs_detail"] = found
        rows.append(row)
    print(f"\n== under attack, medians of {args.rounds} rounds ({time.monotonic() - began:.0f} s)")
    print(
        "Server: twistd -n --pidfile= groupchat (README defaults) --max-per-address 10000 "
        "(so loopback attackers are not simply refused)"
    )
    for line in table(rows):
        print(line)
    return rows


def _line(kind: str, r: dict[str, Any]) -> str:
    return (
        f"{kind:11} round {r['round']}  p50 {r['quiet_p50_ms']:.2f} -> "
        f"{r['attack_p50_ms']:.2f} ms  p99 {r['quiet_p99_ms']:.2f} -> {r['attack_p99_ms']:.2f} ms "
        f"(x{r['p99_ratio']:.2f})  RSS {r['rss_before_mb']:.1f} -> {r['rss_after_mb']:.1f} MB "
        f"(peak {r['rss_peak_mb']:.1f}, bound +{r['rss_bound_mb']:.0f})  fds {r['fds_quiet']} -> "
        f"{r['fds_peak']}  CPU {r['server_cpu_quiet']:.0%} -> {r['server_cpu_attack']:.0%}  "
        f"lost {r['lost']}  newcomer {r['newcomer_quiet_ms']:.0f} -> "
        f"{r['newcomer_attack_ms']:.0f} ms  steal {r['steal_attack']:.0%}  ended: "
        f"{_ended(r['attackers'].get('outcomes', {}))}"
    )


def _spread(r: dict[str, Any], key: str, fmt: str = ".2f") -> str:
    return f"{r[key]:{fmt}} ({r[key + '_min']:{fmt}}-{r[key + '_max']:{fmt}})"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The results as a Markdown table: medians, with min-max where it matters."""
    lines = [
        "| attack | quiet p50 / p99 ms | attacked p50 / p99 ms | p99 attacked / quiet | "
        "RSS before -> after MB (growth; bound) | server CPU quiet -> attacked | lost | "
        "newcomer seated, ms | how the attackers ended (median counts per run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ended = _ended(r["ended"], 4)
        if r.get("ended_in_tail"):
            ended += f"; after the phase: {_ended(r['ended_in_tail'], 2)}"
        lines.append(
            f"| {r['attack']} | {r['quiet_p50_ms']:.2f} / {_spread(r, 'quiet_p99_ms')} | "
            f"{r['attack_p50_ms']:.2f} / {_spread(r, 'attack_p99_ms')} | "
            f"{_spread(r, 'p99_ratio')} | {r['rss_before_mb']:.1f} -> "
            f"{r['rss_after_mb']:.1f} ({r['rss_growth_mb']:+.1f}; {r['rss_bound_mb']:.0f}) | "
            f"{r['server_cpu_quiet']:.0%} -> {_spread(r, 'server_cpu_attack', '.0%')} | "
            f"{r['lost']} | {r['newcomer_quiet_ms']:.0f} -> {r['newcomer_attack_ms']:.0f} | "
            f"{ended} |"
        )
    return lines


def add_arguments(add: Callable[..., Any]) -> None:
    add(
        "--rounds",
        type=int,
        default=3,
        help="attack, backplane, web: rounds; each runs every attack (every setup) once",
    )
    add("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS), help="attack: which")
    add(
        "--tail",
        type=float,
        default=47.0,
        help="attack: first round only, how long the attacks the server lets live until "
        f"--flood-timeout ({', '.join(PERSISTENT)}) go on after the phase; 0: not at all",
    )
    add(
        "--decoy",
        action="store_true",
        help="attack: a control run; the attack goes to a second server of ours on the same "
        "core while the members measure the first, so the figures show what the machine "
        "(kernel, shared cores) adds, not what the attacked server does",
    )
    add(
        "--interval",
        type=float,
        default=0.2,
        help="attack: seconds between one member's messages (0.2 is the default --rate)",
    )


# -- the attackers (a separate process: python -m bench.attack --attacker KIND) --------


class Tally:
    """Counts of what happened to the attackers, in the phase and after it."""

    def __init__(self, phase_end: float) -> None:
        self.phase_end = phase_end
        self.phase: Counter[str] = Counter()
        self.tail: Counter[str] = Counter()
        self.numbers: Counter[str] = Counter()  # totals: connections, lines, ...

    def add(self, key: str, n: int = 1) -> None:
        (self.phase if time.monotonic() < self.phase_end else self.tail)[key] += n


def classify(line: bytes) -> str | None:
    """What a server line tells an attacker about how it is being treated."""
    text = line.rstrip(b"\r\n").decode("utf-8", "replace")
    if text.startswith("*** Disconnected: "):
        return "bye: " + re.sub(r"[0-9]+[.][0-9]+", "N", text[18:])
    if text.startswith("!!! refused: "):
        return "refused: " + text[13:]
    if text.startswith("!!! "):
        return text[4:].split(":", 1)[0]
    if text.startswith("*** Slow down"):
        return "slow-down"
    return None


class Conn:
    """An attacker's line connection: read in the background, every line classified."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tally: Tally,
        is_reply: Callable[[bytes], bool] = lambda line: False,
    ) -> None:
        self.reader, self.writer, self.tally = reader, writer, tally
        self.is_reply = is_reply
        self.replies = 0
        self.greeted = False  # the welcome (or the login banner) has arrived
        self.said = ""  # the server's last word: a bye, a refusal
        self.progress = asyncio.Event()
        self.done = asyncio.Event()
        self.reading = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, port: int, tally: Tally, is_reply: Callable[[bytes], bool] = lambda line: False
    ) -> Conn:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, limit=1 << 20, local_addr=(ATTACKER_HOST, 0)), 10
        )
        tally.numbers["connections"] += 1
        return cls(reader, writer, tally, is_reply)

    async def _read(self) -> None:
        end = "closed by the server without a reason"
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                key = classify(line)
                if key is not None:
                    self.tally.add(key)
                    if key.startswith(("bye", "refused")):
                        self.said = key
                if self.is_reply(line):
                    self.replies += 1
                if line.startswith(b"*** Welcome to groupchat"):
                    self.greeted = True
                self.progress.set()
        except (OSError, ValueError):
            end = "reset by the server without a reason"
        finally:
            if not self.said:
                self.tally.add(end)
            self.done.set()
            self.progress.set()

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)
            self.tally.numbers["lines_sent"] += data.count(b"\n")

    async def until(self, stop_at: float, condition: Callable[[], bool]) -> bool:
        """Wait until ``condition()`` or the connection ends or time is up; True if met."""
        while not condition():
            if self.done.is_set():
                return False
            self.progress.clear()
            left = stop_at - time.monotonic()
            if left <= 0:
                return False
            with suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), left)
        return True

    async def close(self) -> None:
        if not self.done.is_set():
            self.tally.add("still connected at the end")
            self.said = "still connected"
        self.writer.close()
        self.reading.cancel()
        with suppress(BaseException):
            await self.reading


async def telnet_do(port: int, tally: Tally, stop_at: float) -> None:
    """Connections that never read, writing IAC DO 1 as fast as the socket takes it."""
    loop = asyncio.get_running_loop()
    chunk = bytes((255, 253, 1)) * 10240

    async def one() -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((ATTACKER_HOST, 0))
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), 10)
            tally.numbers["connections"] += 1
            start = time.monotonic()
            while True:
                left = stop_at - time.monotonic()
                if left <= 0:
                    tally.add("still connected at the end (held at the byte rate)")
                    break
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, chunk), left)
                except TimeoutError:
                    continue
                except OSError:
                    # The server closed it: read what it said before it went.
                    said = b""
                    with suppress(OSError):
                        while data := sock.recv(65536):
                            said += data
                    reasons = [classify(line) for line in said.split(b"\n")]
                    reasons = [r for r in reasons if r and r.startswith("bye")]
                    tally.add(reasons[-1] if reasons else "reset by the server, nothing readable")
                    tally.numbers["seconds_to_close"] += time.monotonic() - start
                    break
                tally.numbers["bytes_accepted"] += len(chunk)
        finally:
            sock.close()

    await asyncio.gather(*(one() for _ in range(20)))


async def telnet_sb(port: int, tally: Tally, stop_at: float) -> None:
    """IAC SB and then megabytes without IAC SE; as soon as it is cut off, again."""
    payload = bytes((255, 250, 24)) + b"A" * (2 << 20)

    async def one() -> None:
        while time.monotonic() < stop_at:
            try:
                conn = await Conn.open(port, tally)
            except (OSError, TimeoutError):
                tally.add("connect failed")
                await asyncio.sleep(0.05)
                continue
            t0 = time.monotonic()
            conn.write(payload)
            with suppress(TimeoutError):
                await asyncio.wait_for(conn.done.wait(), 10)
            if not conn.done.is_set():
                tally.add("not cut off within 10 s")
            tally.numbers["ms_to_cut"] += (time.monotonic() - t0) * 1000
            await conn.close()

    await asyncio.gather(*(one() for _ in range(20)))


async def tls_silent(port: int, tally: Tally, stop_at: float) -> None:
    """200 TCP connections to the TLS port that say nothing; replaced when closed."""
    loop = asyncio.get_running_loop()
    lifetimes: list[float] = []

    async def one() -> None:
        while time.monotonic() < stop_at:
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((ATTACKER_HOST, 0))
            try:
                try:
                    await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), 10)
                except (OSError, TimeoutError):
                    tally.add("connect failed")
                    continue
                tally.numbers["connections"] += 1
                t0 = time.monotonic()
                try:
                    data = await asyncio.wait_for(
                        loop.sock_recv(sock, 4096), stop_at - time.monotonic()
                    )
                except TimeoutError:
                    tally.add("still connected at the end")
                    return
                except OSError:
                    data = None
                lifetimes.append(time.monotonic() - t0)
                if data is None:
                    tally.add("reset by the server (no TLS handshake)")
                elif not data:
                    tally.add("closed by the server (no TLS handshake)")
                else:
                    tally.add("the server sent something before any handshake")
            finally:
                sock.close()

    await asyncio.gather(*(one() for _ in range(200)))
    if lifetimes:
        tally.numbers["median_lifetime_ms"] = round(statistics.median(lifetimes) * 1000)
        tally.numbers["max_lifetime_ms"] = round(max(lifetimes) * 1000)


async def rooms(port: int, tally: Tally, stop_at: float) -> None:
    """Each joins 50 new rooms at once, then asks for /rooms 4 times a second."""

    async def one(i: int) -> None:
        listed = 0

        def answered(line: bytes) -> bool:
            nonlocal listed
            if line.startswith(b"*** Rooms"):
                listed += 1
                return False
            return line.startswith((b"*** Now talking in", b"!!! "))

        try:
            conn = await Conn.open(port, tally, answered)
        except (OSError, TimeoutError):
            tally.add("connect failed")
            return
        try:
            conn.write(b"".join(b"/join #a%d-%d\n" % (i, j) for j in range(50)))
            await conn.until(stop_at, lambda: conn.replies >= 50)
            tally.numbers["seconds_to_answer_joins"] += time.monotonic() - began
            polls = 0
            while time.monotonic() < stop_at and not conn.done.is_set():
                conn.write(b"/rooms\n")
                polls += 1
                await asyncio.sleep(0.25)
            await conn.until(time.monotonic() + 1, lambda: listed >= polls)
            tally.numbers["rooms_polls"] += polls
            tally.numbers["rooms_answers"] += listed
        finally:
            await conn.close()

    began = time.monotonic()

    await asyncio.gather(*(one(i) for i in range(40)))


async def logins(port: int, tally: Tally, stop_at: float) -> None:
    """/login alice wrongN, one attempt after the other; reconnecting when closed."""

    def answered(line: bytes) -> bool:
        return line.startswith((b"!!! login-", b"*** Disconnected"))

    async def one(i: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            try:
                conn = await Conn.open(port, tally, answered)
            except (OSError, TimeoutError):
                tally.add("connect failed")
                await asyncio.sleep(0.05)
                continue
            try:
                await conn.until(stop_at, lambda c=conn: c.greeted)
                while not conn.done.is_set() and time.monotonic() < stop_at:
                    n += 1
                    before = conn.replies
                    conn.write(f"/login alice wrong{i}-{n}\n".encode())
                    tally.numbers["attempts"] += 1
                    await conn.until(stop_at, lambda b=before, c=conn: c.replies > b)
            finally:
                await conn.close()

    await asyncio.gather(*(one(i) for i in range(20)))


async def windowed(
    port: int,
    tally: Tally,
    stop_at: float,
    lines: Callable[[int, int], bytes],
    is_reply: Callable[[bytes], bool],
    setup: bytes = b"",
    window: int = 10,
) -> None:
    """Lines as fast as the server answers them, ``window`` unanswered at most."""

    async def one(i: int) -> None:
        try:
            conn = await Conn.open(port, tally, is_reply)
        except (OSError, TimeoutError):
            tally.add("connect failed")
            return
        try:
            if setup:
                conn.write(setup)
            n = 0
            while time.monotonic() < stop_at and not conn.done.is_set():
                if n - conn.replies >= window:
                    await conn.until(stop_at, lambda n=n: n - conn.replies < window)
                    continue
                conn.write(lines(i, n))
                n += 1
            tally.numbers["replies"] += conn.replies
        finally:
            await conn.close()

    await asyncio.gather(*(one(i) for i in range(20)))


def pings(port: int, tally: Tally, stop_at: float) -> Any:
    return windowed(
        port,
        tally,
        stop_at,
        lambda i, n: b"/ping %d\n" % n,
        lambda line: line.startswith(b"*** pong"),
    )


def nicks(targets: list[str]) -> Callable[[int, Tally, float], Any]:
    variants = [v for name in targets for v in lookalikes(name)]
    wanted = set(variants)

    def attack(port: int, tally: Tally, stop_at: float) -> Any:
        def is_reply(line: bytes) -> bool:
            if b" is now known as " in line:
                new = line.rstrip(b"\r\n").rsplit(b" is now known as ", 1)[1].decode()
                if new in wanted:
                    tally.add(f"LOOK-ALIKE ACCEPTED: {new}")
                return True
            return line.startswith(b"!!! ")

        return windowed(
            port,
            tally,
            stop_at,
            lambda i, n: f"/nick {variants[(i * 7 + n) % len(variants)]}\n".encode(),
            is_reply,
            setup=f"/join {ROOM}\n".encode(),
        )

    return attack


async def attacker(kind: str, port: int, seconds: float, tail: float, targets: list[str]) -> Any:
    phase_end = time.monotonic() + seconds
    stop_at = phase_end + (tail if kind in PERSISTENT else 0.0)
    tally = Tally(phase_end if stop_at > phase_end else math.inf)
    run = {
        "telnet-do": telnet_do,
        "telnet-sb": telnet_sb,
        "tls-silent": tls_silent,
        "rooms": rooms,
        "logins": logins,
        "pings": pings,
        "lookalike": nicks(targets),
    }[kind]
    # Bounded whatever happens: the attack is cancelled 30 s after it should have ended.
    with suppress(TimeoutError):
        await asyncio.wait_for(run(port, tally, stop_at), stop_at - time.monotonic() + 30)
    numbers: dict[str, float] = dict(tally.numbers)
    made = max(1, numbers.get("connections", 0))
    for total, mean in (
        ("ms_to_cut", "mean_ms_to_cut"),
        ("seconds_to_close", "mean_seconds_to_close"),
        ("seconds_to_answer_joins", "mean_seconds_to_answer_joins"),
    ):
        if total in numbers:
            numbers[mean] = numbers.pop(total) / made
    if "bytes_accepted" in numbers:
        # By the kernel: socket buffers take megabytes before the server reads them.
        numbers["kernel_took_mb_per_connection"] = numbers.pop("bytes_accepted") / made / 2**20
    return {
        "outcomes": dict(tally.phase.most_common()),
        "tail_outcomes": dict(tally.tail.most_common()),
        **numbers,
        "cpu": time.process_time(),
    }


def attacker_main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attack")
    parser.add_argument("--attacker", choices=list(ATTACKS), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=ATTACK)
    parser.add_argument("--tail", type=float, default=0.0)
    parser.add_argument("--targets", default=",".join(member_name(k) for k in range(MEMBERS)))
    args = parser.parse_args()
    # The attacker shares CPU 1 with the members who measure latency; a reconnecting
    # attacker keeps that core busy, and at equal priority the members' own event loop
    # would wait for it, which is the generator's delay, not the server's.  At the
    # lowest priority it still takes every cycle the members leave.
    os.nice(19)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    report = run_loop(
        attacker(args.attacker, args.port, args.seconds, args.tail, args.targets.split(","))
    )
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    attacker_main()
