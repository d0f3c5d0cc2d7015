"""What ``--metrics`` costs the server: the same load with and without it, in one run.

    python -m bench metrics --rounds 5 --write

Two setups of our server, each started afresh for every run (``--history none`` in
both, so the history writer's thread is not in the figures), pinned to CPU 0 (this
generator on CPU 1), alternating within each round:

- ``off``: no ``--metrics``, the baseline (the counters are still added to: they always
  are; what ``--metrics`` adds is the fan-out and command timers, the reactor lag loop
  and the HTTP site).
- ``on``: ``--metrics tcp:0:interface=127.0.0.1``.

Measured with the loops of the ``fanout`` and ``latency`` scenarios: fan-out at
saturation with one sender into rooms of ``--receivers`` (10, 100 and 1000; the
smallest room has the most fan-outs, so the most timing, per delivery), in runs of at
least ``--deliveries`` (30 M: at 10 M a run into 1000 lasted a second, and its CPU
figure moved by 10 % from round to round); and the latency of ``--rates`` messages a second in all
(2000) from ``--latency-senders`` senders in turn (10) into a room of
``--latency-receivers`` (100) for ``--seconds`` (5).

At these sizes the generator, not the server, is the bottleneck of the fan-out (it uses
a whole core, the server less), so what the server spends is read from /proc: its CPU
time over the measured part, per message sent (``server_us_per_msg``).  After every
``on`` run its ``/metrics`` is scraped over HTTP and checked: the room messages counted
must be the messages sent, and the deliveries at least one per receiver per message (a
run that fails this counts as failed, not measured).

Ratios are ``on`` over ``off`` within a round, then the median over the rounds.  The
target is at most 3 % apart: fan-out deliveries/s at least 0.97 x and server CPU per
message at most 1.03 x, in fan-out and paced alike.  Latency percentiles are shown, but
on this shared VM their round-to-round spread is wider than 3 %.
"""

from __future__ import annotations

import argparse
import tempfile
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import QUIET_HEARTBEATS, groupchat_server, tree_cpu_seconds
from bench.load import on_and_off, setup_rows
from bench.references import HOST

BASE = "off"
SETUPS = {BASE: "no --metrics", "on": f"--metrics tcp:0:interface={HOST}"}
DEFAULTS: dict[str, Any] = {
    "receivers": [10, 100, 1000],
    "senders": [1],
    "rates": [2000],
    "seconds": 5.0,
    "deliveries": 3e7,
    "latency_senders": 10,
    "rounds": 5,
}
TARGET = 0.03  # at most 3 % apart


class Watch:
    """One server's CPU probe for the load loops; and, with ``--metrics``, where to
    scrape it."""

    def __init__(self, pid: int, port_file: Path | None) -> None:
        self.pid = pid
        self.port_file = port_file

    def __call__(self) -> dict[str, float]:
        return {"server": tree_cpu_seconds(self.pid)}

    def scrape(self) -> dict[str, float]:
        """The unlabelled and ``kind="room"`` samples of ``/metrics``, by name."""
        assert self.port_file is not None
        port = int(self.port_file.read_text().strip().rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            name, _, number = line.rpartition(" ")
            if "{" not in name or name.endswith('{kind="room"}'):
                found[name.split("{", 1)[0]] = float(number)
        return found


@contextmanager
def serve(setup: str) -> Iterator[tuple[int, Watch]]:
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        options = [*QUIET_HEARTBEATS, "--history", "none"]
        port_file = None
        if setup != BASE:
            port_file = Path(tmp) / "metrics-port"
            options += ["--metrics", f"tcp:0:interface={HOST}"]
            options += ["--metrics-port-file", str(port_file)]
        with groupchat_server(options) as (port, pid):
            yield port, Watch(pid, port_file)


async def _checked(
    load: Coroutine[Any, Any, dict[str, float]], watch: Watch, receivers: int
) -> dict[str, float]:
    """The load's result, with CPU per message; an ``on`` run's counts checked."""
    result = await load
    messages = max(result["messages"], 1)
    result["server_us_per_msg"] = result["server_cpu"] * result["seconds"] / messages * 1e6
    if "deliveries_per_s" in result:
        result["deliveries_per_cpu_s"] = result["deliveries_per_s"] / result["server_cpu"]
    if watch.port_file is not None:
        found = watch.scrape()
        counted = found["groupchat_messages_received_total"]
        delivered = found["groupchat_deliveries_total"]
        if counted != result["messages"] or delivered < receivers * result["messages"]:
            raise RuntimeError(
                f"/metrics counted {counted:g} messages and {delivered:g} deliveries after "
                f"{result['messages']:g} messages to {receivers} receivers"
            )
        result["deliveries_counted"] = delivered
    return result


FANOUT_KEYS = ["deliveries_per_s", "deliveries_per_cpu_s", "server_cpu", "server_us_per_msg"]
FANOUT_KEYS += ["generator_cpu", "steal"]
LATENCY_KEYS = ["p50_ms", "p99_ms", "p999_ms", "max_ms", "server_cpu", "server_us_per_msg"]
LATENCY_KEYS += ["steal"]
FANOUT_RATIOS = ["deliveries_per_s", "deliveries_per_cpu_s", "server_us_per_msg"]
LATENCY_RATIOS = ["p50_ms", "p99_ms", "server_cpu", "server_us_per_msg"]


def rows_of(
    kind: str, config: dict[str, Any], measured: dict[str, list[dict[str, float]]]
) -> list[dict[str, Any]]:
    """One row per setup: medians (min, max) of its runs; ``on``'s has its ratios to
    ``off``, round by round, then the median, and whether they are within 3 %."""
    fan = kind == "fanout"
    keys, ratios = (FANOUT_KEYS, FANOUT_RATIOS) if fan else (LATENCY_KEYS, LATENCY_RATIOS)

    def within(row: dict[str, Any], name: str, runs: list[dict[str, float]]) -> None:
        cpu = row.get(f"server_us_per_msg_ratio_to_{BASE}")
        rate = row.get(f"deliveries_per_s_ratio_to_{BASE}", 1.0)
        if cpu is not None:
            row["within_target"] = cpu <= 1 + TARGET and rate >= 1 - TARGET

    rows = setup_rows(kind, config, measured, keys, ratios, BASE, SETUPS.__getitem__, within)
    for row in rows:
        print(line(row), flush=True)
    return rows


def line(row: dict[str, Any]) -> str:
    """A row as one line of the run's output."""
    head = f"{row['setup']:4} R={row['receivers']:<5} "
    if row["kind"] == "fanout":
        head += f"S={row['senders']:<3} {row['deliveries_per_s']:>12,.0f} deliveries/s"
        ratio = ("deliveries/s", row.get(f"deliveries_per_s_ratio_to_{BASE}"))
    else:
        head += (
            f"rate={row['rate']:<6g} S={row['senders']:<3} p50 {row['p50_ms']:.2f} ms  "
            f"p99 {row['p99_ms']:.2f} ms ({row['p99_ms_min']:.2f}-{row['p99_ms_max']:.2f})"
        )
        ratio = ("p99", row.get(f"p99_ms_ratio_to_{BASE}"))
    if ratio[1] is not None:
        head += f" [{ratio[0]} {ratio[1]:.3f} x {BASE}]"
    cpu = f"  server CPU {row['server_cpu']:.0%}, {row['server_us_per_msg']:.2f} us a message"
    if f"server_us_per_msg_ratio_to_{BASE}" in row:
        cpu += f" [{row[f'server_us_per_msg_ratio_to_{BASE}']:.3f} x {BASE}]"
    return head + cpu + f"  steal {row['steal']:.0%}  lost {row['lost']}"


def run_metrics(args: argparse.Namespace) -> list[dict[str, Any]]:
    setups = {name: partial(serve, name) for name in SETUPS}
    rows = on_and_off(args, setups, _checked, rows_of)
    return rows
