"""Benchmarks: our server beside a minimal Twisted server, redis-server and ngIRCd.

    python -m bench all --write              # everything; rewrites docs/bench and the tables
    python -m bench fanout --receivers 100 1000 --senders 1 10
    python -m bench latency --rates 500 2000
    python -m bench senders                  # 10 and 100 senders sharing 2000 msg/s
    python -m bench scale --clients 1000 5000 10000
    python -m bench attack --rounds 3 --write   # members' latency and memory under attacks
    python -m bench backplane --rounds 3 --write  # a room over two nodes and one Redis
    python -m bench web --rounds 3 --write        # WebSocket clients beside line clients
    python -m bench history --rounds 5 --write    # the server with room history against without
    python -m bench metrics --rounds 5 --write    # the server with --metrics against without

Extra options for our server (to try settings) go in ``GROUPCHAT_ARGS``, for example
``GROUPCHAT_ARGS='--flush-interval 0' python -m bench latency``.

Each server runs in its own process pinned to CPU 0 (where possible); this load generator
(asyncio on uvloop when installed) runs on CPU 1.  Everyone joins one room; senders send
64-byte messages, never more than ``--window`` messages ahead of the slowest receiver, so
kernel buffers are not what is measured.  Deliveries per second = receivers x messages /
time until every receiver has every message.  Loopback only; every run is bounded by
``--timeout``; every server is started and stopped here, by its own PID.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

from bench.attack import add_arguments as attack_arguments
from bench.attack import run_attack
from bench.backplane import DEFAULTS as BACKPLANE_DEFAULTS
from bench.backplane import add_arguments as backplane_arguments
from bench.backplane import run_backplane
from bench.common import OUT, ROOT, SERVERS, summarize
from bench.history_cost import DEFAULTS as HISTORY_DEFAULTS
from bench.history_cost import add_arguments as history_arguments
from bench.history_cost import run_history
from bench.load import FAILED, fanout, latency, messages_for, paired_ratios, repeat
from bench.metrics_cost import DEFAULTS as METRICS_DEFAULTS
from bench.metrics_cost import run_metrics
from bench.report import update
from bench.web import DEFAULTS as WEB_DEFAULTS
from bench.web import add_arguments as web_arguments
from bench.web import run_web


def _ratios(row: dict[str, Any]) -> str:
    shown = [f"{k.replace('_ratio_to_', ' / ')} {v:.2f}" for k, v in row.items() if "_ratio_" in k]
    return ("\n    groupchat, run by run: " + ", ".join(shown)) if shown else ""


def run_fanout(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for receivers in args.receivers:
        for senders in args.senders:
            measured = repeat(
                args.servers,
                args.repeat,
                lambda d, port, pid, r=receivers, s=senders: fanout(
                    d, port, pid, r, s, messages_for(args, r), args.window, args.timeout
                ),
            )
            # Per server CPU second too: where the generator is the limit (a server not
            # using its whole core), deliveries/s only say how close each got to it.
            for runs in measured.values():
                for run in runs:
                    run["deliveries_per_cpu_s"] = run["deliveries_per_s"] / max(
                        run["server_cpu"], 1e-9
                    )
            ratios = paired_ratios(measured, ["deliveries_per_s", "deliveries_per_cpu_s"])
            for name, runs in measured.items():
                row = {"server": name, "receivers": receivers, "senders": senders}
                if name == "groupchat":
                    row |= ratios
                row |= summarize(
                    runs,
                    [
                        "deliveries_per_s",
                        "deliveries_per_cpu_s",
                        "server_cpu",
                        "generator_cpu",
                        "steal",
                    ],
                )
                row["lost"] = max(r["lost"] for r in runs)
                row["failed_runs"] = FAILED.get(name, [])
                rows.append(row)
                print(
                    f"{name:16} R={receivers:<5} S={senders:<3} "
                    f"{row['deliveries_per_s']:>12,.0f} deliveries/s "
                    f"(min {row['deliveries_per_s_min']:,.0f}, "
                    f"max {row['deliveries_per_s_max']:,.0f})  "
                    f"server CPU {row['server_cpu']:.0%}  generator CPU "
                    f"{row['generator_cpu']:.0%}  steal {row['steal']:.0%}  lost {row['lost']}"
                    + _ratios(row),
                    flush=True,
                )
    return rows


def run_latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    receivers = args.latency_receivers
    for rate in args.rates:
        measured = repeat(
            args.servers,
            args.repeat,
            lambda d, port, pid, rate=rate: latency(
                d, port, pid, receivers, rate, args.seconds, args.timeout, args.latency_senders
            ),
        )
        ratios = paired_ratios(measured, ["p99_ms", "server_cpu"])
        for name, runs in measured.items():
            row = {"server": name, "rate": rate, "receivers": receivers}
            if name == "groupchat":
                row |= ratios
            row |= summarize(runs, ["p50_ms", "p99_ms", "p999_ms", "max_ms", "server_cpu", "steal"])
            row["lost"] = max(r["lost"] for r in runs)
            row["failed_runs"] = FAILED.get(name, [])
            rows.append(row)
            print(
                f"{name:16} rate={rate:<6g} R={receivers:<4} "
                f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms "
                f"({row['p99_ms_min']:.2f}-{row['p99_ms_max']:.2f})  "
                f"p99.9 {row['p999_ms']:.2f} ms  max {row['max_ms']:.2f} ms  "
                f"server CPU {row['server_cpu']:.0%}  steal {row['steal']:.0%}  "
                f"lost {row['lost']}" + _ratios(row),
                flush=True,
            )
    return rows


def run_senders(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Paced traffic from many senders: ``--many-senders`` members share ``--many-rate``
    messages a second in turn, into rooms of ``--many-receivers``, as in a real room
    where many people each say something now and then."""
    rows = []
    for receivers in args.many_receivers:
        for senders in args.many_senders:
            measured = repeat(
                args.servers,
                args.repeat,
                lambda d, port, pid, r=receivers, s=senders: latency(
                    d, port, pid, r, args.many_rate, args.seconds, args.timeout, s
                ),
            )
            ratios = paired_ratios(measured, ["p50_ms", "p99_ms", "server_cpu"])
            for name, runs in measured.items():
                row = {"server": name, "rate": args.many_rate, "receivers": receivers,
                       "senders": senders}  # fmt: skip
                if name == "groupchat":
                    row |= ratios
                row |= summarize(
                    runs, ["p50_ms", "p99_ms", "p999_ms", "max_ms", "server_cpu", "steal"]
                )
                row["lost"] = max(r["lost"] for r in runs)
                row["failed_runs"] = FAILED.get(name, [])
                rows.append(row)
                print(
                    f"{name:16} R={receivers:<5} S={senders:<4} rate={args.many_rate:g} "
                    f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms "
                    f"({row['p99_ms_min']:.2f}-{row['p99_ms_max']:.2f})  "
                    f"server CPU {row['server_cpu']:.0%}  steal {row['steal']:.0%}  "
                    f"lost {row['lost']}" + _ratios(row),
                    flush=True,
                )
    return rows


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Throughput against receivers, one line per server (and per sender count)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart", flush=True)
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = list(dict.fromkeys(r["server"] for r in rows))
    colour = {name: f"C{i}" for i, name in enumerate(names)}  # one colour per server
    for senders in sorted({r["senders"] for r in rows}):
        for name in names:
            mine = sorted(
                (r for r in rows if r["server"] == name and r["senders"] == senders),
                key=lambda r: r["receivers"],
            )
            if not mine:
                continue
            xs = [r["receivers"] for r in mine]
            ys = [r["deliveries_per_s"] / 1e6 for r in mine]
            low = [y - r["deliveries_per_s_min"] / 1e6 for y, r in zip(ys, mine, strict=True)]
            high = [r["deliveries_per_s_max"] / 1e6 - y for y, r in zip(ys, mine, strict=True)]
            ax.errorbar(
                xs,
                ys,
                yerr=[low, high],
                marker="o",
                capsize=3,
                color=colour[name],
                linestyle="-" if senders == 1 else "--",
                label=f"{name}, {senders} sender{'s' if senders > 1 else ''}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("receivers in the room")
    ax.set_ylabel("million deliveries per second")
    ax.set_title("Fan-out throughput (median, bars: min-max)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)
    print(f"wrote {path}", flush=True)


def machine() -> dict[str, Any]:
    import twisted

    model = "?"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for tool, argv in {
        "redis-server": ["redis-server", "--version"],
        "ngircd": ["/usr/sbin/ngircd", "--version"],
    }.items():
        try:
            versions[tool] = subprocess.run(
                argv, capture_output=True, text=True, timeout=10
            ).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            versions[tool] = "not installed"
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "generator": loop,
        **versions,
    }


def command() -> str:
    """The command line as run, with any extra server options it was given."""
    extra = os.environ.get("GROUPCHAT_ARGS", "").strip()
    prefix = f"GROUPCHAT_ARGS={shlex.quote(extra)} " if extra else ""
    return prefix + "python -m bench " + shlex.join(sys.argv[1:])


def write_results(scenario: str, rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "scenario": scenario,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command(),
        "machine": machine(),
        "results": rows,
    }
    path = out / f"{scenario}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}", flush=True)
    if scenario == "fanout" and rows:
        chart(rows, out / "fanout.svg")


class Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=Help,
    )
    add = parser.add_argument
    add(
        "scenario",
        choices=[
            "fanout",
            "latency",
            "senders",
            "scale",
            "attack",
            "backplane",
            "web",
            "history",
            "metrics",
            "all",
        ],
        help="what to measure ('all' is fanout, latency, senders, scale and web)",
    )
    add("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS), help="which")

    def backplane_default(option: str) -> str:
        return f"; backplane: {' '.join(f'{v:g}' for v in BACKPLANE_DEFAULTS[option])}"

    def web_default(option: str) -> str:
        return f"; web: {' '.join(f'{v:g}' for v in WEB_DEFAULTS[option])}"

    add(
        "--receivers",
        type=int,
        nargs="+",
        default=[10, 100, 1000],
        help="fanout, backplane, web: room sizes"
        + backplane_default("receivers")
        + web_default("receivers"),
    )
    add(
        "--senders",
        type=int,
        nargs="+",
        default=[1, 10],
        help="fanout, backplane: senders per run" + backplane_default("senders"),
    )
    add(
        "--messages",
        type=int,
        default=2000,
        help="fanout, backplane, web: least messages per run, in all",
    )
    add(
        "--deliveries",
        type=float,
        default=2e6,
        help="fanout, backplane, web: deliveries per run at least (more messages for small "
        f"rooms); web: {WEB_DEFAULTS['deliveries']:g}",
    )
    add(
        "--window",
        type=int,
        default=400,
        help="fanout, backplane, web: most messages senders may be ahead",
    )
    add(
        "--rates",
        type=float,
        nargs="+",
        default=[500, 2000],
        help="latency, backplane: messages/s" + backplane_default("rates"),
    )
    add("--latency-receivers", type=int, default=100, help="latency: room size")
    add("--many-receivers", type=int, nargs="+", default=[100, 1000], help="senders: room sizes")
    add(
        "--many-senders",
        type=int,
        nargs="+",
        default=[10, 100],
        help="senders: how many members share the rate",
    )
    add("--many-rate", type=float, default=2000.0, help="senders: messages/s in all")
    add("--seconds", type=float, default=3.0, help="latency, backplane: sending time per run")
    add(
        "--clients",
        type=int,
        nargs="+",
        default=[1000, 5000, 10000],
        help="scale: sizes" + web_default("clients") + " (connections per door)",
    )
    add("--repeat", type=int, default=5, help="rounds; each round runs every server once")
    add("--timeout", type=float, default=60.0, help="longest wait for one run's deliveries")
    attack_arguments(add)
    backplane_arguments(add)
    web_arguments(add)
    history_arguments(add)
    add(
        "--write",
        action="store_true",
        help="replace docs/bench/<scenario>.json, the chart and the tables in "
        "docs/PERFORMANCE.md with this run's results (partial runs replace them too)",
    )
    if parser.parse_known_args()[0].scenario == "backplane":
        parser.set_defaults(**BACKPLANE_DEFAULTS)
    if parser.parse_known_args()[0].scenario == "web":
        parser.set_defaults(**WEB_DEFAULTS)
    if parser.parse_known_args()[0].scenario == "history":
        parser.set_defaults(**HISTORY_DEFAULTS)
    if parser.parse_known_args()[0].scenario == "metrics":
        parser.set_defaults(**METRICS_DEFAULTS)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    scenarios = (
        ["fanout", "latency", "senders", "scale", "web"]
        if args.scenario == "all"
        else [args.scenario]
    )
    for scenario in scenarios:
        print(f"== {scenario}", flush=True)
        if scenario == "fanout":
            rows = run_fanout(args)
        elif scenario == "latency":
            rows = run_latency(args)
        elif scenario == "senders":
            rows = run_senders(args)
        elif scenario == "attack":
            rows = run_attack(args)
            if args.write:  # its section of docs/PERFORMANCE.md is written by hand
                write_results(scenario, rows, OUT)
            continue
        elif scenario == "backplane":
            rows = run_backplane(args)
        elif scenario == "history":
            rows = run_history(args)
        elif scenario == "metrics":
            rows = run_metrics(args)
        elif scenario == "web":
            # In 'all', its own room sizes and connection count, not fanout's and scale's.
            alone = args.scenario == "web"
            rows = run_web(args if alone else argparse.Namespace(**(vars(args) | WEB_DEFAULTS)))
        else:
            from bench.scale import run_scale

            rows = run_scale(args)
        if args.write:
            write_results(scenario, rows, OUT)
            update(ROOT / "docs" / "PERFORMANCE.md", OUT)
            print(f"updated the {scenario} tables in docs/PERFORMANCE.md", flush=True)


if __name__ == "__main__":
    main()
