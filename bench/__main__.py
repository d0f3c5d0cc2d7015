"""Fan-out benchmark: our server beside a minimal Twisted broadcast server.

    python -m bench fanout --receivers 10 100 --senders 1 --messages 2000 --repeat 3

Each server runs in its own process pinned to CPU 0 (where possible); this load generator
runs on CPU 1.  Receivers join one room; senders send 64-byte messages, never more than
``--window`` messages ahead of the slowest receiver, so kernel buffers are not what is
measured.  Deliveries per second = receivers x messages / time until every receiver has
every message.  Loopback only; every run is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
MARK = b"M|"


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if os.path.exists("/usr/bin/taskset") else []


@contextmanager
def groupchat_server() -> Iterator[tuple[int, int]]:
    """Our server, with every input limit lifted (they are not what is measured)."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        twistd = Path(sys.executable).with_name("twistd")
        argv = [
            *_pin(0),
            sys.executable,
            str(twistd),
            "-n",
            "--pidfile=",
            "groupchat",
            "--port",
            f"tcp:0:interface={HOST}",
            "--port-file",
            str(port_file),
            "--rate",
            "1e9",
            "--burst",
            "1e9",
            "--byte-rate",
            "1e12",
            "--max-clients",
            "100000",
            "--max-per-address",
            "100000",
            "--send-queue",
            "64M",
            "--heartbeat-interval",
            "60",
            "--heartbeat-timeout",
            "600",
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(Path(tmp) / "log", "wb") as log:
            proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not port_file.exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("groupchat did not start")
                time.sleep(0.05)
            yield int(port_file.read_text().strip().rsplit(":", 1)[1]), proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextmanager
def minimal_server() -> Iterator[tuple[int, int]]:
    argv = [*_pin(0), sys.executable, "-m", "bench.minimal_server", "0"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline()), proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


SERVERS = {"groupchat": groupchat_server, "minimal-twisted": minimal_server}


async def _settle(reader: asyncio.StreamReader) -> None:
    """Read whatever greeting the server sends until it has been quiet for 50 ms."""
    while True:
        try:
            await asyncio.wait_for(reader.read(65536), 0.05)
        except TimeoutError:
            return


async def fanout(
    port: int, receivers: int, senders: int, messages: int, window: int, timeout: float
) -> dict[str, float]:
    conns = []
    for _ in range(receivers + senders):
        conns.append(await asyncio.open_connection(HOST, port))
    await asyncio.gather(*(_settle(r) for r, _ in conns))
    # Everyone's join notices have gone out; drain once more so none is still in flight.
    await asyncio.gather(*(_settle(r) for r, _ in conns))
    recv, send = conns[:receivers], conns[receivers:]
    expected = senders * messages
    counts = [0] * receivers
    done = asyncio.Event()
    progress = asyncio.Event()
    finished = 0

    async def receive(i: int, reader: asyncio.StreamReader) -> None:
        nonlocal finished
        tail = b""
        while counts[i] < expected:
            data = await reader.read(262144)
            if not data:
                return
            counts[i] += (tail + data).count(MARK)
            tail = data[-1:]
            progress.set()
        finished += 1
        if finished == receivers:
            done.set()

    sent = 0

    async def send_all(k: int, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        for n in range(messages):
            while sent - min(counts) > window:
                progress.clear()
                await progress.wait()
            body = MARK + f"{k}|{n}|".encode()
            writer.write(body.ljust(63, b".") + b"\n")
            sent += 1
            if n % 16 == 0:
                await writer.drain()
        await writer.drain()

    tasks = [asyncio.create_task(receive(i, r)) for i, (r, _) in enumerate(recv)]
    start = time.perf_counter()
    await asyncio.gather(*(send_all(k, w) for k, (_, w) in enumerate(send)))
    with suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    elapsed = time.perf_counter() - start
    delivered = sum(counts)
    for task in tasks:
        task.cancel()
    for _, writer in conns:
        writer.close()
    return {
        "deliveries_per_s": delivered / elapsed,
        "seconds": elapsed,
        "lost": receivers * expected - delivered,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def latency(
    port: int, pid: int, receivers: int, rate: float, seconds: float, timeout: float
) -> dict[str, float]:
    """One sender at a fixed rate; each message carries its send time."""
    conns = [await asyncio.open_connection(HOST, port) for _ in range(receivers + 1)]
    await asyncio.gather(*(_settle(r) for r, _ in conns))
    await asyncio.gather(*(_settle(r) for r, _ in conns))
    total = int(rate * seconds)
    samples: list[float] = []
    got = [0] * receivers

    async def receive(i: int, reader: asyncio.StreamReader) -> None:
        buffer = b""
        while got[i] < total:
            data = await reader.read(262144)
            if not data:
                return
            now = time.perf_counter()
            *lines, buffer = (buffer + data).split(b"\n")
            for line in lines:
                at = line.find(MARK)
                if at >= 0:
                    sent = float(line[at + 2 :].split(b"|", 1)[0])
                    samples.append(now - sent)
                    got[i] += 1

    tasks = [asyncio.create_task(receive(i, r)) for i, (r, _) in enumerate(conns[:receivers])]
    _, writer = conns[receivers]
    cpu_before = cpu_seconds(pid)
    start = time.perf_counter()
    for n in range(total):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write((MARK + f"{time.perf_counter():.6f}|".encode()).ljust(63, b".") + b"\n")
    with suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    wall = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu_before
    for _, w in conns:
        w.close()
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] * 1000

    return {
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": samples[-1] * 1000,
        "server_cpu": cpu / wall,
        "lost": receivers * total - len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=["fanout", "latency"])
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[500, 2000], help="latency: messages per second"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="latency: how long")
    parser.add_argument("--receivers", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--senders", type=int, nargs="+", default=[1])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    results: list[dict[str, object]] = []
    if args.scenario == "latency":
        for rate in args.rates:
            for name in args.servers:
                runs = []
                for _ in range(args.repeat):
                    with SERVERS[name]() as (port, pid):
                        runs.append(
                            asyncio.run(
                                latency(
                                    port, pid, args.receivers[0], rate, args.seconds, args.timeout
                                )
                            )
                        )
                row = {"server": name, "rate": rate, "receivers": args.receivers[0]}
                for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms", "server_cpu", "lost"):
                    row[key] = statistics.median(r[key] for r in runs)
                results.append(row)
                print(
                    f"{name:16} rate={rate:<6g} R={args.receivers[0]:<4} "
                    f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
                    f"p99.9 {row['p999_ms']:.2f} ms  max {row['max_ms']:.2f} ms  "
                    f"server CPU {row['server_cpu']:.0%}  lost {row['lost']}",
                    flush=True,
                )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return
    for receivers in args.receivers:
        for senders in args.senders:
            for name in args.servers:
                runs = []
                for _ in range(args.repeat):
                    with SERVERS[name]() as (port, _pid):
                        runs.append(
                            asyncio.run(
                                fanout(
                                    port,
                                    receivers,
                                    senders,
                                    args.messages,
                                    args.window,
                                    args.timeout,
                                )
                            )
                        )
                rates = [r["deliveries_per_s"] for r in runs]
                row = {
                    "server": name,
                    "receivers": receivers,
                    "senders": senders,
                    "median": statistics.median(rates),
                    "min": min(rates),
                    "max": max(rates),
                    "lost": max(r["lost"] for r in runs),
                }
                results.append(row)
                print(
                    f"{name:16} R={receivers:<5} S={senders:<3} "
                    f"{row['median']:>12,.0f} deliveries/s "
                    f"(min {row['min']:,.0f}, max {row['max']:,.0f}, lost {row['lost']})",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
