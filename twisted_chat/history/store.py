"""The history store: recent messages per room in memory, everything in SQLite.

The reactor thread only touches memory: ``append`` puts an entry in its room's tail (what
``recent`` answers from) and in a pending batch. A ``LoopingCall`` hands the batch, every
``flush_interval`` (``FLUSH_EVERY``), to one writer thread that inserts it in one
transaction, so a busy room costs the reactor a deque append per message and SQLite one
commit per interval. SIGTERM (``close``) loses nothing; SIGKILL loses at most the last
interval.

The file keeps a room's lines in chunks: one row for up to ``CHUNK_LINES`` lines of one
room from one flush (ids and times as packed numbers, the rest as one JSON array). A line a
row cost two B-tree inserts and later two deletes per line, and the writer thread, on the
reactor's core, took a third of it in a busy room; a chunk costs that once per batch.

Retention runs in the writer thread right after a flush's insert, at most once every
``retain_interval`` seconds (a minute by default), not on every flush: by count (``keep``
per room, for the rooms written to since the last pass; every room on the first pass) and
by age (``days``). Whole chunks go as ranges of the key; the one chunk a limit cuts through
is rewritten with the lines it keeps.

Private messages are stored like room messages under a conversation key,
``conversation(a, b)`` (``"@"`` and the two casefolded nicknames, sorted), which cannot be a
room name (rooms start with ``#``); ``to`` holds the recipient as it was typed.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import IO, Any, NamedTuple, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from twisted_chat.core.errors import HistoryUnavailable
from twisted_chat.core.names import conversation

__all__ = ["PAGE_MAX", "Entry", "HistoryUnavailable", "SQLiteHistory", "conversation"]

T = TypeVar("T")
Runner = Callable[[Callable[[], T]], "defer.Deferred[T]"]

SCHEMA_VERSION = 3
PAGE_MAX = 200
# Beyond this many entries waiting for the writer (a hung or very slow disk), new ones are
# kept in memory tails only, and counted as dropped: memory stays bounded.
PENDING_MAX = 200_000
# Reads waiting for the writer thread at most: beyond, /history is told to try again, so
# that many members paging at once cannot hold the writes back (they share the thread).
READS_MAX = 32
OUTAGE_REPORT_EVERY = 60.0  # seconds between two log lines about failing writes
# Lines of one room in one row at most: a page read decodes one or two rows, not a
# busy second's worth.
CHUNK_LINES = 256
# Seconds between two batches handed to the writer. Shorter batches hold the writer's
# share of the core in shorter spells (at 1 s, a fan-out into 100 that was not at its
# limit lost about a tenth of its deliveries while the writer ran; at 0.2 s about half
# that), and SIGKILL loses less; a WAL commit without fsync costs little.
FLUSH_EVERY = 0.2

# ``first`` (the key) and ``last`` are the chunk's lowest and highest ids: one room's
# chunks never overlap, and ids follow time, so both limits cut at one place in a room.
# ``ids`` and ``times`` are packed little-endian int64 and float64; ``body`` is the JSON
# array [kinds, nicks, texts, recipients].
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    first INTEGER PRIMARY KEY,
    last INTEGER NOT NULL,
    room TEXT NOT NULL,
    ts_first REAL NOT NULL,
    ts_last REAL NOT NULL,
    n INTEGER NOT NULL,
    ids BLOB NOT NULL,
    times BLOB NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_room_first ON chunks (room, first);
CREATE TABLE IF NOT EXISTS bans (network TEXT PRIMARY KEY, by TEXT NOT NULL, reason TEXT NOT NULL);
"""
_CHUNK_COLUMNS = "room, ids, times, body"


class Entry(NamedTuple):
    """One stored line. ``id`` is the store's, increasing, unique across restarts (it
    follows the time in microseconds); ``kind`` is "message", "action" or "private"
    (``to``: the recipient).

    What readers get (``recent``, ``before``); the store itself keeps ``Row``s.
    """

    id: int
    room: str
    ts: float
    kind: str
    nick: str
    text: str
    to: str | None = None


# A line as the reactor keeps it: Entry's fields in a plain tuple. The collector stops
# following a plain tuple of strings and numbers once it has seen it, but follows a
# NamedTuple for good: a busy second's lines waiting for the writer made the full
# collections run again and again, and cost the reactor more than the rest of append.
Row = tuple[int, str, float, str, str, str, str | None]
_row_time: Callable[[Row], float] = itemgetter(2)
_row_room: Callable[[Row], str] = itemgetter(1)

_new = tuple.__new__
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_SWAP = sys.byteorder != "little"


def _packed(kind: str, values: Iterable[Any]) -> bytes:
    numbers = array(kind, values)
    if _SWAP:
        numbers.byteswap()
    return numbers.tobytes()


def _unpacked(kind: str, data: bytes) -> array[Any]:
    numbers = array(kind)
    numbers.frombytes(data)
    if _SWAP:
        numbers.byteswap()
    return numbers


def _chunk_row(room: str, lines: Sequence[Row]) -> tuple[Any, ...]:
    """A row of ``chunks`` for lines of one room, in id order. Column-wise, so that the
    packing is a few C calls whatever the count (a float in JSON costs more than a line's
    every other field)."""
    ids, _, times, kinds, nicks, texts, tos = zip(*lines, strict=True)
    return (
        ids[0],
        ids[-1],
        room,
        times[0],
        times[-1],
        len(ids),
        _packed("q", ids),
        _packed("d", times),
        _dumps([kinds, nicks, texts, tos]),
    )


def _chunk_lines(row: Sequence[Any]) -> list[Entry]:
    """The entries of a row read as ``_CHUNK_COLUMNS``, oldest first."""
    room, ids, times, body = row
    kinds, nicks, texts, tos = json.loads(body)
    return [
        _new(Entry, (i, room, t, k, nk, x, to))
        for i, t, k, nk, x, to in zip(
            _unpacked("q", ids), _unpacked("d", times), kinds, nicks, texts, tos, strict=True
        )
    ]


def _insert_chunks(db: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _chunk_at(db: sqlite3.Connection, first: int) -> list[Entry]:
    (row,) = db.execute(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE first = ?", (first,))
    return _chunk_lines(row)


def _rewrite(db: sqlite3.Connection, first: int, room: str, lines: Sequence[Row]) -> None:
    """Replace the chunk keyed ``first`` by the chunk of ``lines`` (none: delete it)."""
    db.execute("DELETE FROM chunks WHERE first = ?", (first,))
    if lines:
        _insert_chunks(db, [_chunk_row(room, lines)])


def stored_lines(db: sqlite3.Connection, room: str | None = None) -> list[Entry]:
    """Every line in a history file (or one room's), by id: for tests, tools and benches
    that look into the file."""
    if room is None:
        rows = db.execute(f"SELECT {_CHUNK_COLUMNS} FROM chunks")
    else:
        rows = db.execute(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE room = ?", (room,))
    return sorted((e for row in rows for e in _chunk_lines(row)), key=lambda e: e.id)


def _from_v1(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS bans "
        "(network TEXT PRIMARY KEY, by TEXT NOT NULL, reason TEXT NOT NULL)"
    )


def _from_v2(db: sqlite3.Connection) -> None:
    """Schema 2 kept a row a line: regroup each room's lines into chunks, in id order."""
    for statement in _SCHEMA.split(";"):
        db.execute(statement)  # not executescript: it would commit the migration's BEGIN
    rooms = [r for (r,) in db.execute("SELECT DISTINCT room FROM messages").fetchall()]
    for room in rooms:
        found = db.execute(
            "SELECT id, room, ts, kind, nick, text, recipient FROM messages "
            "WHERE room = ? ORDER BY id",
            (room,),
        )
        while lines := found.fetchmany(CHUNK_LINES):
            _insert_chunks(db, [_chunk_row(room, lines)])
    db.execute("DROP TABLE messages")


# What takes a file from each version to the next, inside one transaction each.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _from_v1,
    2: _from_v2,
}


Line = TypeVar("Line")


def _line_time(line: Any) -> float:
    return float(line.ts)


def last_lines(
    tail: deque[Line] | None,
    n: int,
    days: float | None,
    clock: IReactorTime,
    when: Callable[[Line], float] = _line_time,
) -> tuple[list[Line], bool]:
    """The last ``n`` of a memory tail, oldest first, and whether older ones may be kept
    elsewhere (a full tail has let some go). With ``days``, lines past it (by ``when``)
    are forgotten first: retention deletes them from the store, and the tail forgets them
    as asked."""
    if not tail or n <= 0:
        return [], bool(tail)
    if days is not None:
        cutoff = clock.seconds() - days * 86400.0
        while tail and when(tail[0]) < cutoff:
            tail.popleft()
    more = len(tail) > n or len(tail) == tail.maxlen
    return (list(tail) if n >= len(tail) else list(tail)[-n:]), more


class SQLiteHistory:
    """Per-room history: memory tails for the reactor, one SQLite writer thread for the rest.

    ``run`` runs a function off the reactor thread and fires with its result, in the order
    it was given them (writes, reads and the close rely on it); by default a one-thread
    pool owned by the store. Tests pass a synchronous one.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        *,
        keep: int = 5000,
        days: float | None = None,
        tail: int = 200,
        flush_interval: float = FLUSH_EVERY,
        retain_interval: float = 60.0,
        run: Runner[Any] | None = None,
    ) -> None:
        if keep < 1 or tail < 0 or flush_interval <= 0:
            raise ValueError("keep must be >= 1, tail >= 0 and flush_interval > 0")
        self.path = path
        self.clock = clock
        self.keep = keep
        self.days = days
        self.tail = min(tail, keep)
        self.flush_interval = flush_interval
        self.retain_interval = retain_interval
        self.available = False
        self._run: Runner[Any] | None = run
        self._pool: ThreadPool | None = None
        self._db: sqlite3.Connection | None = None
        self._tails: dict[str, deque[Row]] = {}
        self._pending: list[Row] = []
        self._dropped = 0  # not written: appended while PENDING_MAX were waiting
        self._next_id = 1
        self._loop: task.LoopingCall | None = None
        self._last_retain: float | None = None  # None: the first pass covers every room
        self._grown: set[str] = set()  # the writer's: rooms written to since retention
        self._inflight = 0  # writes handed to ``run`` and not finished
        self._reads = 0  # reads handed to ``run`` and not finished
        self._outage_reported = 0.0  # when a failing write was last logged
        self._outage_dropped = 0  # entries dropped since
        self._closing: defer.Deferred[None] | None = None
        self._shutdown_trigger: Any = None
        self._lock_file: IO[bytes] | None = None
        # Server-wide bans (network, by, reason), read as the file is opened.
        self.bans: list[tuple[str, str, str]] = []

    # -- start --------------------------------------------------------------------------

    def check(self) -> None:
        """Open and close the file once, refusing an unusable one as ``open`` would, and
        start nothing: for before twistd forks, which no thread or SQLite connection may
        cross."""
        probe = self._lock()  # only a probe: open() holds it, after any fork
        try:
            self._connect_or_refuse(tails=False).close()
        finally:
            if probe is not None:
                probe.close()

    def open(self) -> None:
        """Open or create the file, load the tails, start the flush loop. Synchronous: it
        runs once, before the server accepts anyone, and refuses an unusable file here."""
        self._lock_file = self._lock()
        try:
            self._db = self._connect_or_refuse()
        except HistoryUnavailable:
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None
            raise
        self.available = True
        if self._run is None:
            self._start_pool()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.flush_interval, now=False)

    def _connect_or_refuse(self, tails: bool = True) -> sqlite3.Connection:
        try:
            return self._connect(tails)
        except sqlite3.Error as e:
            raise HistoryUnavailable(
                f"cannot use history file {self.path}: {e}; check that it is an SQLite file "
                "in a writable directory, move it away, or start with --history none"
            ) from e

    def _lock(self) -> IO[bytes] | None:
        """The file, locked for this process: two servers writing one file would give
        lines the same ids. (``flock``, which SQLite's own ``fcntl`` locks ignore.) Taken
        before SQLite opens the file, since opening may convert it: a second server must
        be refused before it changes anything. Creates an empty file, which SQLite takes
        as a new database."""
        if self.path == ":memory:":
            return None
        try:
            held = open(self.path, "ab")  # noqa: SIM115 (held until close())
        except OSError as e:
            raise HistoryUnavailable(
                f"cannot use history file {self.path}: {e.strerror}; check that it is in a "
                "writable directory, or start with --history none"
            ) from None
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.close()
            raise HistoryUnavailable(
                f"history file {self.path} is in use by another groupchat server; give "
                "this one its own --history file (or start it from another directory), "
                "or --history none"
            ) from None
        return held

    def _connect(self, tails: bool) -> sqlite3.Connection:
        """Open (creating or migrating) the file; with ``tails``, load each room's last
        lines into memory (``open`` does; ``check`` only looks)."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = self._schema_version(db)
            if version is None:
                db.executescript(
                    f"BEGIN; {_SCHEMA} INSERT INTO schema_version (version) "
                    f"VALUES ({SCHEMA_VERSION}); COMMIT;"
                )
            elif version > SCHEMA_VERSION:
                raise HistoryUnavailable(
                    f"history file {self.path} has schema version {version}, newer than this "
                    f"server's {SCHEMA_VERSION}: upgrade the server, or move the file away"
                )
            elif version < SCHEMA_VERSION:
                self._migrate(db, version)
            self.bans = [tuple(r) for r in db.execute("SELECT network, by, reason FROM bans")]
            if tails:
                self._load(db)
        except BaseException:
            db.close()
            raise
        return db

    def _load(self, db: sqlite3.Connection) -> None:
        """Each room's last lines into memory, and ids on from the highest kept: each
        room's (or conversation's) newest chunk by the index, not a scan of every row."""
        top = 0
        for (key,) in db.execute("SELECT DISTINCT room FROM chunks").fetchall():
            (last,) = db.execute(
                "SELECT last FROM chunks WHERE room = ? ORDER BY first DESC LIMIT 1", (key,)
            ).fetchone()
            top = max(top, last)
            if not key.startswith("@"):  # conversations are never kept in memory
                lines = self._newest(db, key, None, self.tail)[0]
                self._tail(key).extend(e[:] for e in lines)  # plain tuples: see Row
        self._next_id = top + 1

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        """Take the file to this version, a step a transaction; then give back the space
        the old layout held. It runs before the server listens, so it is said in the log,
        with how long it took: a large file takes seconds."""
        self.log.info(
            "history file {path}: converting from schema {old} to {new}, once",
            path=self.path,
            old=version,
            new=SCHEMA_VERSION,
        )
        began = time.monotonic()
        for step in range(version, SCHEMA_VERSION):
            db.execute("BEGIN")
            try:
                _MIGRATIONS[step](db)
                db.execute("UPDATE schema_version SET version = ?", (step + 1,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        db.execute("VACUUM")  # a dropped table leaves its pages in the file, unused
        self.log.info(
            "history file {path}: converted to schema {new} in {seconds:.1f} s",
            path=self.path,
            new=SCHEMA_VERSION,
            seconds=time.monotonic() - began,
        )

    @staticmethod
    def _newest(
        db: sqlite3.Connection, room: str, before_id: int | None, n: int
    ) -> tuple[list[Entry], bool]:
        """The newest ``n`` lines of a room (below ``before_id``), oldest first, and
        whether older ones are kept: newest chunks first, until there are enough."""
        if before_id is None:
            found = db.execute(
                f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE room = ? ORDER BY first DESC",
                (room,),
            )
        else:
            found = db.execute(
                f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE room = ? AND first < ? "
                "ORDER BY first DESC",
                (room, before_id),
            )
        pages: list[list[Entry]] = []
        count = 0
        for row in found:
            lines = _chunk_lines(row)
            if before_id is not None and lines[-1].id >= before_id:
                lines = [e for e in lines if e.id < before_id]
            pages.append(lines)
            count += len(lines)
            if count > n:
                break
        found.close()
        newest = [e for lines in reversed(pages) for e in lines]
        return (newest[-n:] if n else []), count > n

    @staticmethod
    def _schema_version(db: sqlite3.Connection) -> int | None:
        found = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if found is None:
            return None
        (version,) = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        return int(version)

    def _start_pool(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThreadPool

        pool = ThreadPool(minthreads=1, maxthreads=1, name="history")
        pool.start()
        self._pool = pool
        self._run = lambda f: deferToThreadPool(reactor, pool, f)  # type: ignore[arg-type]
        # Should the owner forget close(), the reactor's shutdown still flushes and lets
        # the (non-daemon) thread end.
        self._shutdown_trigger = reactor.addSystemEventTrigger("before", "shutdown", self.close)

    # -- the reactor side ---------------------------------------------------------------

    def _tail(self, room: str) -> deque[Row]:
        found = self._tails.get(room)
        if found is None:
            found = self._tails[room] = deque(maxlen=self.tail)
        return found

    def append(
        self, room: str, ts: float, kind: str, nick: str, text: str, to: str | None = None
    ) -> int:
        """Keep one entry, and return its id: in memory now, in the file at the next
        flush. No I/O, no raise.
        After close() an entry stays in memory only. A conversation's entries (keys that
        start with ``@``) are not kept in memory: nobody is shown them on joining."""
        # Ids follow the time in microseconds (one more than the last when lines come
        # faster): lines a SIGKILL lost were shown with ids the file never got, and a
        # restart, later, cannot give those ids to other lines.
        ident = int(ts * 1_000_000)
        if ident < self._next_id:
            ident = self._next_id
        self._next_id = ident + 1
        row: Row = (ident, room, ts, kind, nick, text, to)
        tail = self._tails.get(room)
        if tail is None and room[:1] != "@":
            tail = self._tail(room)
        if tail is not None:
            tail.append(row)
        if len(self._pending) < PENDING_MAX:
            self._pending.append(row)
        else:
            self._dropped += 1
        return ident

    def save_bans(self, bans: list[tuple[str, str, str]]) -> None:
        """Replace the server-wide bans kept in the file (network, by, reason), in the
        writer thread, in order with the writes."""
        self.bans = list(bans)
        db = self._db
        if db is None or self._run is None:
            return

        def write() -> None:
            assert db is not None
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM bans")
                db.executemany("INSERT INTO bans (network, by, reason) VALUES (?, ?, ?)", bans)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        d = self._run(write)
        d.addErrback(lambda f: self.log.failure("saving server bans to {path}", f, path=self.path))

    def rooms(self) -> int:
        """How many rooms (and conversations) have lines in memory."""
        return len(self._tails)

    def mark(self) -> int:
        """An id above every entry appended so far."""
        return self._next_id

    @property
    def backlog(self) -> int:
        """Entries appended but not yet handed to the writer (for metrics, back-pressure)."""
        return len(self._pending)

    def recent(self, room: str, n: int) -> tuple[list[Entry], bool]:
        """The last ``n`` (at most ``tail``) entries of a room, oldest first, from memory,
        and whether older ones may be in the file."""
        rows, more = last_lines(self._tails.get(room), n, self.days, self.clock, _row_time)
        return [_new(Entry, r) for r in rows], more

    def before(self, room: str, before_id: int, n: int) -> defer.Deferred[tuple[list[Entry], bool]]:
        """The newest ``n`` (at most 200) entries of a room older than ``before_id``, oldest
        first, and whether the file has older ones still; an empty list when there is
        nothing older. Fails with HistoryUnavailable when the file cannot be read."""
        n = max(0, min(n, PAGE_MAX))
        self._submit()  # the read is queued behind it, so it sees every appended entry

        db = self._db  # close() closes it only after this read: ``run`` keeps order

        def read() -> tuple[list[Entry], bool]:
            assert db is not None
            return self._newest(db, room, before_id, n)

        if db is None or self._run is None or n == 0:
            return defer.succeed(([], False))
        if self._reads >= READS_MAX:
            return defer.fail(HistoryUnavailable("history is busy; try again in a moment"))
        self._reads += 1
        d: defer.Deferred[tuple[list[Entry], bool]] = self._run(read)

        def done(result: Any) -> Any:
            self._reads -= 1
            return result

        d.addBoth(done)

        def failed(reason: Failure) -> Failure:
            if reason.check(defer.CancelledError):
                return reason  # the asker gave up waiting, and says so
            self.log.failure(
                "history read failed in {path} for {room}", reason, path=self.path, room=room
            )
            return Failure(HistoryUnavailable("history cannot be read just now; try later"))

        d.addErrback(failed)
        return d

    def flush(self) -> defer.Deferred[None]:
        """Write everything appended so far; fires when it is in the file (or was dropped,
        logged). Never fails."""
        return self._submit()

    def close(self) -> defer.Deferred[None]:
        """Flush, stop the loop, close the file and end the thread. Idempotent."""
        if self._closing is not None:
            return self._closing
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._shutdown_trigger is not None:
            from twisted.internet import reactor

            reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        d = self._submit()

        def shut(_: object) -> defer.Deferred[None] | None:
            db, self._db = self._db, None
            if db is None or self._run is None:
                return None
            done: defer.Deferred[None] = self._run(db.close)
            done.addErrback(
                lambda f: self.log.failure("closing history file {path}", f, path=self.path)
            )
            return done

        def stop_pool(_: object) -> None:
            self.available = False
            if self._lock_file is not None:
                self._lock_file.close()  # the lock goes with it
                self._lock_file = None
            if self._pool is not None:
                self._pool.stop()
                self._pool = None

        d.addCallback(shut)
        d.addCallback(stop_pool)
        self._closing = d
        return d

    # -- the writer ---------------------------------------------------------------------

    def _tick(self) -> defer.Deferred[None] | None:
        # LoopingCall waits for this Deferred (so batches never pile up behind a slow disk)
        # and stops for good if it raises or fails: neither may happen.
        try:
            return self._submit()
        except Exception:
            self.available = False
            self.log.failure("history flush failed in {path}", path=self.path)
            return None

    def _submit(self) -> defer.Deferred[None]:
        batch, self._pending = self._pending, []
        dropped, self._dropped = self._dropped, 0
        if dropped:
            self.log.warn(
                "history: {count} entries were not written (writer behind)",
                count=dropped,
                path=self.path,
            )
        retain = self._retain_due()
        db = self._db
        if db is None or self._run is None:
            return defer.succeed(None)
        if not batch and not retain:
            if not self._inflight:
                return defer.succeed(None)
            # Something is still being written: ``run`` keeps order, so this fires after it.
            waited: defer.Deferred[None] = self._run(lambda: None)
            return waited
        # The first pass after open trims every room (keep may have been lowered); later
        # ones only the rooms written to since (the writer notes them), the only ones
        # that grew.
        every = retain and self._last_retain is None
        if retain:
            self._last_retain = self.clock.seconds()
        cutoff = None if self.days is None else self.clock.seconds() - self.days * 86400.0
        self._inflight += 1
        d: defer.Deferred[None] = self._run(lambda: self._write(db, batch, retain, every, cutoff))

        def written(_: object) -> None:
            self._inflight -= 1
            if not self.available and self._db is not None:
                self.log.info("history file {path} is writable again", path=self.path)
            self.available = self._db is not None

        def failed(reason: Failure) -> None:
            self._inflight -= 1
            # An error when history becomes unavailable, then a warning at most every
            # OUTAGE_REPORT_EVERY with what was dropped since: a full disk is one
            # incident, not one log line a second while people talk.
            error = f"{type(reason.value).__name__}: {reason.getErrorMessage()}"
            now = self.clock.seconds()
            if self.available:
                self.available = False
                self._outage_reported, self._outage_dropped = now, 0
                self.log.error(
                    "history write to {path} failed ({error}): {count} entries dropped; "
                    "history unavailable until a write succeeds",
                    path=self.path,
                    error=error,
                    count=len(batch),
                )
                return
            self._outage_dropped += len(batch)
            if now - self._outage_reported >= OUTAGE_REPORT_EVERY:
                self.log.warn(
                    "history write to {path} still failing ({error}): {count} entries "
                    "dropped in the last {seconds:.0f} s",
                    path=self.path,
                    error=error,
                    count=self._outage_dropped,
                    seconds=now - self._outage_reported,
                )
                self._outage_reported, self._outage_dropped = now, 0

        d.addCallbacks(written, failed)
        return d

    def _retain_due(self) -> bool:
        if self._last_retain is None:
            return True
        return self.clock.seconds() - self._last_retain >= self.retain_interval

    def _write(
        self,
        db: sqlite3.Connection,
        batch: list[Row],
        retain: bool,
        every: bool,
        cutoff: float | None,
    ) -> None:
        """In the writer thread: insert the batch, then (if ``retain``) trim the rooms
        written to since the last pass (``every``: all of them) to ``keep`` and drop what
        is older than ``cutoff``: one transaction."""
        # Grouped by room in C (a stable sort keeps each room's lines in id order; one
        # busy room's batch is one run to it): a Python loop over the lines cost more.
        batch.sort(key=_row_room)
        db.execute("BEGIN")
        try:
            for room, group in groupby(batch, _row_room):
                self._grown.add(room)
                lines = list(group)
                _insert_chunks(
                    db,
                    (
                        _chunk_row(room, lines[i : i + CHUNK_LINES])
                        for i in range(0, len(lines), CHUNK_LINES)
                    ),
                )
            if retain:
                self._retain(db, None if every else self._grown, cutoff)
            db.execute("COMMIT")
            if retain:
                self._grown = set()
        except BaseException:
            if db.in_transaction:  # SQLITE_FULL has already rolled it back
                db.execute("ROLLBACK")
            raise

    def _retain(
        self, db: sqlite3.Connection, rooms: Iterable[str] | None, cutoff: float | None
    ) -> None:
        if rooms is None:
            rooms = [r for (r,) in db.execute("SELECT DISTINCT room FROM chunks").fetchall()]
        for room in rooms:
            # Newest chunks first until ``keep`` lines; older chunks go, and the chunk that
            # reaches past ``keep`` keeps its newest lines only.
            total = 0
            cut: tuple[int, int] | None = None
            for first, n in db.execute(
                "SELECT first, n FROM chunks WHERE room = ? ORDER BY first DESC", (room,)
            ):
                total += n
                if total >= self.keep:
                    cut = first, total - self.keep
                    break
            if cut is None:
                continue
            first, extra = cut
            db.execute("DELETE FROM chunks WHERE room = ? AND first < ?", (room, first))
            if extra:
                lines = _chunk_at(db, first)
                _rewrite(db, first, room, lines[extra:])
        if cutoff is not None:
            # Times grow with ids (both are taken at append): the chunks before the first
            # (by id) whose last line is recent are old, all of them; the chunks from there
            # on whose first line is old are cut through, and they come before any chunk
            # whose first line is recent. No index on time to slow every insert.
            found = db.execute(
                "SELECT first FROM chunks WHERE ts_last >= ? ORDER BY first LIMIT 1", (cutoff,)
            ).fetchone()
            if found is None:
                db.execute("DELETE FROM chunks")
                return
            db.execute("DELETE FROM chunks WHERE first < ?", found)
            straddling = db.execute(
                "SELECT first, ts_first FROM chunks WHERE first >= ? ORDER BY first", found
            )
            cut_through = []
            for first, ts_first in straddling:
                if ts_first >= cutoff:
                    break
                cut_through.append(first)
            straddling.close()
            for first in cut_through:
                lines = _chunk_at(db, first)
                _rewrite(db, first, lines[0].room, [e for e in lines if e.ts >= cutoff])
