"""The backplane: one room over two nodes sharing one Redis, against the same room on one.

    python -m bench backplane --rounds 3 --write

Setups (``--setups``), each started afresh for every run, a new Redis with it, on
127.0.0.1 only, and stopped by their PIDs (the nodes first, then Redis):

- ``single``: one node without ``--backplane``, the baseline: the same server as the
  ``fanout`` and ``latency`` scenarios' groupchat.
- ``backplane``: one node with ``--backplane`` on its own Redis: what the backplane costs
  with nobody remote (every line is still published, and read back).
- ``split``: two nodes on one Redis, the room's receivers half on each and its senders
  split the same way (one sender: on the first node).  In the latency runs the sender is
  on the first node, and the receivers on the second are also timed apart (``far``):
  the added latency is theirs over ``single``'s.
- ``asyncio``: one node without backplane on ``twistd --reactor asyncio``, the reactor
  redis-py's asyncio client would need: what switching reactor costs by itself.

For each room size R (``--receivers``) and sender count S (``--senders``): deliveries/s at
saturation, as in ``fanout``; for each room size and rate (``--rates``): the latency of one
paced sender, as in ``latency``.  The CPU time of every node and of Redis is read from
/proc over the measured part of each run only (not while the room fills); per message
means over the messages sent.  Ratios and added latency are against ``single`` in the
same round, then the median over the rounds (``--rounds``).

Every server (nodes and Redis) is pinned to CPU 0 and this generator runs on CPU 1, as in
the other scenarios: on a 2-core machine two nodes and Redis share one core, so ``split``
shows what the backplane costs, not what a second machine would add.  A setup is a few
words (``Setup``): another row, such as ``--workers 2`` once the option exists, is one
more entry in ``SETUPS``.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.common import (
    QUIET_HEARTBEATS,
    Probe,
    groupchat_server,
    summarize,
    tree_cpu_seconds,
)
from bench.load import FAILED, Measure, fanout, latency, messages_for, paired_ratios, repeat
from bench.references import DIALECTS, HOST, redis_server

JOINED = "joined the network"  # the node's log line once it is part of the network
BASE = "single"
# Other defaults than the fanout and latency scenarios' (given options still win).
DEFAULTS: dict[str, Any] = {"receivers": [100, 1000], "senders": [1, 10], "rates": [100, 500]}


@dataclass(frozen=True)
class Setup:
    """One way to serve the room."""

    what: str
    nodes: int = 1
    backplane: bool = False
    twistd: tuple[str, ...] = ()  # twistd's own options, before ``groupchat``
    server: tuple[str, ...] = ()  # groupchat's options (after the bench's usual ones)
    cpus: str = "0"  # where the nodes run (``taskset -c``); Redis is on CPU 0
    workers: int = 1  # processes per node, each joining the network


SETUPS = {
    BASE: Setup("one node, no backplane"),
    "backplane": Setup("one node with --backplane, nobody remote", backplane=True),
    "split": Setup("two nodes on one Redis, the room half on each", nodes=2, backplane=True),
    "asyncio": Setup("one node on twistd --reactor asyncio", twistd=("--reactor", "asyncio")),
    # Two worker processes behind one port, on both cores (so sharing the load
    # generator's): CPU time counts the workers (tree_cpu_seconds).
    "workers": Setup(
        "--workers 2 behind one port, on both cores",
        backplane=True,
        server=("--workers", "2"),
        cpus="0,1",
        workers=2,
    ),
}


def add_arguments(add: Callable[..., Any]) -> None:
    add(
        "--setups",
        nargs="+",
        default=list(SETUPS),
        choices=list(SETUPS),
        help=f"backplane: which ({BASE} is the baseline of the ratios)",
    )


@contextmanager
def deploy(setup: Setup) -> Iterator[tuple[list[int], Probe]]:
    """Redis (with a backplane) and the nodes, each node once it has joined the network;
    yields the nodes' ports and a probe of everyone's CPU time."""
    with ExitStack() as stack:
        extra = [*QUIET_HEARTBEATS, *setup.server]
        redis_pid: int | None = None
        if setup.backplane:
            redis_port, redis_pid = stack.enter_context(redis_server())
            extra += ["--backplane", f"redis://{HOST}:{redis_port}"]
        nodes = [
            stack.enter_context(
                groupchat_server(
                    extra,
                    twistd=setup.twistd,
                    cpus=setup.cpus,
                    ready=JOINED if setup.backplane else None,
                    ready_count=setup.workers,
                )
            )
            for _ in range(setup.nodes)
        ]

        def probe() -> dict[str, float]:
            each = {f"node{n}": tree_cpu_seconds(pid) for n, (_, pid) in enumerate(nodes, 1)}
            used = {"server": sum(each.values()), **(each if len(each) > 1 else {})}
            if redis_pid is not None:
                used["redis"] = tree_cpu_seconds(redis_pid)
            return used

        yield [port for port, _ in nodes], probe


def sharing(setups: list[str]) -> str:
    """What shares the machine's cores in this run, said with every run's output."""
    cpus = " / ".join(sorted({SETUPS[name].cpus for name in setups}))
    return (
        f"{os.cpu_count()} cores: the nodes run on CPU {cpus}, Redis on CPU 0, this load "
        "generator on CPU 1; the servers share a core, so two nodes show what the backplane "
        "costs, not what a second machine would add"
    )


def _per_message(run: dict[str, float]) -> None:
    """CPU microseconds per message sent: the nodes' together, and Redis's."""
    for name in ("server", "redis"):
        if f"{name}_cpu" in run:
            used = run[f"{name}_cpu"] * run["seconds"]
            run[f"{name}_us_per_msg"] = used / max(run["messages"], 1) * 1e6


def _added(runs: list[dict[str, float]], base: list[dict[str, float]], key: str) -> float:
    """Milliseconds over the baseline's ``key``, round by round (the far receivers' when
    there are some), then the median."""
    far = f"far_{key}"
    return statistics.median(a.get(far, a[key]) - b[key] for a, b in zip(runs, base, strict=False))


CPU_KEYS = ["server_cpu", "node1_cpu", "node2_cpu", "redis_cpu", "server_us_per_msg"]
CPU_KEYS += ["redis_us_per_msg", "steal"]
FANOUT_KEYS = ["deliveries_per_s", *CPU_KEYS, "generator_cpu"]
LATENCY_KEYS = ["p50_ms", "p99_ms", "p999_ms", "max_ms", "far_p50_ms", "far_p99_ms", *CPU_KEYS]


def rows_of(
    kind: str, config: dict[str, Any], measured: dict[str, list[dict[str, float]]]
) -> list[dict[str, Any]]:
    """One row per setup: medians (min, max) of its runs, and its ratios to ``single``."""
    keys, ratio_keys = (
        (FANOUT_KEYS, ["deliveries_per_s", "server_us_per_msg"])
        if kind == "fanout"
        else (LATENCY_KEYS, ["p50_ms", "p99_ms", "server_cpu"])
    )
    for runs in measured.values():
        for run in runs:
            _per_message(run)
    base = measured.get(BASE)
    rows = []
    for name, runs in measured.items():
        setup = SETUPS[name]
        row: dict[str, Any] = {"kind": kind, "setup": name, "what": setup.what, **config}
        row["server_cpus"] = setup.cpus
        row |= summarize(runs, [k for k in keys if all(k in r for r in runs)])
        if base and name != BASE:
            row |= paired_ratios({name: runs, BASE: base}, ratio_keys, name)
            if kind == "latency":
                row["added_p50_ms"] = _added(runs, base, "p50_ms")
                row["added_p99_ms"] = _added(runs, base, "p99_ms")
        row["lost"] = max(r["lost"] for r in runs)
        row["failed_runs"] = FAILED.get(name, [])
        rows.append(row)
        print(line(row), flush=True)
    return rows


def line(row: dict[str, Any]) -> str:
    """A row as one line of the run's output."""
    head = f"{row['setup']:10} R={row['receivers']:<5} "
    if row["kind"] == "fanout":
        head += f"S={row['senders']:<3} {row['deliveries_per_s']:>12,.0f} deliveries/s"
        ratio = row.get(f"deliveries_per_s_ratio_to_{BASE}")
    else:
        head += f"rate={row['rate']:<6g} p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
        if "far_p50_ms" in row:
            head += f" (far: {row['far_p50_ms']:.2f} / {row['far_p99_ms']:.2f})"
        if "added_p50_ms" in row:
            head += f" added {row['added_p50_ms']:+.2f} / {row['added_p99_ms']:+.2f} ms"
        ratio = row.get(f"p99_ms_ratio_to_{BASE}")
    if ratio is not None:
        head += f" ({ratio:.2f} x {BASE})"
    cpu = f"  nodes' CPU {row['server_cpu']:.0%}"
    if "node1_cpu" in row:
        cpu += f" ({row['node1_cpu']:.0%} + {row['node2_cpu']:.0%})"
    cpu += f", {row['server_us_per_msg']:.1f} us/msg"
    if "redis_cpu" in row:
        cpu += f"  Redis CPU {row['redis_cpu']:.0%}, {row['redis_us_per_msg']:.1f} us/msg"
    if "generator_cpu" in row:
        cpu += f"  generator CPU {row['generator_cpu']:.0%}"
    return head + cpu + f"  steal {row['steal']:.0%}  lost {row['lost']}"


def run_backplane(args: argparse.Namespace) -> list[dict[str, Any]]:
    print(f"note: {sharing(args.setups)}", flush=True)
    setups = {name: partial(deploy, SETUPS[name]) for name in args.setups}
    dialects = {name: DIALECTS["groupchat"] for name in args.setups}

    def rounds(measure: Measure) -> dict[str, list[dict[str, float]]]:
        return repeat(args.setups, args.rounds, measure, setups, dialects)

    rows: list[dict[str, Any]] = []
    for r in args.receivers:
        for s in args.senders:
            messages = messages_for(args, r)
            measured = rounds(
                lambda d, ports, probe, r=r, s=s, n=messages: fanout(
                    d, ports, probe, r, s, n, args.window, args.timeout
                )
            )
            rows += rows_of("fanout", {"receivers": r, "senders": s}, measured)
    for r in args.receivers:
        for rate in args.rates:
            measured = rounds(
                lambda d, ports, probe, r=r, rate=rate: latency(
                    d, ports, probe, r, rate, args.seconds, args.timeout
                )
            )
            rows += rows_of("latency", {"receivers": r, "rate": rate}, measured)
    return rows
