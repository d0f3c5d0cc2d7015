"""Connection scale: thousands of clients that set a nickname, join a room and heartbeat.

For each size N our server is started afresh (pinned to CPU 0) and measured for:
- the time to connect all N, each named and seated in ``#scale`` (confirmed by the server);
- the server's resident memory per connection (RSS growth over N);
- the time for one message to reach all the others (median of 5);
- that none is timed out while all send ``/ping`` every heartbeat interval, over more than
  one heartbeat timeout;
- the duration of one heartbeat sweep over N members, timed in this process on the same
  ``ChatService`` code (steady state, and the worst case: all N due for a warning at once).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import suppress
from functools import partial
from typing import Any

from twisted.internet import task

from bench.common import (
    MARK,
    Conn,
    groupchat_server,
    rss_bytes,
    run_loop,
    summarize,
    tap,
    with_steal,
)
from bench.references import HOST
from twisted_chat.core.local import Remote
from twisted_chat.core.service import ChatService, HeartbeatPolicy

INTERVAL = 5.0  # the server's --heartbeat-interval during the run
TIMEOUT = 15.0  # and its --heartbeat-timeout: the run holds longer than this
SWEEP = 1.0
ROOM = b"#scale"
BROADCASTS = 5


async def _read_until(reader: asyncio.StreamReader, prefix: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection while joining")
        if line.startswith(prefix):
            return


async def scale(port: int, pid: int, clients: int, hold: float) -> dict[str, float]:
    rss_before = rss_bytes(pid)
    gate = asyncio.Semaphore(200)

    async def one(i: int) -> Conn:
        async with gate:
            reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
            # As our client does: nickname and room with the first lines, so the server
            # seats it there at once (see "Arriving" in docs/PROTOCOL.md).
            writer.write(b"/nick u%d\n/join %s\n" % (i, ROOM))
            await _read_until(reader, b"*** Now talking in " + ROOM)
            return reader, writer

    start = time.perf_counter()
    conns = await asyncio.gather(*(one(i) for i in range(clients)))
    connect_s = time.perf_counter() - start

    counts = [0] * clients
    closed = [False] * clients
    # arrivals[k]: receivers that have k broadcasts; everyone is in when it is clients - 1.
    arrivals = [0] * (BROADCASTS + 1)
    complete = asyncio.Event()

    def receiver(i: int) -> Any:
        tail = b""

        def on_data(data: bytes) -> None:
            nonlocal tail
            before = counts[i]
            counts[i] += (tail + data).count(MARK)
            tail = data[-1:]
            for k in range(before + 1, min(counts[i], BROADCASTS) + 1):
                arrivals[k] += 1
                if arrivals[k] == clients - 1:
                    complete.set()

        return on_data

    for i, conn in enumerate(conns):
        tap(conn, receiver(i), on_close=lambda i=i: closed.__setitem__(i, True))

    stop = asyncio.Event()

    async def heartbeats() -> None:
        """Every client pings once per interval, spread evenly over it."""
        slices = 50
        n = 0
        while not stop.is_set():
            for i in range(n % slices, clients, slices):
                if not closed[i]:
                    conns[i][1].write(b"/ping\n")
            n += 1
            await asyncio.sleep(INTERVAL / slices)

    beating = asyncio.create_task(heartbeats())
    await asyncio.sleep(1.0)  # let the joins' summaries and first pings settle
    rss_after = rss_bytes(pid)

    reach = []
    sender = conns[0][1]
    for k in range(BROADCASTS):
        complete.clear()
        t0 = time.perf_counter()
        sender.write(MARK + b"%d|" % k + b"." * 50 + b"\n")
        with suppress(TimeoutError):
            await asyncio.wait_for(complete.wait(), 10)
        reach.append(time.perf_counter() - t0)
        await asyncio.sleep(0.2)
    reached = sum(1 for c in counts[1:] if c >= BROADCASTS)

    await asyncio.sleep(max(0.0, hold - BROADCASTS * 0.2))
    stop.set()
    await beating
    dropped = sum(closed)
    for _, writer in conns:
        writer.close()
    return {
        "connect_s": connect_s,
        "rss_per_conn_bytes": (rss_after - rss_before) / clients,
        "broadcast_ms": statistics.median(reach) * 1000,
        "broadcast_max_ms": max(reach) * 1000,
        "reached": reached,
        "expected": clients - 1,
        "timed_out": dropped,
    }


def sweep_ms(members: int) -> dict[str, float]:
    """One sweep over ``members``: when none is due, and when every one is due a warning."""
    clock = task.Clock()
    service = ChatService(clock, HeartbeatPolicy(interval=INTERVAL, timeout=TIMEOUT, sweep=SWEEP))
    service.summarize_above = 100
    people = [service.connect(Remote()) for _ in range(members)]
    clock.advance(SWEEP)
    service.sweep()  # the first sweep only records when it ran

    def timed() -> float:
        t0 = time.perf_counter()
        service.sweep()
        return (time.perf_counter() - t0) * 1000

    steady = []
    for _ in range(5):
        clock.advance(SWEEP)
        for member in people:
            service.touch(member)
        steady.append(timed())
    # Then all fall silent at once: one sweep warns all N, a later one removes all N.
    busiest = []
    for _ in range(int((TIMEOUT + 2 * SWEEP) / SWEEP)):
        clock.advance(SWEEP)
        busiest.append(timed())
    assert not service.members, "the mass timeout did not happen"
    return {"sweep_steady_ms": statistics.median(steady), "sweep_mass_timeout_ms": max(busiest)}


def run_scale(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    hold = TIMEOUT + 2 * SWEEP + 1
    extra = [
        "--heartbeat-interval",
        str(INTERVAL),
        "--heartbeat-timeout",
        str(TIMEOUT),
        "--sweep-interval",
        str(SWEEP),
    ]
    for clients in args.clients:
        runs = []
        for _ in range(args.repeat):
            with groupchat_server(extra) as (port, pid):
                runs.append(with_steal(partial(run_loop, scale(port, pid, clients, hold))))
        row: dict[str, Any] = {"server": "groupchat", "clients": clients}
        row |= summarize(runs, ["connect_s", "rss_per_conn_bytes", "broadcast_ms"])
        row["broadcast_max_ms"] = max(r["broadcast_max_ms"] for r in runs)
        row["not_reached"] = max(r["expected"] - r["reached"] for r in runs)
        row["timed_out"] = max(r["timed_out"] for r in runs)
        row["steal"] = statistics.median(r["steal"] for r in runs)
        row["steal_max"] = max(r["steal"] for r in runs)
        row |= sweep_ms(clients)
        rows.append(row)
        print(
            f"groupchat        N={clients:<6} connected+joined in {row['connect_s']:.2f} s "
            f"({row['connect_s_min']:.2f}-{row['connect_s_max']:.2f})  "
            f"RSS/conn {row['rss_per_conn_bytes'] / 1024:.1f} KiB  "
            f"one message to all {row['broadcast_ms']:.0f} ms (max {row['broadcast_max_ms']:.0f})  "
            f"not reached {row['not_reached']}  timed out {row['timed_out']}  "
            f"sweep {row['sweep_steady_ms']:.3f} ms (all timing out at once: "
            f"{row['sweep_mass_timeout_ms']:.1f} ms)  steal up to {row['steal_max']:.0%}",
            flush=True,
        )
    return rows
