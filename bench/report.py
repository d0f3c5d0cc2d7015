"""Markdown tables from ``docs/bench/*.json``, written into docs/PERFORMANCE.md.

The figures in the document are regenerated from the JSON the run wrote, between two
marker comments, so the prose around them never carries a stale or mistyped number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

START = "<!-- bench results: start (python -m bench rewrites this part) -->"
END = "<!-- bench results: end -->"


NOISY = 0.02  # median steal time above which a row's figures are marked as disturbed


def _load(out: Path, scenario: str) -> dict[str, Any] | None:
    path = out / f"{scenario}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _k(value: float) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.0f} k"


def _marks(row: dict[str, Any], steal: str = "steal") -> str:
    """What a reader must know before trusting a row: the VM was busy, runs failed."""
    marks = ""
    if row.get(steal, 0) > NOISY:
        marks += f" (steal {row[steal]:.0%})"
    if row.get("failed_runs"):
        marks += f" ({len(row['failed_runs'])} runs failed: {row['failed_runs'][0]})"
    return marks


def _ratio(row: dict[str, Any], key: str, name: str) -> str:
    value = row.get(f"{key}_ratio_to_{name}")
    return "" if value is None else f"{value:.2f}"


_FANOUT_RATIOS = ("deliveries_per_s", "deliveries_per_cpu_s")


def fanout_md(doc: dict[str, Any]) -> list[str]:
    rows = doc["results"]
    names = list(dict.fromkeys(r["server"] for r in rows))
    others = [n for n in names if n != "groupchat"]
    lines = [
        "Deliveries per second, median of the runs (min-max); server and generator CPU are "
        "medians too. The last columns are groupchat's deliveries per second and, after "
        "the comma, its deliveries per second of server CPU, over each reference's: the "
        "median of per-round ratios. Where groupchat does not use its whole core (the "
        "generator is the limit), the second is the one that compares the servers.",
        "",
        "| R | S | server | deliveries/s | server CPU | generator CPU | lost |"
        + "".join(f" ours / {n} |" for n in others),
        "|---|---|---|---|---|---|---|" + "---|" * len(others),
    ]
    for r in rows:
        spread = f"{_k(r['deliveries_per_s_min'])}-{_k(r['deliveries_per_s_max'])}"
        ratios = "".join(
            " " + ", ".join(filter(None, (_ratio(r, k, n) for k in _FANOUT_RATIOS))) + " |"
            if r["server"] == "groupchat"
            else " |"
            for n in others
        )
        lines.append(
            f"| {r['receivers']} | {r['senders']} | {r['server']}{_marks(r)} | "
            f"{_k(r['deliveries_per_s'])} ({spread}) | {r['server_cpu']:.0%} | "
            f"{r['generator_cpu']:.0%} | {r['lost']} |{ratios}"
        )
    return lines


def latency_md(doc: dict[str, Any]) -> list[str]:
    rows = doc["results"]
    names = list(dict.fromkeys(r["server"] for r in rows))
    others = [n for n in names if n != "groupchat"]
    lines = [
        "Milliseconds from send to receipt, over every delivery of every run, median of "
        "the runs (p99 min-max); max is the median of each run's maximum. Ratios: "
        "groupchat over each reference (above 1: groupchat is slower or busier), median "
        "of per-round ratios. A server marked with steal lost that share of CPU 0 to the "
        "hypervisor during its runs (median): its figures measure the machine, not the "
        "server.",
        "",
        "| rate | server | p50 | p99 | p99.9 | max | server CPU | lost |"
        + "".join(f" p99, CPU: ours / {n} |" for n in others),
        "|---|---|---|---|---|---|---|---|" + "---|" * len(others),
    ]
    for r in rows:
        ratios = "".join(
            f" {_ratio(r, 'p99_ms', n)}, {_ratio(r, 'server_cpu', n)} |"
            if r["server"] == "groupchat"
            else " |"
            for n in others
        )
        lines.append(
            f"| {r['rate']:g}/s | {r['server']}{_marks(r)} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"({r['p99_ms_min']:.2f}-{r['p99_ms_max']:.2f}) | {r['p999_ms']:.2f} | "
            f"{r['max_ms']:.2f} | {r['server_cpu']:.0%} | {r['lost']} |{ratios}"
        )
    return lines


def senders_md(doc: dict[str, Any]) -> list[str]:
    rows = doc["results"]
    names = list(dict.fromkeys(r["server"] for r in rows))
    others = [n for n in names if n != "groupchat"]
    lines = [
        "S senders share the rate in turn, into a room of R members (the senders among "
        "them); milliseconds from send to receipt over every delivery, medians of the "
        "runs. Ratios: groupchat over each reference (above 1: slower or busier), median "
        "of per-round ratios.",
        "",
        "| R | S | rate | server | p50 | p99 | p99.9 | server CPU | lost |"
        + "".join(f" p50, p99, CPU: ours / {n} |" for n in others),
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(others),
    ]
    for r in rows:
        ratios = "".join(
            f" {_ratio(r, 'p50_ms', n)}, {_ratio(r, 'p99_ms', n)}, {_ratio(r, 'server_cpu', n)} |"
            if r["server"] == "groupchat"
            else " |"
            for n in others
        )
        lines.append(
            f"| {r['receivers']} | {r['senders']} | {r['rate']:g}/s | {r['server']}{_marks(r)} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} ({r['p99_ms_min']:.2f}-{r['p99_ms_max']:.2f})"
            f" | {r['p999_ms']:.2f} | {r['server_cpu']:.0%} | {r['lost']} |{ratios}"
        )
    return lines


def scale_md(doc: dict[str, Any]) -> list[str]:
    lines = [
        "| clients | connect + nick + join, all | RSS per connection | one message to all "
        "(median of 5; worst) | not reached | wrongly timed out | sweep, steady | sweep, "
        "all timing out at once |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        lines.append(
            f"| {r['clients']:,}{_marks(r, 'steal_max')} | "
            f"{r['connect_s']:.2f} s ({r['connect_s_min']:.2f}-"
            f"{r['connect_s_max']:.2f}) | {r['rss_per_conn_bytes'] / 1024:.1f} KiB | "
            f"{r['broadcast_ms']:.0f} ms; {r['broadcast_max_ms']:.0f} ms | "
            f"{r['not_reached']} | {r['timed_out']} | {r['sweep_steady_ms']:.3f} ms | "
            f"{r['sweep_mass_timeout_ms']:.0f} ms |"
        )
    return lines


def _us(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.1f} us" if key in row else ""


def _nodes_cpu(r: dict[str, Any]) -> str:
    each = f" ({r['node1_cpu']:.0%} + {r['node2_cpu']:.0%})" if "node1_cpu" in r else ""
    return f"{r['server_cpu']:.0%}{each}"


def backplane_md(doc: dict[str, Any]) -> list[str]:
    rows = doc["results"]
    base = "single"  # bench.backplane.BASE
    setups = dict.fromkeys(f"`{r['setup']}`: {r['what']}" for r in rows)
    cpus = " / ".join(sorted({r["server_cpus"] for r in rows}))
    lines = [
        f"Setups: {'; '.join(setups)}. Every node and Redis ran on CPU {cpus}, the load "
        f"generator on CPU 1 of {doc['machine']['cores']}: the nodes and Redis shared one "
        "core, so these figures show what the backplane costs, not what a second machine "
        f"would add. Medians of the runs (min-max); `x {base}` is the median of per-round "
        f"ratios to `{base}`. CPU per message is CPU time over the messages sent (all "
        "nodes together; Redis apart).",
        "",
        "Fan-out at saturation:",
        "",
        f"| R | S | setup | deliveries/s | x {base} | nodes' CPU | per message | Redis CPU "
        "| Redis per message | generator CPU | lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "fanout"):
        spread = f"{_k(r['deliveries_per_s_min'])}-{_k(r['deliveries_per_s_max'])}"
        redis = f"{r['redis_cpu']:.0%}" if "redis_cpu" in r else ""
        lines.append(
            f"| {r['receivers']} | {r['senders']} | {r['setup']}{_marks(r)} | "
            f"{_k(r['deliveries_per_s'])} ({spread}) | {_ratio(r, 'deliveries_per_s', base)} | "
            f"{_nodes_cpu(r)} | {_us(r, 'server_us_per_msg')} | {redis} | "
            f"{_us(r, 'redis_us_per_msg')} | {r['generator_cpu']:.0%} | {r['lost']} |"
        )
    lines += [
        "",
        "Latency of one paced sender, in milliseconds; in `split` the sender is on the "
        "first node and `far` is the receivers on the second; `added` is over "
        f"`{base}`'s p50 / p99 (the far receivers' where there are some), per round.",
        "",
        f"| R | rate | setup | p50 | p99 | far p50 / p99 | added p50 / p99 | p99 x {base} | "
        "nodes' CPU | per message | Redis per message | lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "latency"):
        far = f"{r['far_p50_ms']:.2f} / {r['far_p99_ms']:.2f}" if "far_p50_ms" in r else ""
        added = (
            f"{r['added_p50_ms']:+.2f} / {r['added_p99_ms']:+.2f}" if "added_p50_ms" in r else ""
        )
        lines.append(
            f"| {r['receivers']} | {r['rate']:g}/s | {r['setup']}{_marks(r)} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} ({r['p99_ms_min']:.2f}-"
            f"{r['p99_ms_max']:.2f}) | {far} | {added} | {_ratio(r, 'p99_ms', base)} | "
            f"{_nodes_cpu(r)} | {_us(r, 'server_us_per_msg')} | "
            f"{_us(r, 'redis_us_per_msg')} | {r['lost']} |"
        )
    return lines


def web_md(doc: dict[str, Any]) -> list[str]:
    rows = doc["results"]
    base = "line"  # bench.web.BASE
    doors = {"line": "line", "line-json": "line, JSON", "ws": "WebSocket"}
    lines = [
        "Our server with both doors open (`--web` beside the line port), started afresh for "
        "every run, on CPU 0; the generator on CPU 1. Fan-out as above (one sender, 64-byte "
        "messages), with the receivers and the sender on the door each setup names; "
        "deliveries/s is the throughput at saturation, median of the runs (min-max); "
        "`per server CPU s` is deliveries over the server's CPU time, what it would do "
        "with a core to itself whichever side was the limit. `x line` is the median of "
        "per-round ratios to the `line` setup. `others` is what other processes and the "
        "kernel took of the two cores meanwhile (a run above 15 % is redone, up to three "
        "tries). The target is `ws` at least 0.5 x line.",
        "",
        "| R | setup | receivers | sender | deliveries/s | x line | per server CPU s | x line "
        "| server CPU | generator CPU | others | lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "fanout"):
        spread = f"{_k(r['deliveries_per_s_min'])}-{_k(r['deliveries_per_s_max'])}"
        lines.append(
            f"| {r['receivers']} | {r['setup']}{_marks(r)} | {doors[r['receiver_door']]} | "
            f"{doors[r['sender_door']]} | {_k(r['deliveries_per_s'])} ({spread}) | "
            f"{_ratio(r, 'deliveries_per_s', base)} | {_k(r['deliveries_per_cpu_s'])} | "
            f"{_ratio(r, 'deliveries_per_cpu_s', base)} | {r['server_cpu']:.0%} | "
            f"{r['generator_cpu']:.0%} | {r['others_cpu']:.0%} | {r['lost']} |"
        )
    lines += [
        "",
        "Memory: the server's RSS growth over the connections, each named, seated in "
        "`#scale` and sending `/ping` every 5 s (timeout 15 s), read once all are seated "
        "and each has pinged; median of the runs (min-max).",
        "",
        "| connections | door | RSS per connection | x line | all connected and seated "
        "| dropped meanwhile |",
        "|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "memory"):
        lines.append(
            f"| {r['clients']:,} | {doors[r['door']]}{_marks(r, 'steal_max')} | "
            f"{r['rss_per_conn_bytes'] / 1024:.1f} KiB ({r['rss_per_conn_bytes_min'] / 1024:.1f}-"
            f"{r['rss_per_conn_bytes_max'] / 1024:.1f}) | {_ratio(r, 'rss_per_conn_bytes', base)} "
            f"| {r['connect_s']:.2f} s ({r['connect_s_min']:.2f}-{r['connect_s_max']:.2f}) | "
            f"{r['timed_out']} |"
        )
    return lines


def _per_message(r: dict[str, Any]) -> str:
    """CPU microseconds per message: all, and the reactor thread's and the writer's."""
    return (
        f"{r['server_us_per_msg']:.2f} us ({r['reactor_us_per_msg']:.2f} + "
        f"{r['writer_us_per_msg']:.2f})"
    )


def _rows(r: dict[str, Any]) -> str:
    return f"{r['history_rows']:,}" if "history_rows" in r else ""


def _within(ratio: float | None, target: float, higher_is_worse: bool) -> str:
    if ratio is None:
        return ""
    ok = ratio <= 1 + target if higher_is_worse else ratio >= 1 - target
    return "yes" if ok else "no"


def history_md(doc: dict[str, Any]) -> list[str]:
    rows = doc["results"]
    base, target = "off", 0.10  # bench.history_cost.BASE, TARGET
    setups = dict.fromkeys(f"`{r['setup']}`: {r['what']}" for r in rows if "setup" in r)
    lines = [
        f"Setups: {'; '.join(setups)} (a new file for every run). Our server on CPU 0, "
        "started afresh for every run, the generator on CPU 1; `off` and `on` alternate "
        "within each round, each round starting with the other. Medians of the runs "
        "(min-max); `on / off` is the median of "
        "per-round ratios. CPU per message is the server's CPU time over the messages "
        "sent: reactor thread (over the measured part) + writer thread (until 2 s after "
        "it, so the last batch is counted). `rows kept` is the fewest rows an `on` run's "
        "file held once the server had stopped (each checked: the newest is the last "
        "message sent, no gap; retention keeps 5,000 a room). Within 10 %: deliveries/s "
        "at least 0.9 x, p50 and p99 at most 1.1 x `off`.",
        "",
        "Fan-out at saturation, one sender:",
        "",
        "| R | setup | deliveries/s | on / off | per server CPU s | on / off | server CPU "
        "| CPU per message (reactor + writer) | on / off | generator CPU | lost | rows kept "
        "| within 10 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "fanout"):
        spread = f"{_k(r['deliveries_per_s_min'])}-{_k(r['deliveries_per_s_max'])}"
        ratio = r.get(f"deliveries_per_s_ratio_to_{base}")
        lines.append(
            f"| {r['receivers']} | {r['setup']}{_marks(r)} | {_k(r['deliveries_per_s'])} "
            f"({spread}) | {_ratio(r, 'deliveries_per_s', base)} | "
            f"{_k(r['deliveries_per_cpu_s'])} | {_ratio(r, 'deliveries_per_cpu_s', base)} | "
            f"{r['server_cpu']:.0%} | {_per_message(r)} | "
            f"{_ratio(r, 'server_us_per_msg', base)} | {r['generator_cpu']:.0%} | "
            f"{r['lost']} | {_rows(r)} | {_within(ratio, target, False)} |"
        )
    lines += [
        "",
        "Latency, paced senders taking turns, in milliseconds:",
        "",
        "| R | senders | rate | setup | p50 | p99 | p99.9 | on / off p50, p99 | server CPU "
        "| CPU per message (reactor + writer) | on / off | lost | rows kept | within 10 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "latency"):
        p50, p99 = (r.get(f"{k}_ratio_to_{base}") for k in ("p50_ms", "p99_ms"))
        within = ""
        if p50 is not None and p99 is not None:
            within = "yes" if max(p50, p99) <= 1 + target else "no"
        lines.append(
            f"| {r['receivers']} | {r['senders']} | {r['rate']:g}/s | {r['setup']}{_marks(r)} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} ({r['p99_ms_min']:.2f}-"
            f"{r['p99_ms_max']:.2f}) | {r['p999_ms']:.2f} | "
            + (f"{p50:.2f}, {p99:.2f}" if p50 is not None and p99 is not None else "")
            + f" | {r['server_cpu']:.0%} | {_per_message(r)} | "
            f"{_ratio(r, 'server_us_per_msg', base)} | {r['lost']} | "
            f"{_rows(r)} | {within} |"
        )
    for r in (r for r in rows if r["kind"] == "store"):
        lines += [
            "",
            f"The store alone (`python -m bench.history --seconds {r['seconds']:g}`, pinned "
            f"to CPU 0, {r['runs']} runs, medians (min-max)): append "
            f"{r['append_us']:.2f} us on the reactor thread; the writer thread "
            f"{r['flush_per_s']:,.0f} entries/s; sustained, with the reactor thread "
            f"appending flat out, {r['sustained_per_s']:,.0f} entries/s "
            f"({r['sustained_per_s_min']:,.0f}-{r['sustained_per_s_max']:,.0f}); target "
            f"at least 50,000: {'met' if r['sustained_per_s_min'] >= 50_000 else 'not met'}.",
        ]
    return lines


def metrics_md(doc: dict[str, Any]) -> list[str]:
    rows = doc["results"]
    base = "off"  # bench.metrics_cost.BASE
    setups = dict.fromkeys(f"`{r['setup']}`: {r['what']}" for r in rows)
    lines = [
        f"Setups: {'; '.join(setups)} (both `--history none`). Our server on CPU 0, "
        "started afresh for every run, the generator on CPU 1; `off` and `on` alternate "
        "within each round, each round starting with the other. Medians of the runs "
        "(min-max); `on / off` is the median of "
        "per-round ratios. CPU per message is the server's CPU time over the measured "
        "part divided by the messages sent. Every `on` run's `/metrics` was scraped "
        "after it and checked (messages counted = messages sent, deliveries at least "
        "receivers x messages). Within 3 %: deliveries/s at least 0.97 x and CPU per "
        "message at most 1.03 x `off`.",
        "",
        "Fan-out at saturation, one sender:",
        "",
        "| R | setup | deliveries/s | on / off | server CPU | CPU per message | on / off "
        "| generator CPU | lost | within 3 % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "fanout"):
        spread = f"{_k(r['deliveries_per_s_min'])}-{_k(r['deliveries_per_s_max'])}"
        within = "" if "within_target" not in r else ("yes" if r["within_target"] else "no")
        lines.append(
            f"| {r['receivers']} | {r['setup']}{_marks(r)} | {_k(r['deliveries_per_s'])} "
            f"({spread}) | {_ratio3(r, 'deliveries_per_s', base)} | {r['server_cpu']:.0%} | "
            f"{r['server_us_per_msg']:.2f} us | {_ratio3(r, 'server_us_per_msg', base)} | "
            f"{r['generator_cpu']:.0%} | {r['lost']} | {within} |"
        )
    lines += [
        "",
        "Latency, paced senders taking turns, in milliseconds:",
        "",
        "| R | senders | rate | setup | p50 | p99 | p99.9 | on / off p50, p99 | server CPU "
        "| CPU per message | on / off | lost | within 3 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "latency"):
        p50, p99 = (r.get(f"{k}_ratio_to_{base}") for k in ("p50_ms", "p99_ms"))
        within = "" if "within_target" not in r else ("yes" if r["within_target"] else "no")
        lines.append(
            f"| {r['receivers']} | {r['senders']} | {r['rate']:g}/s | {r['setup']}{_marks(r)} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} ({r['p99_ms_min']:.2f}-"
            f"{r['p99_ms_max']:.2f}) | {r['p999_ms']:.2f} | "
            + (f"{p50:.3f}, {p99:.3f}" if p50 is not None and p99 is not None else "")
            + f" | {r['server_cpu']:.0%} | {r['server_us_per_msg']:.2f} us | "
            f"{_ratio3(r, 'server_us_per_msg', base)} | {r['lost']} | {within} |"
        )
    return lines


def _ratio3(row: dict[str, Any], key: str, name: str) -> str:
    value = row.get(f"{key}_ratio_to_{name}")
    return "" if value is None else f"{value:.3f}"


def _arrow(before: dict[str, Any], after: dict[str, Any], key: str, fmt: str) -> str:
    if key not in after:
        return "-"
    old = format(before[key], fmt) if key in before else "-"
    if f"{key}~" in before:  # not measured then: derived from the medians
        old = "~" + format(before[f"{key}~"], fmt)
    return f"{old} -> {format(after[key], fmt)}"


def _per_cpu_from_medians(rows: list[dict[str, Any]]) -> None:
    """Runs before deliveries per CPU second were measured: the ratio of medians, marked
    with ``~`` in the table (the ratios measured now are medians of per-round ratios)."""
    for ours in rows:
        if ours["server"] != "groupchat":
            continue
        for ref in rows:
            key = f"deliveries_per_cpu_s_ratio_to_{ref['server']}"
            same = (ref["receivers"], ref["senders"]) == (ours["receivers"], ours["senders"])
            if same and ref is not ours and key not in ours and ref["server_cpu"]:
                ours[f"{key}~"] = (ours["deliveries_per_s"] / ours["server_cpu"]) / (
                    ref["deliveries_per_s"] / ref["server_cpu"]
                )


def _ratios(before: dict[str, Any], after: dict[str, Any], keys: list[str], name: str) -> str:
    return ", ".join(_arrow(before, after, f"{k}_ratio_to_{name}", ".2f") for k in keys)


# What identifies a row across runs, and the columns worth comparing, per scenario:
# (column title, key, format); then the keys whose ratios to each reference are shown.
_COMPARED: dict[str, tuple[tuple[str, ...], list[tuple[str, str, str]], list[str]]] = {
    "fanout": (
        ("receivers", "senders"),
        [("deliveries/s", "deliveries_per_s", ",.0f"), ("server CPU", "server_cpu", ".0%")],
        ["deliveries_per_s", "deliveries_per_cpu_s"],
    ),
    "latency": (
        ("rate",),
        [
            ("p50 ms", "p50_ms", ".2f"),
            ("p99 ms", "p99_ms", ".2f"),
            ("server CPU", "server_cpu", ".0%"),
        ],
        ["p99_ms", "server_cpu"],
    ),
    "senders": (
        ("receivers", "senders"),
        [
            ("p50 ms", "p50_ms", ".2f"),
            ("p99 ms", "p99_ms", ".2f"),
            ("server CPU", "server_cpu", ".0%"),
        ],
        ["p50_ms", "p99_ms", "server_cpu"],
    ),
    "scale": (
        ("clients",),
        [
            ("seated in, s", "connect_s", ".2f"),
            ("RSS per connection, bytes", "rss_per_conn_bytes", ",.0f"),
            ("one message to all, ms", "broadcast_ms", ".0f"),
        ],
        [],
    ),
}


_TITLES = {
    "deliveries_per_s": "deliveries/s",
    "deliveries_per_cpu_s": "per CPU s",
    "p50_ms": "p50",
    "p99_ms": "p99",
    "server_cpu": "CPU",
}


def before_after_md(out: Path) -> list[str]:
    """groupchat's rows of each scenario kept in ``out/before`` beside the same rows now:
    where a round of work started, and where the run above left it."""
    lines: list[str] = []
    for scenario, (ident, columns, ratio_keys) in _COMPARED.items():
        before_doc, after_doc = _load(out / "before", scenario), _load(out, scenario)
        if before_doc is None or after_doc is None:
            continue
        if scenario == "fanout":
            _per_cpu_from_medians(before_doc["results"])
        ours = [r for r in after_doc["results"] if r.get("server", "groupchat") == "groupchat"]
        earlier = {
            tuple(r.get(k) for k in ident): r
            for r in before_doc["results"]
            if r.get("server", "groupchat") == "groupchat"
        }
        names = sorted({k.split("_ratio_to_")[1] for r in ours for k in r if "_ratio_to_" in k})
        ratio_titles = ", ".join(_TITLES[k] for k in ratio_keys)
        lines += [
            f"**{scenario}**: before `{before_doc['command']}`, {before_doc['date']}; "
            f"after: the table above.",
            "",
            "| "
            + " | ".join(ident)
            + " | "
            + " | ".join(t for t, _, _ in columns)
            + " |"
            + "".join(f" {ratio_titles}: ours / {n} |" for n in names if ratio_keys),
            "|" + "---|" * (len(ident) + len(columns) + (len(names) if ratio_keys else 0)),
        ]
        for row in ours:
            old = earlier.get(tuple(row.get(k) for k in ident), {})
            cells = [f"{row[k]:,g}" for k in ident]
            cells += [_arrow(old, row, key, fmt) for _, key, fmt in columns]
            if ratio_keys:
                cells += [_ratios(old, row, ratio_keys, n) for n in names]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def render(out: Path) -> str:
    parts: list[str] = []
    for scenario, title, table in (
        ("fanout", "Fan-out throughput", fanout_md),
        ("latency", "Latency", latency_md),
        ("senders", "Many senders", senders_md),
        ("scale", "Connection scale (groupchat)", scale_md),
        ("web", "WebSocket (browser) clients", web_md),
        ("backplane", "Backplane: one room on one node or over two", backplane_md),
        ("history", "History: the server with room history against without", history_md),
        ("metrics", "Metrics: the server with --metrics against without", metrics_md),
    ):
        doc = _load(out, scenario)
        if doc is None:
            continue
        m = doc["machine"]
        redis = "redis" if scenario == "backplane" else "groupchat"  # backplane: Redis
        ran = {r.get("server", redis) for r in doc["results"]}
        refs = "".join(
            f"; {m[tool]}" for tool in ("redis-server", "ngircd") if tool.split("-")[0] in ran
        )
        parts += [
            f"### {title}",
            "",
            f"`{doc['command']}`, {doc['date']}; {m['cpu']}, {m['cores']} cores, "
            f"Python {m['python']}, Twisted {m['twisted']}, generator on {m['generator']}"
            f"{refs}.",
            "",
            *table(doc),
            "",
        ]
        if scenario == "fanout" and (out / "fanout.svg").exists():
            parts += ["![Fan-out throughput against receivers](bench/fanout.svg)", ""]
    compared = before_after_md(out)
    if compared:
        parts += [
            "### Before and after (groupchat's rows)",
            "",
            "The figures kept in `docs/bench/before/` (where the current round of work "
            "started) against the same rows of the tables above; ratios as in those tables.",
            "",
            *compared,
        ]
    return "\n".join(parts)


def update(document: Path, out: Path) -> None:
    """Replace the results between the markers (appending them if there are none)."""
    text = document.read_text() if document.exists() else ""
    block = f"{START}\n\n{render(out)}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    document.write_text(text)
