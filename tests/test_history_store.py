"""The history store: memory tails, batched SQLite writes, retention, failures."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher

from twisted_chat.history import Entry, HistoryUnavailable, SQLiteHistory, conversation
from twisted_chat.history.store import CHUNK_LINES, READS_MAX, SCHEMA_VERSION, stored_lines


def sync_run(f: Callable[[], Any]) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f)


def result(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (synchronous runner)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def add(
    store: SQLiteHistory,
    room: str,
    ts: float,
    kind: str,
    nick: str,
    text: str,
    to: str | None = None,
) -> Entry:
    """Append, and the entry the store now holds."""
    return Entry(store.append(room, ts, kind, nick, text, to), room, ts, kind, nick, text, to)


def make(path: Path, clock: Clock | None = None, **kw: Any) -> SQLiteHistory:
    store = SQLiteHistory(str(path), clock or Clock(), run=sync_run, **kw)
    store.open()
    return store


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return [(e.id, e.room, e.text) for e in stored_lines(db)]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "history.sqlite"


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def test_append_then_recent_in_order_and_capped_at_the_tail(db_path):
    store = make(db_path, tail=5)
    made = [add(store, "#a", float(i), "message", "al", f"m{i}") for i in range(8)]
    store.append("#b", 0.0, "action", "bo", "waves")
    # A full tail may have let older entries go: "more" says the file may hold them.
    assert store.recent("#a", 100) == (made[3:], True)
    assert store.recent("#a", 2) == (made[-2:], True)
    assert [e.id for e in made] == sorted({e.id for e in made})
    assert store.mark() == made[-1].id + 2  # "#b" took the next one
    assert store.recent("#nowhere", 5) == ([], False)
    items, more = store.recent("#b", 5)
    assert items[0].kind == "action" and not more  # all of "#b" is in memory
    assert store.recent("#b", 0) == ([], True)
    assert rows(db_path) == []  # nothing written on the calling thread
    result(store.close())


def test_each_flush_writes_its_batch_in_one_transaction(db_path):
    clock = Clock()
    store = make(db_path, clock)
    statements: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(statements.append)
    for i in range(50):
        store.append("#a", 0.0, "message", "al", f"m{i}")
    clock.advance(1.0)
    assert statements.count("BEGIN") == 1
    assert statements.count("COMMIT") == 1
    assert len(rows(db_path)) == 50
    statements.clear()
    store.append("#a", 0.0, "message", "al", "late")
    clock.advance(1.0)
    assert statements.count("BEGIN") == 1
    assert len(rows(db_path)) == 51
    result(store.close())


def test_a_restart_keeps_history_and_continues_ids(db_path):
    store = make(db_path, tail=3)
    for i in range(5):
        store.append("#a", float(i), "message", "al", f"m{i}")
    last = add(store, "#b", 9.0, "private", "al", "psst", to="Bo")
    result(store.close())

    again = make(db_path, tail=3)
    assert [e.text for e in again.recent("#a", 10)[0]] == ["m2", "m3", "m4"]
    assert again.recent("#b", 1) == ([last], False)
    # Ids follow the time, and never go back, even for a line said "earlier".
    assert again.append("#a", 10.0, "message", "al", "next") == 10_000_000
    assert again.append("#a", 1.0, "message", "al", "late") == 10_000_001
    assert last.id == 9_000_000
    result(again.close())


def test_before_pages_back_capped_at_200_and_empty_when_nothing_older(db_path):
    store = make(db_path, keep=1000)
    made = [add(store, "#a", float(i), "message", "al", f"m{i}") for i in range(300)]
    store.append("#b", 0.0, "message", "bo", "elsewhere")
    # Unflushed entries are found too: before() writes first.
    page = result(store.before("#a", made[250].id, 10))
    assert page == (made[240:250], True)
    assert result(store.before("#a", made[299].id + 1, 1000)) == (made[100:300], True)
    assert result(store.before("#a", made[10].id, 10)) == (made[:10], False)
    assert result(store.before("#a", made[11].id, 10)) == (made[1:11], True)
    assert result(store.before("#a", made[0].id, 10)) == ([], False)
    assert result(store.before("#nowhere", 10**9, 10)) == ([], False)
    result(store.close())


def test_retention_by_count_keeps_the_newest_per_room(db_path):
    clock = Clock()
    store = make(db_path, clock, keep=10, retain_interval=60.0)
    for i in range(25):
        store.append("#a", 0.0, "message", "al", f"a{i}")
    for i in range(3):
        store.append("#b", 0.0, "message", "bo", f"b{i}")
    clock.advance(1.0)  # the first flush trims every room
    texts = [t for (_, room, t) in rows(db_path) if room == "#a"]
    assert texts == [f"a{i}" for i in range(15, 25)]
    for i in range(25, 40):
        store.append("#a", 0.0, "message", "al", f"a{i}")
    clock.advance(1.0)  # not due yet: one minute between passes
    assert len([r for r in rows(db_path) if r[1] == "#a"]) == 25
    clock.pump([1.0] * 60)
    texts = [t for (_, room, t) in rows(db_path) if room == "#a"]
    assert texts == [f"a{i}" for i in range(30, 40)]
    assert len([r for r in rows(db_path) if r[1] == "#b"]) == 3
    result(store.close())


def ten_days_on(path: Path, **kw: Any) -> tuple[SQLiteHistory, Clock, float]:
    """A store whose clock reads ten days, room for lines days older; and that time."""
    clock = Clock()
    clock.advance(10 * 86400)
    return make(path, clock, **kw), clock, clock.seconds()


def test_retention_by_age(db_path):
    store, clock, now = ten_days_on(db_path, days=2, retain_interval=0.0)
    for age in (5, 3, 1.5, 0.5):
        store.append("#a", now - age * 86400, "message", "al", f"{age} days")
    clock.advance(1.0)
    assert [t for (_, _, t) in rows(db_path)] == ["1.5 days", "0.5 days"]
    # Memory forgets them too, as they are asked for.
    assert [e.text for e in store.recent("#a", 10)[0]] == ["1.5 days", "0.5 days"]
    clock.advance(86400 * 1.6)
    assert [t for (_, _, t) in rows(db_path)] == []
    assert store.recent("#a", 10) == ([], False)
    result(store.close())


def test_a_corrupt_file_is_refused_with_its_path(db_path):
    db_path.write_bytes(b"this is not a database, just garbage bytes\x00\xff" * 100)
    store = SQLiteHistory(str(db_path), Clock(), run=sync_run)
    with pytest.raises(HistoryUnavailable, match=r"history file .*history\.sqlite"):
        store.open()
    assert not store.available


def test_a_newer_schema_version_is_refused(db_path):
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (4)")
    with pytest.raises(HistoryUnavailable, match=r"schema version 4.*upgrade"):
        make(db_path)


def test_a_version_1_file_is_migrated_and_keeps_its_lines_and_server_bans_are_kept(db_path):
    with sqlite3.connect(db_path) as db:  # the first release's schema, with one line
        db.executescript(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);"
            "INSERT INTO schema_version VALUES (1);"
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, room TEXT NOT NULL, ts REAL NOT NULL,"
            " kind TEXT NOT NULL, nick TEXT NOT NULL, text TEXT NOT NULL, recipient TEXT);"
            "CREATE INDEX messages_room_id ON messages (room, id);"
            "INSERT INTO messages VALUES (7, '#a', 1.0, 'message', 'al', 'old', NULL);"
        )
    store = make(db_path)
    assert [e.text for e in store.recent("#a", 5)[0]] == ["old"]
    assert store.bans == []
    store.save_bans([("203.0.113.0/24", "root", "spam")])
    result(store.close())
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    again = make(db_path)
    assert again.bans == [("203.0.113.0/24", "root", "spam")]
    result(again.close())


def test_a_version_2_file_is_regrouped_into_chunks_and_reads_as_before(db_path, logged):
    with sqlite3.connect(db_path) as db:  # a row a line, as schema 2 kept them
        db.executescript(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);"
            "INSERT INTO schema_version VALUES (2);"
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, room TEXT NOT NULL, ts REAL NOT NULL,"
            " kind TEXT NOT NULL, nick TEXT NOT NULL, text TEXT NOT NULL, recipient TEXT);"
            "CREATE INDEX messages_room_id ON messages (room, id);"
            "CREATE TABLE bans (network TEXT PRIMARY KEY, by TEXT NOT NULL, reason TEXT NOT NULL);"
            "INSERT INTO bans VALUES ('198.51.100.7', 'root', 'flood');"
        )
        lines: list[tuple[int, str, float, str, str, str, str | None]] = [
            (i, "#a" if i % 3 else "#b", float(i), "message", "al", f"m{i}", None)
            for i in range(1, 700)
        ]
        lines.append((700, conversation("al", "Bo"), 700.0, "private", "al", "psst", "Bo"))
        db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", lines)
    store = make(db_path, keep=1000, tail=5)
    assert store.bans == [("198.51.100.7", "root", "flood")]
    assert [e.text for e in store.recent("#a", 2)[0]] == ["m697", "m698"]
    page, more = result(store.before("#a", 11, 5))
    assert [e.text for e in page] == ["m4", "m5", "m7", "m8", "m10"] and more
    assert store.append("#a", 0.0, "message", "al", "next") == 701
    result(store.close())
    with sqlite3.connect(db_path) as db:
        assert [tuple(e) for e in stored_lines(db)][:-1] == lines
        tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "messages" not in tables
        (chunks,) = db.execute("SELECT count(*) FROM chunks").fetchone()
    assert chunks == 2 + 1 + 1 + 1  # 466 lines of #a, 233 of #b, one conversation, "next"
    # Said in the log, as it holds up the start; the old table's pages are given back.
    said = [e["log_format"] for e in logged if "schema" in e.get("log_format", "")]
    assert said == [
        "history file {path}: converting from schema {old} to {new}, once",
        "history file {path}: converted to schema {new} in {seconds:.1f} s",
    ]
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA freelist_count").fetchone() == (0,)


def test_a_busy_flush_is_a_few_rows_and_retention_cuts_inside_one(db_path):
    clock = Clock()
    store = make(db_path, clock, keep=300, retain_interval=60.0)
    made = [add(store, "#a", 0.0, "message", "al", f"m{i}") for i in range(3 * CHUNK_LINES)]
    store.append("#b", 0.0, "message", "bo", "one")
    statements: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(statements.append)
    store.flush()  # the first flush also runs the first pass of retention
    inserted = [s for s in statements if s.startswith("INSERT INTO chunks")]
    assert len(inserted) == 3 + 1 + 1  # three chunks of #a, one of #b, the cut one again
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT room, n FROM chunks ORDER BY first").fetchall() == [
            ("#a", 300 - CHUNK_LINES),
            ("#a", CHUNK_LINES),
            ("#b", 1),
        ]
    # Paging back crosses chunks, and finds the lines retention kept.
    kept = made[-300:]
    assert result(store.before("#a", made[-1].id + 1, 200)) == (kept[-200:], True)
    assert result(store.before("#a", kept[100].id, 200)) == (kept[:100], False)
    with sqlite3.connect(db_path) as db:
        assert [e.text for e in stored_lines(db, "#a")] == [e.text for e in kept]
    result(store.close())


def test_retention_by_age_cuts_the_chunks_it_passes_through(db_path):
    store, clock, now = ten_days_on(db_path, days=1, retain_interval=3600.0)
    for hour in range(48):  # two rooms, interleaved, hourly, all in one flush
        store.append(
            "#a" if hour % 2 else "#b", now - (48 - hour) * 3600, "message", "al", str(hour)
        )
    clock.advance(1.0)
    with sqlite3.connect(db_path) as db:
        left = [e.text for e in stored_lines(db)]
    assert left == [str(h) for h in range(25, 48)]  # 24 hours and a second: gone
    result(store.close())


def test_a_directory_that_cannot_be_written_is_refused_at_start(tmp_path):
    with pytest.raises(HistoryUnavailable, match=r"missing/history\.sqlite"):
        make(tmp_path / "missing" / "history.sqlite")


def test_failing_writes_are_logged_mark_unavailable_and_recover(db_path, logged, logged_errors):
    logged_errors.expected = True
    clock = Clock()
    store = make(db_path, clock)
    clock.advance(1.0)
    assert store._db is not None
    # A full disk, for real: SQLite may not grow the file past its current pages.
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(2000):
        store.append("#a", 0.0, "message", "al", "x" * 100 + str(i))
    clock.advance(1.0)  # no exception reaches us
    assert store.available is False
    errors = [e for e in logged if e.get("log_level") == LogLevel.error]
    assert errors and errors[0]["count"] == 2000 and "full" in errors[0]["error"]
    assert len(store.recent("#a", 200)[0]) == 200  # memory still works
    for i in range(2000):
        store.append("#a", 0.0, "message", "al", "y" * 100 + str(i))
    clock.advance(1.0)  # still failing; the loop keeps going, quietly
    assert store.available is False
    levels = [e["log_level"] for e in logged if e["log_level"] >= LogLevel.warn]
    assert levels == [LogLevel.error]  # not a line a second
    for i in range(2000):
        store.append("#a", 0.0, "message", "al", "z" * 100 + str(i))
    clock.advance(60.0)  # a minute on: one warning, with what was dropped since
    warnings = [e for e in logged if e.get("log_level") == LogLevel.warn]
    assert [e["count"] for e in warnings] == [4000]
    store._db.execute("PRAGMA max_page_count = 1073741823")
    store.append("#a", 0.0, "message", "al", "back")
    clock.advance(1.0)
    assert store.available is True
    assert [t for (_, _, t) in rows(db_path)] == ["back"]
    result(store.close())


def test_a_read_only_directory_is_refused_at_start(tmp_path):
    if os.geteuid() == 0:
        # Root writes through permission bits; nobody can create a file in /proc.
        with pytest.raises(HistoryUnavailable, match=r"/proc/history\.sqlite"):
            make(Path("/proc/history.sqlite"))
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(HistoryUnavailable, match=r"ro/history\.sqlite"):
            make(folder / "history.sqlite")
    finally:
        folder.chmod(0o700)


def test_unicode_round_trips(db_path):
    store = make(db_path)
    text = "héllo 世界 🎉 \u200b‮ test"
    store.append("#ünï", 1.5, "message", "Zoë", text)
    result(store.close())
    again = make(db_path)
    assert result(again.before("#ünï", 10**9, 5)) == (
        [Entry(1_500_000, "#ünï", 1.5, "message", "Zoë", text)],
        False,
    )
    result(again.close())


def test_privates_go_under_a_conversation_key(db_path):
    assert conversation("Al", "bo") == conversation("Bo", "al") == "@al bo"
    store = make(db_path)
    entry = add(store, conversation("Al", "Bo"), 1.0, "private", "Al", "hi", to="Bo")
    # Kept in the file only: nobody is shown a conversation on joining.
    assert store.recent("@al bo", 5) == ([], False)
    assert result(store.before("@al bo", store.mark(), 5)) == ([entry], False)
    result(store.close())


def test_closing_flushes_stops_the_loop_and_is_idempotent(db_path):
    clock = Clock()
    store = make(db_path, clock)
    store.append("#a", 0.0, "message", "al", "last words")
    d = store.close()
    assert result(d) is None
    assert store.close() is d
    assert rows(db_path) == [(1, "#a", "last words")]
    assert clock.getDelayedCalls() == []
    assert store.available is False


class QueuedRun:
    """A writer thread the test steps by hand: functions run in order, when asked."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []

    def __call__(self, f: Callable[[], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((f, d))
        return d

    def step(self) -> None:
        f, d = self.jobs.pop(0)
        d.callback(f())


def test_flush_and_close_wait_for_a_write_still_in_progress(db_path):
    clock = Clock()
    run = QueuedRun()
    store = SQLiteHistory(str(db_path), clock, run=run)
    store.open()
    store.append("#a", 0.0, "message", "al", "in flight")
    clock.advance(1.0)  # the loop hands the batch over; the "thread" has not run it yet
    assert store.backlog == 0 and len(run.jobs) == 1
    flushed = store.flush()
    closed = store.close()
    assert not flushed.called and not closed.called
    while run.jobs:
        run.step()
    assert flushed.called and closed.called
    assert rows(db_path) == [(1, "#a", "in flight")]


@pytest_twisted.inlineCallbacks
def test_the_real_writer_thread_writes_pages_and_closes():
    from tempfile import TemporaryDirectory

    from twisted.internet import reactor

    with TemporaryDirectory() as folder:
        path = Path(folder) / "history.sqlite"
        store = SQLiteHistory(str(path), reactor, flush_interval=0.05)
        store.open()
        try:
            made = [add(store, "#a", float(i), "message", "al", f"m{i}") for i in range(500)]
            page = yield store.before("#a", made[-1].id, 5).addTimeout(10, reactor)
            assert page == (made[-6:-1], True)
            store.append("#a", 0.0, "message", "al", "after")
            # The loop alone writes it, within a few intervals.
            for _ in range(200):
                if len(rows(path)) == 501:
                    break
                yield deferLater(reactor, 0.02)
            assert len(rows(path)) == 501
        finally:
            yield store.close().addTimeout(10, reactor)
        assert store._pool is None
        again = SQLiteHistory(str(path), reactor)
        again.open()
        try:
            assert again.recent("#a", 1)[0][0].text == "after"
        finally:
            yield again.close().addTimeout(10, reactor)


def deferLater(reactor: Any, delay: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, delay, lambda: None)


def test_reads_waiting_for_the_writer_are_bounded(db_path):
    waiting: list[defer.Deferred[Any]] = []

    def queued(f: Callable[[], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        waiting.append(d)
        d.addCallback(lambda _: f())
        return d

    store = SQLiteHistory(str(db_path), Clock(), run=queued)
    store.open()
    store.append("#a", 1.0, "message", "al", "hi")
    reads = [store.before("#a", 10**9, 5) for _ in range(READS_MAX)]
    refused = store.before("#a", 10**9, 5)
    with pytest.raises(HistoryUnavailable, match="busy"):
        result(refused)
    for d in list(waiting):
        d.callback(None)
    assert [len(result(d)[0]) for d in reads] == [1] * READS_MAX
    again = store.before("#a", 10**9, 5)  # room again
    waiting[-1].callback(None)
    assert len(result(again)[0]) == 1


def test_a_file_another_server_is_using_is_refused(db_path):
    first = make(db_path)
    second = SQLiteHistory(str(db_path), Clock(), run=sync_run)
    for attempt in (second.check, second.open):
        with pytest.raises(HistoryUnavailable, match="in use by another groupchat server"):
            attempt()
    assert second._db is None and not second.available
    result(first.close())
    second.check()  # free again once the first has closed it
    second.open()
    result(second.close())


def test_a_file_in_use_is_refused_before_it_is_converted(db_path):
    with sqlite3.connect(db_path) as db:  # schema 2, as the server before kept it
        db.executescript(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);"
            "INSERT INTO schema_version VALUES (2);"
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, room TEXT NOT NULL, ts REAL NOT NULL,"
            " kind TEXT NOT NULL, nick TEXT NOT NULL, text TEXT NOT NULL, recipient TEXT);"
            "CREATE TABLE bans (network TEXT PRIMARY KEY, by TEXT NOT NULL, reason TEXT NOT NULL);"
        )
    with open(db_path, "rb") as held:  # the older server, still running, holds the lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        newer = SQLiteHistory(str(db_path), Clock(), run=sync_run)
        for attempt in (newer.check, newer.open):
            with pytest.raises(HistoryUnavailable, match="in use by another groupchat server"):
                attempt()
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    newer.open()  # once it has stopped
    result(newer.close())
