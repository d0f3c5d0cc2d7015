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


def fanout_md(doc: dict[str, Any]) -> list[str]:
    rows = doc["results"]
    names = list(dict.fromkeys(r["server"] for r in rows))
    others = [n for n in names if n != "groupchat"]
    lines = [
        "Deliveries per second, median of the runs (min-max); server and generator CPU are "
        "medians too. The last columns are groupchat's throughput over each reference, "
        "the median of per-round ratios.",
        "",
        "| R | S | server | deliveries/s | server CPU | generator CPU | lost |"
        + "".join(f" ours / {n} |" for n in others),
        "|---|---|---|---|---|---|---|" + "---|" * len(others),
    ]
    for r in rows:
        spread = f"{_k(r['deliveries_per_s_min'])}-{_k(r['deliveries_per_s_max'])}"
        ratios = "".join(
            f" {_ratio(r, 'deliveries_per_s', n)} |" if r["server"] == "groupchat" else " |"
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


def render(out: Path) -> str:
    parts: list[str] = []
    for scenario, title, table in (
        ("fanout", "Fan-out throughput", fanout_md),
        ("latency", "Latency", latency_md),
        ("scale", "Connection scale (groupchat)", scale_md),
    ):
        doc = _load(out, scenario)
        if doc is None:
            continue
        m = doc["machine"]
        ran = {r["server"] for r in doc["results"]}
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
