"""100,000 clients on one machine: ``--workers`` processes sharing one port and one Redis.

One process may hold at most ``ulimit -n`` (20,000 here) descriptors, so the server runs
as ``--workers W`` processes behind one port, joined through a Redis backplane, and the
load is spread over ``--generators G`` processes, each connecting from its own loopback
source address (127.0.0.2, 127.0.0.3, ...) so no address runs out of ephemeral ports.

Measured, in order:
- seating: every client connected and greeted in ``#lobby`` (time from the first connect
  to the last greeting, all generators at once);
- holding: every client sends ``/ping`` once per heartbeat interval (the server's default,
  10 s, spread evenly) for ``--hold`` seconds (default two heartbeat timeouts): none may be
  removed;
- one message said in ``#lobby`` must reach every other client (the time until the last);
- memory: RSS of the server's processes (the parent and every worker) per connection, and
  Redis's; CPU seconds of the workers and of Redis over the whole run.

Run:  python -m bench.hundredk --clients 100000 --workers 8 --generators 8 [--write]
Everything runs on loopback, is bounded in time, and stops by itself; only processes this
run started are ended, by their PIDs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

from bench.common import ROOT, groupchat_server, rss_bytes, run_loop, tree_cpu_seconds
from bench.references import HOST, redis_server

HEARTBEAT_INTERVAL = 10.0  # the server's defaults: the run uses them unchanged
HEARTBEAT_TIMEOUT = 30.0
MARK = b"hundredk-mark"
SEAT_TIMEOUT = 600.0
DELIVERY_TIMEOUT = 300.0
IN_FLIGHT = 100  # connects under way at once, per generator


# -- one load generator (a child process) -----------------------------------------------


class Client(asyncio.Protocol):
    """One connection: greeted, then it pings; it notes removal and the marked line."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.seated = asyncio.get_running_loop().create_future()
        self.marked = False
        self.closed = False
        self.speaker = False
        self.abandoned = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" not in data:
            return
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if not self.seated.done():
                if line.startswith(b"*** Now talking in #lobby"):
                    self.seated.set_result(True)
                elif line.startswith((b"!!! refused", b"*** Disconnected")):
                    self.seated.set_exception(ConnectionError(line.decode(errors="replace")))
            elif MARK in line and not self.marked:
                self.marked = True
                self.gen.marked += 1
            elif line.startswith(b"*** Disconnected"):
                self.gen.removals.append(line.decode(errors="replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.seated.done():
            self.seated.set_exception(ConnectionError("closed before its greeting"))
        elif not self.gen.ending and not self.abandoned:
            self.gen.lost += 1

    def abandon(self) -> None:
        self.abandoned = True
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)


class Generator:
    def __init__(self, index: int, port: int, count: int) -> None:
        self.index = index
        self.port = port
        self.count = count
        self.source = f"127.0.0.{2 + index}"
        self.clients: list[Client] = []
        self.marked = 0
        self.lost = 0
        self.removals: list[str] = []
        self.ending = False
        self.retries = 0  # connections refused (a worker's share full) or greeted too late

    async def connect_one(self, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        async with gate:
            for attempt in range(5):
                try:
                    _, client = await loop.create_connection(
                        lambda: Client(self), "127.0.0.1", self.port, local_addr=(self.source, 0)
                    )
                    try:
                        await asyncio.wait_for(client.seated, 60)
                    except (ConnectionError, TimeoutError):
                        client.abandon()  # not a client of the run: its closing is not counted
                        raise
                    self.clients.append(client)
                    return
                except (OSError, ConnectionError, TimeoutError):
                    self.retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise RuntimeError(f"generator {self.index}: a client could not be seated")

    async def ping_forever(self) -> None:
        """Every client pings once per interval, spread over it in 10 slices."""
        slice_no = 0
        while not self.ending:
            for client in self.clients[slice_no::10]:
                client.send(b"/ping\r\n")
            slice_no = (slice_no + 1) % 10
            await asyncio.sleep(HEARTBEAT_INTERVAL / 10)


def generator_main(index: int, port: int, count: int, conn: Any) -> None:
    """A child process: seat ``count`` clients, ping, then do what the parent says."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run_loop(_generate(Generator(index, port, count), conn))


async def _generate(gen: Generator, conn: Any) -> None:
    loop = asyncio.get_running_loop()

    async def ask() -> Any:
        return await loop.run_in_executor(None, conn.recv)

    assert await ask() == "seat"
    started = time.time()
    gate = asyncio.Semaphore(IN_FLIGHT)
    # Seated clients heartbeat while the others are still being seated: seating all of
    # them takes longer than the heartbeat timeout.
    pinger = asyncio.create_task(gen.ping_forever())
    await asyncio.gather(*(gen.connect_one(gate) for _ in range(gen.count)))
    conn.send({"seated_at": time.time(), "started_at": started, "count": len(gen.clients),
               "retries": gen.retries})  # fmt: skip
    while True:
        order = await ask()
        if order == "say":
            speaker = next(c for c in gen.clients if not c.closed)
            speaker.speaker = True
            speaker.send(b"%s from generator %d\r\n" % (MARK, gen.index))
            conn.send({"said_at": time.time()})
        elif order == "await-mark":
            expected = sum(not c.closed and not c.speaker for c in gen.clients)
            deadline = time.monotonic() + DELIVERY_TIMEOUT
            while gen.marked < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            conn.send({"marked": gen.marked, "expected": expected, "at": time.time()})
        elif order == "report":
            alive = sum(not c.closed for c in gen.clients)
            conn.send({"alive": alive, "lost": gen.lost, "removals": gen.removals[:5]})
        elif order == "stop":
            gen.ending = True
            pinger.cancel()
            for client in gen.clients:
                if client.transport is not None:
                    client.transport.close()
            conn.send({"stopped": True})
            return


# -- the run (the parent process) -------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(FileNotFoundError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _server_rss(pid: int) -> int:
    total = rss_bytes(pid)
    for child in _children(pid):
        with suppress(FileNotFoundError, RuntimeError):
            total += rss_bytes(child)
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    per = [args.clients // args.generators] * args.generators
    per[0] += args.clients - sum(per)
    with redis_server() as (redis_port, redis_pid), groupchat_server(
        # The default heartbeat; each worker's share of --max-clients just under its
        # descriptor limit.
        [
            "--backplane", f"redis://{HOST}:{redis_port}", "--workers", str(args.workers),
            "--max-clients", str(args.workers * 19_000),
        ],
        cpus="0,1", ready="joined the network", ready_count=args.workers, keep_log=args.log,
    ) as (port, pid):  # fmt: skip
        rss0, redis_rss0 = _server_rss(pid), rss_bytes(redis_pid)
        cpu0, redis_cpu0 = tree_cpu_seconds(pid), tree_cpu_seconds(redis_pid)
        ctx = multiprocessing.get_context("spawn")
        pipes, procs = [], []
        for i, count in enumerate(per):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=generator_main, args=(i, port, count, child), daemon=True)
            p.start()
            pipes.append(parent)
            procs.append(p)
        try:
            return _measure(args, pipes, pid, redis_pid, rss0, redis_rss0, cpu0, redis_cpu0)
        finally:
            for pipe in pipes:
                with suppress(OSError):
                    pipe.send("stop")
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()


def _ask(pipes: list[Any], order: str, timeout: float) -> list[dict[str, Any]]:
    for pipe in pipes:
        pipe.send(order)
    answers = []
    deadline = time.monotonic() + timeout
    for pipe in pipes:
        if not pipe.poll(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"no answer to {order!r} within {timeout} s")
        answers.append(pipe.recv())
    return answers


def _measure(
    args: argparse.Namespace, pipes: list[Any], pid: int, redis_pid: int,
    rss0: int, redis_rss0: int, cpu0: float, redis_cpu0: float,
) -> dict[str, Any]:  # fmt: skip
    seated = _ask(pipes, "seat", SEAT_TIMEOUT)
    started = min(s["started_at"] for s in seated)
    seat_s = max(s["seated_at"] for s in seated) - started
    total = sum(s["count"] for s in seated)
    print(f"seated {total} clients in {seat_s:.1f} s", flush=True)
    rss1, redis_rss1 = _server_rss(pid), rss_bytes(redis_pid)
    time.sleep(args.hold)
    held = _ask(pipes, "report", 30)
    alive = sum(h["alive"] for h in held)
    removed = sum(h["lost"] for h in held)
    print(f"after {args.hold:.0f} s of heartbeats: {alive} connected, {removed} removed",
          flush=True)  # fmt: skip
    said = _ask(pipes[:1], "say", 10)[0]["said_at"]
    marked = _ask(pipes, "await-mark", DELIVERY_TIMEOUT + 10)
    reached = sum(m["marked"] for m in marked)
    expected = sum(m["expected"] for m in marked)
    deliver_s = max(m["at"] for m in marked) - said
    cpu1, redis_cpu1 = tree_cpu_seconds(pid), tree_cpu_seconds(redis_pid)
    result = {
        "clients": total,
        "workers": args.workers,
        "generators": args.generators,
        "seat_s": round(seat_s, 2),
        "seat_per_s": round(total / seat_s),
        "seat_retries": sum(s["retries"] for s in seated),
        "hold_s": args.hold,
        "connected_after_hold": alive,
        "removed": removed,
        "removals": [r for h in held for r in h["removals"]][:5],
        "message_reached": reached,
        "message_expected": expected,
        "message_all_s": round(deliver_s, 2),
        "server_rss_mib": round(rss1 / 2**20),
        "server_bytes_per_connection": round((rss1 - rss0) / total),
        "redis_rss_mib": round(redis_rss1 / 2**20),
        "redis_bytes_per_connection": round((redis_rss1 - redis_rss0) / total),
        "server_cpu_s": round(cpu1 - cpu0, 1),
        "redis_cpu_s": round(redis_cpu1 - redis_cpu0, 1),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hundredk",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--generators", type=int, default=8)
    parser.add_argument("--hold", type=float, default=2 * HEARTBEAT_TIMEOUT + 5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--log", help="copy the server's log here at the end")
    parser.add_argument("--write", action="store_true", help="write docs/bench/hundredk.json")
    args = parser.parse_args(argv)
    rounds = []
    for _ in range(args.rounds):
        result = run(args)
        print(json.dumps(result, indent=1), flush=True)
        rounds.append(result)
    summary = {
        "rounds": rounds,
        "median_seat_s": statistics.median(r["seat_s"] for r in rounds),
        "median_message_all_s": statistics.median(r["message_all_s"] for r in rounds),
    }
    if args.write:
        out = ROOT / "docs" / "bench" / "hundredk.json"
        out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
