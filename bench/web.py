"""The web door (``--web``): WebSocket clients beside line-protocol clients, same run.

    python -m bench web --rounds 3 --write

Every server is our own, started afresh for every run with both doors open (the line
port and ``--web``), pinned to CPU 0; this generator runs on CPU 1.  Two measurements:

- **Fan-out at saturation**, as in the ``fanout`` scenario (one sender, 64-byte messages,
  at most ``--window`` messages ahead of the slowest receiver, every receiver must get
  every message), in runs of at least ``--deliveries`` (10 M here: the line door does
  15-25 M a second), in the setups of ``--doors``: ``line``, receivers and sender on the
  line door (the baseline); ``ws``, the receivers on WebSockets and the sender on the
  line door; ``ws-ws``, everyone on WebSockets; ``line-json``, a control: the line door
  with its receivers in ``/format json``, the rendering a WebSocket gets.  Each round
  runs every setup once, one after the other; a setup's ratio to ``line`` is taken
  within a round, then the median over the rounds (``--rounds``).  Besides deliveries
  a second, each run reports deliveries per second of the server's CPU time, what the
  server would do with a core to itself when the generator was the limit.  A run during
  which the hypervisor or other processes took more than a little of the two cores is
  redone (``least_disturbed``).
- **Memory per connection**: ``--clients`` connections (10,000) on each door, each setting
  a nickname and joining ``#scale`` as it arrives, all sending ``/ping`` every heartbeat
  interval (5 s; the server times out after 15 s of silence); the server's RSS growth over
  the connections, read once the last one has been seated and every one has pinged at
  least once, divided by their number.  Each round seats one server's worth of line
  connections and another's of WebSockets.

A WebSocket client here is a hand-written RFC 6455 client: a ``GET /ws`` upgrade with a
fresh ``Sec-WebSocket-Key`` (the ``Sec-WebSocket-Accept`` answer is checked), masked
frames to the server, and receivers that walk every frame header they are sent
(``scan``): the count of messages is the count of text frames holding one, and a close
frame, a fragment, a masked or a non-text frame fails the run.  Walking headers one by
one in Python would cost the generator more CPU per delivery than the server spends, so
runs of frames with the same header (the same length: most of a broadcast) are checked
at once, with strided slices, in C; line receivers are read the same way
(``scan_lines``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import statistics
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    MARK,
    QUIET_HEARTBEATS,
    Conn,
    groupchat_server,
    rss_bytes,
    run_loop,
    summarize,
    tap,
    tree_cpu_seconds,
    with_steal,
)
from bench.load import STEAL_RETRY, TRIES, messages_for, paired_ratios
from bench.references import HOST

BASE = "line"
FANOUT_RATIOS = ["deliveries_per_s", "deliveries_per_cpu_s"]
# Other defaults than the fanout and scale scenarios' (given options still win).
# Runs of 10 M deliveries: the line door reaches 15-25 M a second here, which would make
# fanout's 2 M a run of a tenth of a second.
DEFAULTS: dict[str, Any] = {"receivers": [100, 1000], "clients": [10000], "deliveries": 1e7}

# The memory runs' heartbeat, as in bench/scale.py: every connection pings every
# INTERVAL seconds; one silent for TIMEOUT is removed.
INTERVAL = 5.0
TIMEOUT = 15.0
HEARTBEATS = ["--heartbeat-interval", str(INTERVAL), "--heartbeat-timeout", str(TIMEOUT)]
HEARTBEATS += ["--sweep-interval", "1"]
ROOM = b"#scale"

_MESSAGE_TYPE = b'{"type":"mes'  # how a message event's JSON starts (see ``scan``)
_TYPE_END = len(_MESSAGE_TYPE)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


@dataclass(frozen=True)
class Setup:
    """Which door the receivers and the senders use."""

    what: str
    receivers: str  # "line", "line-json" (the line door in /format json) or "ws"
    sender: str  # "line" or "ws"


SETUPS = {
    BASE: Setup("receivers and sender on the line door", "line", "line"),
    "ws": Setup("receivers on WebSockets, sender on the line door", "ws", "line"),
    "ws-ws": Setup("receivers and sender on WebSockets", "ws", "ws"),
    # A control: the WebSocket's events are JSON; here the line door's are too.
    "line-json": Setup(
        "receivers on the line door in /format json, sender on the line door",
        "line-json",
        "line",
    ),
}


def add_arguments(add: Callable[..., Any]) -> None:
    add(
        "--doors",
        nargs="+",
        default=list(SETUPS),
        choices=list(SETUPS),
        help=f"web: fan-out setups ({BASE} is the baseline of the ratios; ws: WebSocket "
        "receivers, ws-ws: WebSocket receivers and sender, line-json: line receivers in "
        "/format json)",
    )


# -- the server ------------------------------------------------------------------------


@contextmanager
def web_server(extra: list[str]) -> Iterator[tuple[tuple[int, int], int]]:
    """Our server with the line door and ``--web``; yields ``((line, web), pid)``."""
    with tempfile.TemporaryDirectory() as tmp:
        web_file = Path(tmp) / "web-port"
        web = ["--web", f"tcp:0:interface={HOST}:backlog=1024", "--web-port-file", str(web_file)]
        with groupchat_server([*extra, *web]) as (line_port, pid):
            deadline = time.monotonic() + 20
            while not web_file.exists():  # written when --web listens, as --port-file
                if time.monotonic() > deadline:
                    raise RuntimeError("groupchat did not open its --web port")
                time.sleep(0.05)
            web_port = int(web_file.read_text().strip().rsplit(":", 1)[1])
            yield (line_port, web_port), pid


def busy_seconds(cpus: tuple[int, ...] = (0, 1)) -> float:
    """CPU time the machine spent on ``cpus`` (user, system, interrupts), from /proc/stat:
    less the server's and the generator's, what everything else took meanwhile (other
    people's processes on this shared machine, and the kernel's softirq work)."""
    ticks = 0
    names = {f"cpu{cpu}" for cpu in cpus}
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in names:
            user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
            ticks += user + nice + system + irq + softirq
    return ticks / os.sysconf("SC_CLK_TCK")


# -- a WebSocket client ----------------------------------------------------------------


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unfragmented frame as a client must send it: masked, with a fresh key."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


def _headers(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    status, *lines = head.split(b"\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(b":")
        if name:
            fields[name.strip().lower()] = value.strip()
    return status, fields


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame, read through a stream (while joining): (first byte, payload)."""
    b0, b1 = await reader.readexactly(2)
    if b1 & 0x80:
        raise ConnectionError("the server sent a masked frame")
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0, await reader.readexactly(n)


async def ws_connect(port: int, first: bytes | None, room: bytes) -> Conn:
    """Upgrade a new connection to ``/ws``, send ``first`` (lines, one message) and read
    frames until the server says the connection is talking in ``room``."""
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (HOST.encode(), port, key)
    )
    status, fields = _headers(await reader.readuntil(b"\r\n\r\n"))
    if not status.startswith(b"HTTP/1.1 101 "):
        raise ConnectionError(f"no WebSocket upgrade: {status.decode(errors='replace')}")
    if fields.get(b"sec-websocket-accept") != base64.b64encode(hashlib.sha1(key + GUID).digest()):
        raise ConnectionError("wrong Sec-WebSocket-Accept")
    if first is not None:
        writer.write(client_frame(first))
    ready = b'"room":"%s"' % room
    while True:
        b0, payload = await read_frame(reader)
        if b0 == 0x88:
            raise ConnectionError(f"closed while joining: {payload[2:].decode(errors='replace')}")
        if payload.startswith(b'{"type":"current"') and ready in payload:
            return reader, writer


async def line_connect(port: int, first: bytes | None, room: bytes, json: bool = False) -> Conn:
    """A line-door connection, once talking in ``room``; with ``json``, in ``/format
    json`` from its first line (so it arrives in that format)."""
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    lines = ([b"/format json"] if json else []) + ([first] if first is not None else [])
    if lines:
        writer.write(b"\n".join(lines) + b"\n")
    ready = b'"room":"%s"' % room if json else b"*** Now talking in " + room
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection while joining")
        if line.startswith(b'{"type":"current"' if json else ready) and ready in line:
            return reader, writer


def scan(buf: bytes) -> tuple[int, int, int, int]:
    """Walk the server frames in ``buf``: ``(messages, frames, odd, end)``.

    ``messages``: whole text frames holding a ``message`` event (the room's only sender
    is the bench's); ``odd``: frames that are not one whole text message (a close, a
    fragment, binary...); ``end``: where the first incomplete frame starts (kept for
    the next chunk).  A masked frame raises ``ConnectionError``.

    Each header is read in full, but a run of frames with the same header (same flags,
    same length) is walked at once: ``buf[i + j::size]`` holds byte ``j`` of every
    frame's header, so the run is as long as every such column repeats its first byte
    (``lstrip``, in C).  Frame ``k`` of the run having the first one's header means
    frame ``k + 1`` starts ``size`` bytes further on: this is the walk, not a guess.  The
    event's type is read the same way: every JSON event starts ``{"type":"``, and
    ``message`` is the only type whose 1st and 3rd letters are ``m`` and ``s``, so the
    run also stops where the bytes at those two places change.
    """
    n = len(buf)
    i = messages = frames = odd = 0
    while n - i >= 2:
        b0, b1 = buf[i], buf[i + 1]
        if b1 & 0x80:
            raise ConnectionError("the server sent a masked frame")
        length = b1 & 0x7F
        head = 2
        if length == 126:
            if n - i < 4:
                break
            length, head = (buf[i + 2] << 8) | buf[i + 3], 4
        elif length == 127:
            if n - i < 10:
                break
            length, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
        size = head + length
        whole = min((n - i) // size, 1024)  # frames of this size that fit, at most
        if whole == 0:
            break
        typed = b0 == 0x81 and length >= _TYPE_END  # a whole text frame with a type
        run = whole
        if whole > 1:
            stop = i + whole * size
            places = [*range(head), head + 9, head + 11] if typed else range(head)
            for j in places:
                column = buf[i + j : stop : size]
                same = whole - len(column.lstrip(column[:1]))
                if same < run:
                    run = same
                    if run == 1:
                        break
        frames += run
        if b0 != 0x81:  # FIN and text: nothing else is expected
            odd += run
        elif typed and buf.startswith(_MESSAGE_TYPE, i + head):
            messages += run
        i += run * size
    return messages, frames, odd, i


def scan_lines(buf: bytes, json: bool = False) -> tuple[int, int]:
    """The line door's ``scan``: ``(messages, end)`` for the complete lines in ``buf``.

    A room message is a line starting ``[`` (``[#lobby] <nick> text``; notices start
    ``***``), or in JSON ``{"type":"mes`` (``message`` is the only type whose 1st and
    3rd letters are ``m`` and ``s``).  The room's one speaker is the bench's sender,
    whose lines all have one length (in JSON, within 2 bytes: the time stamp's
    digits), so they are walked as frames are: after one of them, a run of segments of
    its length, each starting as it does and ending in a newline (strided slices, in
    C), is a run of its lines (a line starting so is one of them, at least 70 bytes
    long: it cannot end a few bytes before or after the segment does, nor share it
    with another).  Notices are stepped over one by one.  Counting ``MARK`` in every
    byte, as ``fanout`` does, cost the generator about 60 ns a line (Python 3.11), this
    10 ns: at 60 the generator, not the server, was the line door's limit.
    """
    prefix, places = (_MESSAGE_TYPE, (0, 9, 11)) if json else (b"[", (0,))
    n = len(buf)
    i = messages = 0
    while True:
        j = buf.find(b"\n", i)
        if j < 0:
            return messages, i
        size = j + 1 - i
        if not buf.startswith(prefix, i):  # a notice: stepped over line by line
            i += size
            continue
        whole = min((n - i) // size, 1024)
        run = whole
        if whole > 1:
            stop = i + whole * size
            for place in (*places, size - 1):
                column = buf[i + place : stop : size]
                run = min(run, whole - len(column.lstrip(column[:1])))
        messages += run
        i += run * size


# -- fan-out ---------------------------------------------------------------------------


async def _quiet(seen: Callable[[], int], seconds: float = 0.1) -> None:
    """Wait until nothing has arrived for ``seconds`` (the last joins' notices)."""
    before = -1
    while seen() != before:
        before = seen()
        await asyncio.sleep(seconds)


async def door_fanout(
    setup: Setup,
    ports: tuple[int, int],
    pid: int,
    receivers: int,
    messages: int,
    window: int,
    timeout: float,
) -> dict[str, float]:
    """``load.fanout`` with one sender, each side on the door ``setup`` says."""
    line_port, web_port = ports
    gate = asyncio.Semaphore(100)

    async def one(door: str) -> Conn:
        async with gate:
            if door == "ws":
                return await ws_connect(web_port, None, b"#lobby")
            return await line_connect(line_port, None, b"#lobby", json=door == "line-json")

    recv = await asyncio.gather(*(one(setup.receivers) for _ in range(receivers)))
    send_reader, send_writer = await one(setup.sender)

    counts = [0] * receivers
    odd = [0] * receivers
    arrived = [0]  # chunks received, by everyone: to see the room fall quiet
    done = asyncio.Event()
    progress = asyncio.Event()
    expected = messages
    finished = 0

    def counted(i: int, got: int) -> None:
        nonlocal finished
        before = counts[i]
        counts[i] += got
        progress.set()
        if before < expected <= counts[i]:
            finished += 1
            if finished == receivers:
                done.set()

    json = setup.receivers == "line-json"

    def line_receiver(i: int) -> Callable[[bytes], None]:
        rest = b""

        def on_data(data: bytes) -> None:
            nonlocal rest
            arrived[0] += 1
            buf = rest + data if rest else data
            got, end = scan_lines(buf, json)
            rest = buf[end:]
            counted(i, got)

        return on_data

    def ws_receiver(i: int) -> Callable[[bytes], None]:
        rest = b""

        def on_data(data: bytes) -> None:
            nonlocal rest
            arrived[0] += 1
            if odd[i]:
                return  # lost track of the frames: the run has failed
            buf = rest + data if rest else data
            try:
                got, _, bad, end = scan(buf)
            except ConnectionError:
                got, bad, end = 0, 1, len(buf)
            rest = buf[end:]
            odd[i] += bad
            if bad:
                done.set()  # no use waiting: the run fails
            counted(i, got)

        return on_data

    receiver = ws_receiver if setup.receivers == "ws" else line_receiver
    for i, conn in enumerate(recv):
        tap(conn, receiver(i))

    async def drain() -> None:  # the sender reads what the room sends it, as in fanout
        while await send_reader.read(262144):
            pass

    draining = asyncio.create_task(drain())
    await _quiet(lambda: arrived[0])  # join notices carry no MARK: they count for nothing

    wire: Callable[[bytes], bytes] = (
        client_frame if setup.sender == "ws" else (lambda body: body + b"\n")
    )
    sent = 0
    slowest = 0

    async def send_all() -> None:
        nonlocal sent, slowest
        for n in range(messages):
            while sent - slowest > window:
                slowest = min(counts)
                if sent - slowest > window:
                    progress.clear()
                    await progress.wait()
            body = MARK + f"0|{n}|".encode()
            send_writer.write(wire(body.ljust(63, b".")))
            sent += 1
            if n % 16 == 0:
                await send_writer.drain()
        await send_writer.drain()

    cpu_before, gen_before = tree_cpu_seconds(pid), time.process_time()
    busy_before = busy_seconds()
    start = time.perf_counter()
    await send_all()
    with suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    elapsed = time.perf_counter() - start
    server_seconds = tree_cpu_seconds(pid) - cpu_before
    generator_seconds = time.process_time() - gen_before
    others = busy_seconds() - busy_before - server_seconds - generator_seconds
    delivered = min(sum(counts), receivers * expected)
    draining.cancel()
    for _, writer in [*recv, (send_reader, send_writer)]:
        writer.close()
    if any(odd):
        raise RuntimeError(f"{sum(odd)} frames were not whole text messages")
    if max(counts) > expected:
        raise RuntimeError(f"a receiver counted {max(counts)} messages of {expected} sent")
    return {
        "deliveries_per_s": delivered / elapsed,
        "seconds": elapsed,
        "lost": receivers * expected - delivered,
        "messages": expected,
        "server_cpu": server_seconds / elapsed,
        # What the server could do on a core of its own, whoever was the limit here.
        "deliveries_per_cpu_s": delivered / max(server_seconds, 1e-9),
        "generator_cpu": generator_seconds / elapsed,
        "others_cpu": max(others, 0.0) / elapsed,
    }


# -- memory per connection -------------------------------------------------------------


async def seat(door: str, ports: tuple[int, int], pid: int, clients: int) -> dict[str, float]:
    """``clients`` connections on ``door``, each named and seated in ``#scale`` and
    pinging every ``INTERVAL``; the server's RSS growth per connection."""
    line_port, web_port = ports
    rss_before = rss_bytes(pid)
    gate = asyncio.Semaphore(200)
    conns: list[Conn] = []
    closed: list[bool] = []
    ping = client_frame if door == "ws" else (lambda line: line + b"\n")

    async def one(i: int) -> None:
        first = b"/nick u%d\n/join %s" % (i, ROOM)  # one message: two lines
        async with gate:
            if door == "ws":
                conn = await ws_connect(web_port, first, ROOM)
            else:
                conn = await line_connect(line_port, first, ROOM)
        k = len(conns)
        conns.append(conn)
        closed.append(False)
        tap(conn, lambda data: None, on_close=lambda: closed.__setitem__(k, True))

    stop = asyncio.Event()

    async def heartbeats() -> None:
        """Every seated connection pings once per interval, spread evenly over it (from
        the start: seating them all may take longer than the timeout)."""
        slices = 50
        n = 0
        while not stop.is_set():
            for k in range(n % slices, len(conns), slices):
                if not closed[k]:
                    conns[k][1].write(ping(b"/ping"))
            n += 1
            await asyncio.sleep(INTERVAL / slices)

    beating = asyncio.create_task(heartbeats())
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    connect_s = time.perf_counter() - start
    await asyncio.sleep(INTERVAL + 1.0)  # every one has pinged since; answers settled
    rss_after = rss_bytes(pid)
    stop.set()
    await beating
    dropped = sum(closed)
    for _, writer in conns:
        writer.close()
    return {
        "connect_s": connect_s,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_per_conn_bytes": (rss_after - rss_before) / clients,
        "timed_out": dropped,
    }


# -- the scenario ----------------------------------------------------------------------


def _row_line(row: dict[str, Any]) -> str:
    if row["kind"] == "fanout":
        ratio = row.get(f"deliveries_per_s_ratio_to_{BASE}")
        per_cpu = row.get(f"deliveries_per_cpu_s_ratio_to_{BASE}")
        return (
            f"{row['setup']:9} R={row['receivers']:<5} {row['deliveries_per_s']:>12,.0f} "
            f"deliveries/s (min {row['deliveries_per_s_min']:,.0f}, "
            f"max {row['deliveries_per_s_max']:,.0f})"
            + (f" ({ratio:.2f} x {BASE})" if ratio is not None else "")
            + f"  per server CPU second {row['deliveries_per_cpu_s']:,.0f}"
            + (f" ({per_cpu:.2f} x {BASE})" if per_cpu is not None else "")
            + f"  server CPU {row['server_cpu']:.0%}  generator CPU {row['generator_cpu']:.0%}"
            f"  others {row['others_cpu']:.0%}  steal {row['steal']:.0%}  lost {row['lost']}"
        )
    ratio = row.get(f"rss_per_conn_bytes_ratio_to_{BASE}")
    return (
        f"{row['door']:9} N={row['clients']:<6} "
        f"RSS/conn {row['rss_per_conn_bytes'] / 1024:.1f} KiB "
        f"({row['rss_per_conn_bytes_min'] / 1024:.1f}-{row['rss_per_conn_bytes_max'] / 1024:.1f})"
        + (f" ({ratio:.2f} x {BASE})" if ratio is not None else "")
        + f"  seated in {row['connect_s']:.2f} s  timed out {row['timed_out']}"
        f"  steal up to {row['steal_max']:.0%}"
    )


OTHERS_RETRY = 0.15  # a run while others took more of the two cores than this is redone


def _disturbance(run: dict[str, float]) -> float:
    """Above 1: the run shared its cores (the hypervisor's steal, or other processes)."""
    return max(run["steal"] / STEAL_RETRY, run["others_cpu"] / OTHERS_RETRY)


def least_disturbed(measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``load.least_stolen`` for this shared machine: a run is redone (up to 3 tries, the
    least disturbed kept) when the hypervisor or other people's processes took CPU."""
    best: dict[str, float] | None = None
    for _ in range(TRIES):
        result = with_steal(measure)
        if best is None or _disturbance(result) < _disturbance(best):
            best = result
        if _disturbance(best) <= 1:
            break
    assert best is not None
    return best


def fanout_rounds(
    args: argparse.Namespace, receivers: int
) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[str]]]:
    """Every setup once a round, each on a fresh server; ``args.rounds`` rounds."""
    messages = messages_for(args, receivers)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in args.doors}
    failed: dict[str, list[str]] = {}

    def once(setup: Setup) -> dict[str, float]:
        with web_server(QUIET_HEARTBEATS) as (ports, pid):
            return run_loop(
                door_fanout(setup, ports, pid, receivers, messages, args.window, args.timeout)
            )

    for _ in range(args.rounds):
        for name in args.doors:
            try:
                runs[name].append(least_disturbed(partial(once, SETUPS[name])))
            except (OSError, RuntimeError, TimeoutError) as e:
                print(f"{name:6} R={receivers:<5} run failed: {e!r}", flush=True)
                failed.setdefault(name, []).append(repr(e))
    return {name: found for name, found in runs.items() if found}, failed


def run_web(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for receivers in args.receivers:
        measured, failed = fanout_rounds(args, receivers)
        base = measured.get(BASE)
        for name, runs in measured.items():
            setup = SETUPS[name]
            row: dict[str, Any] = {"kind": "fanout", "server": "groupchat", "setup": name}
            row["what"] = setup.what
            row |= {"receivers": receivers, "senders": 1, "sender_door": setup.sender}
            row |= {"receiver_door": setup.receivers}
            if base and name != BASE:
                row |= paired_ratios({name: runs, BASE: base}, FANOUT_RATIOS, name)
            row |= summarize(
                runs, [*FANOUT_RATIOS, "server_cpu", "generator_cpu", "others_cpu", "steal"]
            )
            row["lost"] = max(r["lost"] for r in runs)
            row["failed_runs"] = failed.get(name, [])
            rows.append(row)
            print(_row_line(row), flush=True)
    doors = [BASE, "ws"]
    for clients in args.clients:
        memory: dict[str, list[dict[str, float]]] = {door: [] for door in doors}
        for _ in range(args.rounds):
            for door in doors:
                with web_server(HEARTBEATS) as (ports, pid):
                    memory[door].append(
                        with_steal(partial(run_loop, seat(door, ports, pid, clients)))
                    )
        for door, runs in memory.items():
            row = {"kind": "memory", "server": "groupchat", "door": door, "clients": clients}
            if door != BASE:
                row |= paired_ratios({door: runs, BASE: memory[BASE]}, ["rss_per_conn_bytes"], door)
            row |= summarize(runs, ["rss_per_conn_bytes", "connect_s"])
            row["rss_before_bytes"] = statistics.median(r["rss_before_bytes"] for r in runs)
            row["timed_out"] = max(r["timed_out"] for r in runs)
            row["steal"] = statistics.median(r["steal"] for r in runs)
            row["steal_max"] = max(r["steal"] for r in runs)
            rows.append(row)
            print(_row_line(row), flush=True)
    return rows
