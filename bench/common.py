"""What every benchmark shares: the servers we start, the generator's event loop, and
reading a process's CPU time and memory from /proc."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any

from bench.references import HOST, ngircd_server, redis_server, stop

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "bench"
MARK = b"M|"


def _pin(cpu: int | str) -> list[str]:
    """Run on ``cpu``: one number, or a list for ``taskset -c`` such as ``"0,1"``."""
    return ["taskset", "-c", str(cpu)] if os.path.exists("/usr/bin/taskset") else []


# Heartbeats that never fire in a run: the server's default options in the benchmarks.
QUIET_HEARTBEATS = ["--heartbeat-interval", "60", "--heartbeat-timeout", "600"]


def groupchat_argv(extra: list[str], twistd: Sequence[str] = (), cpus: int | str = 0) -> list[str]:
    """Our server, with every input limit lifted (they are not what is measured).

    ``extra`` are groupchat's options, ``twistd`` twistd's own (``--reactor asyncio``).
    """
    return [
        *_pin(cpus),
        sys.executable,
        str(Path(sys.executable).with_name("twistd")),
        *twistd,
        "-n",
        "--pidfile=",
        "groupchat",
        "--port",
        f"tcp:0:interface={HOST}:backlog=1024",  # Twisted's default of 50 drops SYNs
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
        "--connect-rate",
        "1e9",
        "--send-queue",
        "64M",
        *extra,
    ]


@contextmanager
def groupchat_server(
    extra: list[str] | None = None,
    *,
    twistd: Sequence[str] = (),
    cpus: int | str = 0,
    ready: str | None = None,
    ready_count: int = 1,
    keep_log: str | None = None,
) -> Iterator[tuple[int, int]]:
    """Our server on a free loopback port, yielding ``(port, pid)`` once it listens and,
    with ``ready``, once its log has that text too (``joined the network``),
    ``ready_count`` times (once per worker). ``keep_log``: where its log is copied when
    it has stopped."""
    extra = [*(extra or QUIET_HEARTBEATS), *shlex.split(os.environ.get("GROUPCHAT_ARGS", ""))]
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        log_path = Path(tmp) / "log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        argv = [*groupchat_argv(extra, twistd, cpus), "--port-file", str(port_file)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while not port_file.exists() or (
                ready is not None
                and log_path.read_text(errors="replace").count(ready) < ready_count
            ):
                if time.monotonic() > deadline or proc.poll() is not None:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                    raise RuntimeError(f"groupchat did not start: {' / '.join(tail)}")
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)
            yield int(port_file.read_text().strip().rsplit(":", 1)[1]), proc.pid
        finally:
            stop(proc)  # a node whose Redis is gone may wait on it when told to stop
            if keep_log is not None:
                shutil.copyfile(log_path, keep_log)


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


SERVERS: dict[str, Callable[[], AbstractContextManager[tuple[int, int]]]] = {
    "groupchat": groupchat_server,
    "minimal-twisted": minimal_server,
    "ngircd": ngircd_server,
    "redis": redis_server,
}


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run the generator on uvloop when it is installed: it must not be the bottleneck."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its live descendants (a server's workers), to the
    nanosecond: the sum of its threads' run time in /proc (``cpu_seconds`` counts 10 ms
    ticks, too coarse for a process as little busy as Redis here)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError, ValueError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0]) / 1e9
            for child in (task / "children").read_text().split():
                with suppress(OSError):  # a child that ended meanwhile
                    total += tree_cpu_seconds(int(child))
    return total


#: Cumulative CPU seconds by name (``server``, ``redis``...), read before and after a run:
#: the run reports each as ``<name>_cpu``, its share of one core over the run.
Probe = Callable[[], dict[str, float]]


def cpu_probe(pid: int) -> Probe:
    """One process, reported as ``server_cpu``."""
    return lambda: {"server": cpu_seconds(pid)}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Tap(asyncio.Protocol):
    """Hands each chunk a connection receives to a callback: no stream, no coroutine.

    Receivers are switched to this once they are in the room; reading through asyncio
    streams cost the generator about as much CPU per delivery as the server spent.
    """

    def __init__(
        self, on_data: Callable[[bytes], None], on_close: Callable[[], None] | None
    ) -> None:
        self.on_data = on_data
        self.on_close = on_close

    def data_received(self, data: bytes) -> None:
        self.on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.on_close is not None:
            self.on_close()


def tap(
    conn: Conn, on_data: Callable[[bytes], None], on_close: Callable[[], None] | None = None
) -> None:
    reader, writer = conn
    leftover = bytes(reader._buffer)  # type: ignore[attr-defined]  # read before the switch
    reader._buffer.clear()  # type: ignore[attr-defined]
    writer.transport.set_protocol(Tap(on_data, on_close))
    if leftover:
        on_data(leftover)


def summarize(runs: list[dict[str, float]], keys: list[str]) -> dict[str, Any]:
    """Median of each figure, and its spread (min, max) across the runs."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in keys:
        values = [r[key] for r in runs]
        out[key] = statistics.median(values)
        out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    return out


def with_steal(run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run()``'s result, plus the share of CPU 0 the hypervisor took meanwhile."""
    stolen, start = steal_ticks(), time.monotonic()
    result = run()
    wall = (time.monotonic() - start) * os.sysconf("SC_CLK_TCK")
    result["steal"] = (steal_ticks() - stolen) / max(wall, 1.0)
    return result


def steal_ticks(cpu: int = 0) -> int:
    """Time the hypervisor gave CPU ``cpu`` to someone else (clock ticks, /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            return int(line.split()[8])
    return 0
