"""The history store alone: what an append costs the reactor thread, and how many entries
a second the writer thread puts in the file.

    python -m bench.history [--seconds 10] [--rooms 100] [--text-bytes 80]

Three figures, on the real reactor and the store's own writer thread, in a temporary
directory (or ``--dir``):

- ``append``: the reactor thread's cost per ``append`` (memory only), in microseconds:
  the median of several timed runs of 100,000 appends, flushed between runs.
- ``flush``: 200,000 entries appended, then one ``flush()``: entries per second of the
  writer thread alone (one transaction, ``executemany``).
- ``sustained``: for ``--seconds``, the reactor appends in chunks of 5,000 per turn as
  fast as it can while the store's 1 s flush loop writes in the background; the rate is
  the rows in the file after ``close()`` over the time from the first append to the end
  of ``close()``. The appender waits while PENDING_MAX - 10,000 entries wait for the writer
  (beyond ``PENDING_MAX`` the store would drop them). The writer and the appender share
  the GIL, so this is the rate the store sustains with the reactor thread busy. With a
  1 s interval the store takes at most ``PENDING_MAX`` (200,000) entries a second: past
  the writer's own speed, this run shows that cap, not the disk's.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from twisted_chat.history import SQLiteHistory
from twisted_chat.history.store import PENDING_MAX


def _text(i: int, size: int) -> str:
    return (f"message {i} " + "x" * size)[:size]


async def _append_cost(reactor: Any, folder: Path, rooms: int, size: int) -> float:
    store = SQLiteHistory(str(folder / "append.sqlite"), reactor, flush_interval=3600)
    store.open()
    texts = [_text(i, size) for i in range(1000)]
    names = [f"#room{r}" for r in range(rooms)]
    runs = []
    try:
        for _ in range(7):
            n = 100_000
            start = time.perf_counter()
            append = store.append
            for i in range(n):
                append(names[i % rooms], 1.0e9 + i, "message", "alice", texts[i % 1000])
            runs.append((time.perf_counter() - start) / n * 1e6)
            await store.flush()
    finally:
        await store.close()
    return statistics.median(runs)


async def _flush_rate(reactor: Any, folder: Path, rooms: int, size: int) -> float:
    store = SQLiteHistory(str(folder / "flush.sqlite"), reactor, flush_interval=3600)
    store.open()
    try:
        await store.flush()  # the first retention pass, out of the timing
        n = 200_000
        for i in range(n):
            store.append(f"#room{i % rooms}", 1.0e9 + i, "message", "alice", _text(i, size))
        start = time.perf_counter()
        await store.flush()
        return n / (time.perf_counter() - start)
    finally:
        await store.close()


async def _sustained(
    reactor: Any, folder: Path, rooms: int, size: int, seconds: float
) -> tuple[float, int, float]:
    path = folder / "sustained.sqlite"
    store = SQLiteHistory(str(path), reactor, keep=10**9, flush_interval=1.0)
    store.open()
    names = [f"#room{r}" for r in range(rooms)]
    texts = [_text(i, size) for i in range(1000)]
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        if store.backlog >= PENDING_MAX - 10_000:  # the writer is behind: wait rather than drop
            await task.deferLater(reactor, 0.001, lambda: None)
            continue
        for _ in range(5000):
            store.append(names[count % rooms], 1.0e9 + count, "message", "bob", texts[count % 1000])
            count += 1
        await task.deferLater(reactor, 0, lambda: None)  # let the reactor turn
    appended = time.perf_counter() - start
    await store.close()
    elapsed = time.perf_counter() - start
    with sqlite3.connect(path) as db:
        (rows,) = db.execute("SELECT coalesce(sum(n), 0) FROM chunks").fetchone()
    assert rows == count, (rows, count)
    return rows / elapsed, rows, elapsed - appended


async def main(reactor: Any, options: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=options.dir) as name:
        folder = Path(name)
        cost = await _append_cost(reactor, folder, options.rooms, options.text_bytes)
        print(f"append: {cost:.2f} us per entry on the reactor thread (median of 7 x 100,000)")
        rate = await _flush_rate(reactor, folder, options.rooms, options.text_bytes)
        print(f"flush: {rate:,.0f} entries/s (200,000 entries, one flush, writer thread)")
        sustained, rows, tail = await _sustained(
            reactor, folder, options.rooms, options.text_bytes, options.seconds
        )
        print(
            f"sustained: {sustained:,.0f} entries/s ({rows:,} entries in {options.seconds:g} s"
            f" of appends with the 1 s flush loop; close() took {tail:.2f} s more)"
        )
    if options.json:  # for ``python -m bench history``, which runs this in a process of its own
        figures = {
            "append_us": cost,
            "flush_per_s": rate,
            "sustained_per_s": sustained,
            "sustained_rows": rows,
            "close_s": tail,
        }
        Path(options.json).write_text(json.dumps(figures) + "\n")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--text-bytes", type=int, default=80)
    parser.add_argument("--dir", default=None, help="where the temporary files go")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    options = parser.parse_args()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))


if __name__ == "__main__":
    run()
