"""What keeping room history costs the server: the same load with and without it, one run.

    python -m bench history --rounds 5 --write

Two setups of our server, each started afresh for every run, pinned to CPU 0 (this
generator on CPU 1), alternating within each round:

- ``off``: ``--history none``, the baseline.
- ``on``: ``--history FILE --history-replay 20 --history-keep 5000``, a new SQLite file
  in a temporary directory for every run (so nobody joins to a replay, and every run
  writes to an empty file, the store's best case for inserts).

Measured with the loops of the ``fanout`` and ``latency`` scenarios: fan-out at
saturation with one sender into rooms of ``--receivers`` (100 and 1000), in runs of at
least ``--deliveries`` (20 M: several seconds, so a run spans several of the store's
1 s flushes, whose writes compete with the reactor for the core); and the latency of
``--rates`` messages a second in all (2000) from ``--latency-senders`` senders in turn
(10) into a room of ``--latency-receivers`` (100) for ``--seconds`` (5), every message
to every receiver (``lost`` counts what did not arrive).

CPU time is read from /proc per thread: ``reactor`` is the server's main thread, over
the measured part of the run (as ``server_cpu``); ``writer`` is every other thread (the
store's writer; nothing else runs) from the start of the measured part until
``TAIL`` seconds after its end, so it includes the write of the last batch. Per message
means over the messages sent; ``server_us_per_msg`` is the two together.

After every ``on`` run, once the server has stopped (SIGTERM: the store writes what is
pending), the file is read: at least ``min(sent, keep)`` rows, and for the fan-out's
numbered lines the newest must be the last message sent, with no number missing below it
down to the oldest row kept. A run that
fails this check counts as failed, not measured: the bench cannot time a store that did
not store.

Ratios are ``on`` over ``off`` within a round, then the median over the rounds. The
target is at most 10 % apart: fan-out deliveries/s at least 0.9 x, p50 and p99 at most
1.1 x. Last, the store alone (``python -m bench.history``, pinned to CPU 0, in a
process of its own, ``--store-runs`` times): its sustained rate of entries written a
second with the reactor thread appending flat out (target: at least 50,000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    MARK,
    QUIET_HEARTBEATS,
    ROOT,
    _pin,
    groupchat_server,
    summarize,
    tree_cpu_seconds,
)
from bench.load import on_and_off, setup_rows
from twisted_chat.history.store import stored_lines

BASE = "off"
REPLAY = 20
KEEP = 5000
TAIL = 2.0  # seconds after a run until the writer's CPU is read: past the next 1 s flush
SETUPS = {
    BASE: ("--history none", ["--history", "none"]),
    "on": (
        f"--history FILE --history-replay {REPLAY} --history-keep {KEEP}",
        ["--history-replay", str(REPLAY), "--history-keep", str(KEEP)],
    ),
}
# Other defaults than the fanout and latency scenarios' (given options still win).
DEFAULTS: dict[str, Any] = {
    "receivers": [100, 1000],
    "senders": [1],
    "rates": [2000],
    "seconds": 5.0,
    "deliveries": 2e7,
    "latency_senders": 10,
    "rounds": 5,
}
TARGET = 0.10  # at most 10 % apart
STORE_TARGET = 50_000  # entries a second


def add_arguments(add: Callable[..., Any]) -> None:
    add(
        "--latency-senders",
        type=int,
        default=1,
        help="latency, history: senders taking turns at the paced rate; history: "
        f"{DEFAULTS['latency_senders']}",
    )
    add("--store-runs", type=int, default=3, help="history: runs of python -m bench.history")
    add("--store-seconds", type=float, default=10.0, help="history: its --seconds")


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """Run time of one thread of a process, to the nanosecond."""
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9


class Watch:
    """One server's CPU probe for the load loops (``server`` and ``reactor``), keeping
    every reading; and the run's result, for the check of the history file."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.readings: list[dict[str, float]] = []
        self.result: dict[str, float] | None = None

    def __call__(self) -> dict[str, float]:
        reading = {
            "server": tree_cpu_seconds(self.pid),
            "reactor": thread_cpu_seconds(self.pid, self.pid),
        }
        self.readings.append(reading)
        return reading


@contextmanager
def serve(setup: str) -> Iterator[tuple[int, Watch]]:
    """Our server in ``setup``; with history, its file is checked once it has stopped."""
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        path = Path(tmp) / "history.sqlite"
        options = SETUPS[setup][1]
        if setup != BASE:
            options = ["--history", str(path), *options]
        with groupchat_server([*QUIET_HEARTBEATS, *options]) as (port, pid):
            watch = Watch(pid)
            yield port, watch
        if setup != BASE:
            check(path, watch.result)


def check(path: Path, result: dict[str, float] | None) -> None:
    """The file holds the run's messages: at least ``min(sent, KEEP)`` rows (retention
    trims a room to ``KEEP``), and, for the fan-out's numbered lines (``M|k|n|``), the
    newest is the last one sent with no number missing below it down to the oldest kept.
    (Ids follow the time in microseconds, so they are not consecutive themselves.)"""
    if result is None:
        raise RuntimeError("no result to check the history file against")
    sent = int(result["messages"])
    if not path.exists():
        raise RuntimeError(f"no history file after a run of {sent} messages")
    with closing(sqlite3.connect(path)) as db:
        texts = [e.text for e in stored_lines(db)]
    rows = len(texts)
    result["history_rows"] = rows
    if rows < min(sent, KEEP):
        raise RuntimeError(f"history file holds {rows} rows after {sent} messages")
    numbers = [_number(t) for t in texts]
    numbered = all(n is not None for n in numbers)
    if numbered and numbers != list(range(sent - rows, sent)):
        raise RuntimeError(
            f"history file holds {rows} rows numbered {numbers[0]}-{numbers[-1]}, "
            f"not the last of {sent} messages in order"
        )


def _number(text: str) -> int | None:
    """n of a fan-out line ``M|k|n|...`` (one sender), else None."""
    parts = text.split("|")
    if len(parts) < 3 or parts[0] + "|" != MARK.decode() or not parts[2].isdigit():
        return None
    return int(parts[2])


async def _timed(load: Coroutine[Any, Any, dict[str, float]], watch: Watch) -> dict[str, float]:
    """The load's result with CPU per message: the reactor's over the measured part, the
    other threads' (the writer) until ``TAIL`` s after it, when the last batch is in."""
    result = await load
    await asyncio.sleep(TAIL)
    start, end = watch.readings[0], watch()
    writer = (end["server"] - end["reactor"]) - (start["server"] - start["reactor"])
    messages = max(result["messages"], 1)
    result["reactor_us_per_msg"] = result["reactor_cpu"] * result["seconds"] / messages * 1e6
    result["writer_us_per_msg"] = writer / messages * 1e6
    result["server_us_per_msg"] = result["reactor_us_per_msg"] + result["writer_us_per_msg"]
    if "deliveries_per_s" in result:
        result["deliveries_per_cpu_s"] = result["deliveries_per_s"] / result["server_cpu"]
    watch.result = result
    return result


CPU_KEYS = ["server_cpu", "reactor_cpu", "server_us_per_msg", "reactor_us_per_msg"]
CPU_KEYS += ["writer_us_per_msg", "steal"]
FANOUT_KEYS = ["deliveries_per_s", "deliveries_per_cpu_s", *CPU_KEYS, "generator_cpu"]
LATENCY_KEYS = ["p50_ms", "p99_ms", "p999_ms", "max_ms", *CPU_KEYS]
FANOUT_RATIOS = ["deliveries_per_s", "deliveries_per_cpu_s", "server_us_per_msg"]
FANOUT_RATIOS += ["reactor_us_per_msg"]
LATENCY_RATIOS = ["p50_ms", "p99_ms", "server_cpu", "server_us_per_msg", "reactor_us_per_msg"]


def rows_of(
    kind: str, config: dict[str, Any], measured: dict[str, list[dict[str, float]]]
) -> list[dict[str, Any]]:
    """One row per setup: medians (min, max) of its runs; ``on``'s has its ratios to
    ``off``, round by round, then the median."""
    fan = kind == "fanout"
    keys, ratios = (FANOUT_KEYS, FANOUT_RATIOS) if fan else (LATENCY_KEYS, LATENCY_RATIOS)

    def kept(row: dict[str, Any], name: str, runs: list[dict[str, float]]) -> None:
        if name != BASE:
            row["history_rows"] = min(int(r["history_rows"]) for r in runs)

    rows = setup_rows(kind, config, measured, keys, ratios, BASE, lambda n: SETUPS[n][0], kept)
    for row in rows:
        print(line(row), flush=True)
    return rows


def line(row: dict[str, Any]) -> str:
    """A row as one line of the run's output."""
    head = f"{row['setup']:4} R={row['receivers']:<5} "
    if row["kind"] == "fanout":
        head += (
            f"S={row['senders']:<3} {row['deliveries_per_s']:>12,.0f} deliveries/s "
            f"({row['deliveries_per_cpu_s']:,.0f} per server CPU s)"
        )
        ratio = ("deliveries/s", row.get(f"deliveries_per_s_ratio_to_{BASE}"))
    else:
        head += (
            f"rate={row['rate']:<6g} S={row['senders']:<3} p50 {row['p50_ms']:.2f} ms  "
            f"p99 {row['p99_ms']:.2f} ms ({row['p99_ms_min']:.2f}-{row['p99_ms_max']:.2f})"
        )
        ratio = ("p99", row.get(f"p99_ms_ratio_to_{BASE}"))
    if ratio[1] is not None:
        head += f" [{ratio[0]} {ratio[1]:.2f} x {BASE}]"
    cpu = (
        f"  server CPU {row['server_cpu']:.0%} (reactor {row['reactor_cpu']:.0%}); per message "
        f"{row['server_us_per_msg']:.2f} us = reactor {row['reactor_us_per_msg']:.2f} + "
        f"writer {row['writer_us_per_msg']:.2f}"
    )
    if f"server_us_per_msg_ratio_to_{BASE}" in row:
        cpu += f" [{row[f'server_us_per_msg_ratio_to_{BASE}']:.2f} x {BASE}]"
    rows = f"  rows kept {row['history_rows']}" if "history_rows" in row else ""
    return head + cpu + f"  steal {row['steal']:.0%}  lost {row['lost']}" + rows


def store_alone(runs: int, seconds: float) -> dict[str, Any]:
    """``python -m bench.history`` in its own process on the server's core, ``runs``
    times: medians (min, max) of its figures."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    found = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        figures = Path(tmp) / "figures.json"
        argv = [*_pin(0), sys.executable, "-m", "bench.history", "--seconds", f"{seconds:g}"]
        argv += ["--dir", tmp, "--json", str(figures)]
        for _ in range(runs):
            figures.unlink(missing_ok=True)
            out = subprocess.run(
                argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120
            )
            if out.returncode or not figures.exists():
                raise RuntimeError(f"bench.history failed: {out.stderr.strip()[-500:]}")
            found.append(json.loads(figures.read_text()))
    row: dict[str, Any] = {"kind": "store", "seconds": seconds}
    row |= summarize(found, ["append_us", "flush_per_s", "sustained_per_s"])
    print(
        f"store alone: append {row['append_us']:.2f} us, writer {row['flush_per_s']:,.0f}/s, "
        f"sustained {row['sustained_per_s']:,.0f}/s "
        f"({row['sustained_per_s_min']:,.0f}-{row['sustained_per_s_max']:,.0f}; target "
        f"{STORE_TARGET:,})",
        flush=True,
    )
    return row


def run_history(args: argparse.Namespace) -> list[dict[str, Any]]:
    setups = {name: partial(serve, name) for name in SETUPS}
    rows = on_and_off(args, setups, lambda load, watch, receivers: _timed(load, watch), rows_of)
    if args.store_runs > 0:
        rows.append(store_alone(args.store_runs, args.store_seconds))
    return rows
