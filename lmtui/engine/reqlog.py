"""The request log: one SQLite row per request the router finished.

It feeds the UI's history, popularity for preloading, the demand the ``gdsf`` eviction
policy weighs (seeded from :meth:`RequestLog.demand` at start), and replay. The router calls
``record()`` once per request on the event loop, so that call only encodes the row (msgspec,
~0.2 µs) and appends it to an in-memory deque; a background task writes the pending rows in
one transaction every ``flush_interval_s`` (or as soon as ``batch`` rows are pending) on a
worker thread. Big batches are cheap: the JSON insert below costs SQLite ~5 µs a row in
batches of 5,000 against ~12 µs in batches of 500.

Why one dedicated thread (a single-thread executor) rather than ``asyncio.to_thread``:

- sqlite3 connections are not safe to share between threads without a lock. With every
  statement on one thread, the connection keeps ``check_same_thread=True`` (so a mistake
  fails loudly), writes and reads are serialized for free, and they run in submission
  order, so ``flush()`` then ``recent()`` reads its own writes.
- The default executor also serves ``getaddrinfo`` for every HTTP connection the router
  and pollers open. A slow or stalled disk (an fsync on a busy laptop disk can take
  seconds) must stall only the log, never name resolution.

A failing disk (read-only directory, disk full, a path that is not a directory) must never
break the router: the error is logged once, the rows that could not be written are counted
in ``dropped``, and each later flush tries again (logging "recovered" when one succeeds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeVar

import msgspec
import platformdirs

log = logging.getLogger(__name__)

T = TypeVar("T")

#: 2 added ``api`` (which API path: ``chat``, ``responses``, ``messages``...); a version-1
#: file is migrated in place when it is opened (its rows read ``api`` NULL).
SCHEMA_VERSION = 2

# Column order matches RequestRecord's fields, so rows convert both ways positionally.
_COLUMNS = (
    "at, model, node, queue_wait_s, ttft_s, duration_s, tokens_in, tokens_out, "
    "outcome, status, stream, user, api"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    node TEXT,
    queue_wait_s REAL NOT NULL,
    ttft_s REAL,
    duration_s REAL NOT NULL,
    tokens_in INTEGER,
    tokens_out INTEGER,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    user TEXT,
    api TEXT
);
CREATE INDEX IF NOT EXISTS requests_at ON requests (at);
CREATE INDEX IF NOT EXISTS requests_model_at ON requests (model, at);
"""
_INSERT = f"INSERT INTO requests ({_COLUMNS}) VALUES ({', '.join('?' * 13)})"
# A whole batch in one statement: the rows travel as one JSON array of arrays that SQLite
# unpacks itself. ``executemany`` binds twelve Python values per row while holding the GIL,
# and so does encoding a whole batch on the worker: with the batch encoded there, p99
# latency through lmtui at one client was ~1.2 ms, against ~0.2-0.6 ms now. Here each row
# is encoded when it is recorded, the worker only joins the bytes, and the insert runs
# with the GIL released.
_INSERT_JSON = (
    f"INSERT INTO requests ({_COLUMNS}) SELECT "
    + ", ".join(f"json_extract(j.value, '$[{i}]')" for i in range(13))
    # Bound as bytes (no decode on the loop or under the GIL) and cast to TEXT in SQLite:
    # since SQLite 3.45 a BLOB given to the JSON functions is read as binary JSONB.
    + " FROM json_each(CAST(? AS TEXT)) AS j"
)
_encode_row = msgspec.json.Encoder().encode
#: The longest model name or ``user`` value a row keeps (a client chooses both): longer ones
#: are cut, so a client cannot grow the database by sending megabytes in either.
MAX_TEXT = 256
_decode_rows = msgspec.json.Decoder(list[tuple[object, ...]]).decode
_PRUNE = "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE at < ? LIMIT ?)"
_PRUNE_CHUNK = 10_000
#: Requests that asked for nothing servable: they say nothing about which model to preload.
_NOT_DEMAND = ("not_found", "bad_request")
#: At most one "buffer full" warning per this many seconds (the count keeps rising).
_DROP_WARN_EVERY_S = 10.0


#: How much lower than the router the writer thread runs (Linux ``nice`` increment).
WRITER_NICENESS = 10


def _lower_priority() -> None:
    """Run the writer thread at a lower CPU priority than the event loop.

    A flush is tens of milliseconds of SQLite work. The GIL is released for it, but on a
    small machine the writer can still take the core the event loop needs, which shows as
    a latency spike of a scheduler time slice on the requests of that moment. At nice +10
    the kernel gives the loop the core first; the writer catches up in idle time. Linux
    only (elsewhere a thread cannot be given its own priority this way); best effort.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)


def default_path() -> Path:
    """Where the request log lives by default: the user data dir, e.g. ``~/.local/share``."""
    return Path(platformdirs.user_data_dir("lmtui")) / "requests.sqlite3"


class RequestRecord(NamedTuple):
    """One finished request. Times are seconds; ``at`` is when it arrived (engine clock).

    A NamedTuple, not a frozen dataclass: the router builds one per request on the event
    loop (~0.4 µs with keywords, against ~1.2 µs for a frozen dataclass's twelve guarded
    assignments), and it is already the row, field for field, that SQLite stores.
    """

    at: float
    model: str
    node: str | None
    queue_wait_s: float
    ttft_s: float | None
    duration_s: float
    tokens_in: int | None
    tokens_out: int | None
    outcome: str
    status: int
    stream: bool
    user: str | None = None
    #: Which API (``chat``, ``completions``, ``embeddings``, ``responses``, ``messages``,
    #: ``count_tokens``, ``rerank``); None in rows from before it was logged.
    api: str | None = None


def _from_row(row: tuple[object, ...]) -> RequestRecord:
    rec = RequestRecord(*row)  # type: ignore[arg-type]
    # SQLite has no bool: ``stream`` comes back as 0/1.
    return rec if isinstance(rec.stream, bool) else rec._replace(stream=bool(rec.stream))


class RequestLog:
    """A buffered, append-only SQLite log of finished requests.

    ``dropped`` counts records that will never reach the disk: pushed out of a full buffer
    (more than ``max_pending`` waiting), lost to a failed write, or recorded after ``stop()``.
    ``written`` counts rows committed.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval_s: float = 1.0,
        batch: int = 5000,
        max_pending: int = 100_000,
        retention_s: float | None = None,
        prune_every_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        #: Rows whose ``at`` is older than this many seconds are deleted: at start, then
        #: every ``prune_every_s`` (None: kept forever).
        self.retention_s = retention_s
        self.prune_every_s = prune_every_s
        self.clock = clock
        self.pruned = 0
        self._last_prune = -math.inf
        self.flush_interval_s = flush_interval_s
        self.batch = batch
        self.dropped = 0
        self.written = 0
        # maxlen makes "drop the oldest" O(1); record() counts the drop before appending.
        # Encoded rows (JSON arrays), oldest first.
        self._pending: deque[bytes] = deque(maxlen=max_pending)
        self._max_pending = max_pending
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only on the executor's thread
        self._bulk = False  # SQLite has JSON functions: insert batches as one JSON array
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._failing = False  # an error was logged; cleared by the next success
        self._last_drop_warn = -_DROP_WARN_EVERY_S

    # -- the hot path -------------------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        """Queue one record for the next flush. O(1), no I/O, never raises."""
        if self._stopped:
            self.dropped += 1
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_warn >= _DROP_WARN_EVERY_S:
                self._last_drop_warn = now
                log.warning(
                    "request log: %d records pending, dropping the oldest (%d dropped so far)",
                    len(self._pending),
                    self.dropped,
                )
        if len(rec.model) > MAX_TEXT or (rec.user is not None and len(rec.user) > MAX_TEXT):
            rec = rec._replace(
                model=rec.model[:MAX_TEXT], user=rec.user[:MAX_TEXT] if rec.user else rec.user
            )
        self._pending.append(_encode_row(rec))
        if len(self._pending) >= self.batch and self._wake is not None:
            self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open (or create) the database and start the background flusher.

        Never raises for a bad path or a broken disk: the error is logged and the log keeps
        counting drops, retrying the open on each flush.
        """
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="lmtui-reqlog", initializer=_lower_priority
        )
        self._wake = asyncio.Event()
        self._stopped = False
        await self._on_worker(self._ensure_open)
        if len(self._pending) >= self.batch:
            self._wake.set()  # recorded before start(): do not wait a whole interval
        self._task = asyncio.create_task(self._flush_loop(), name="lmtui-reqlog-flush")

    async def stop(self) -> None:
        """Stop the flusher, write what is pending, close the database."""
        # Stopped first: a record() racing the final flush is counted, not silently left.
        self._stopped = True
        if self._task is not None:
            # Not cancelled: a cancel mid-flush would orphan a write already on the worker
            # thread and lose its count. The loop sees ``_stopped`` and ends after its flush.
            assert self._wake is not None
            self._wake.set()
            await self._task
            self._task = None
        if self._executor is None:
            return
        await self.flush()
        await self._on_worker(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def flush(self) -> None:
        """Write every pending record in one transaction, on the worker thread."""
        if not self._pending or self._executor is None:
            return
        # Swapping the buffer happens on the loop, so record() never races with it, and
        # costs O(1) there; joining the encoded rows into one batch is left to the worker.
        rows = self._pending
        self._pending = deque(maxlen=self._max_pending)
        written = await self._on_worker(self._write, rows)
        # Counters change only here, on the loop: record() bumps ``dropped`` too, and a
        # += from two threads could lose updates.
        self.written += written
        self.dropped += len(rows) - written

    async def _flush_loop(self) -> None:
        assert self._wake is not None
        while not self._stopped:
            try:
                await self.prune_if_due()
            except Exception:  # pragma: no cover - _prune already catches disk errors
                log.exception("request log: pruning failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # pragma: no cover - _write already catches disk errors
                log.exception("request log: flush failed")

    async def prune_if_due(self) -> int:
        """Delete rows past the retention, at most once per ``prune_every_s``; returns how
        many were deleted."""
        now = self.clock()
        if self.retention_s is None or self._executor is None:
            return 0
        if now - self._last_prune < self.prune_every_s:
            return 0
        self._last_prune = now
        deleted = await self._on_worker(self._prune, now - self.retention_s)
        if deleted:
            self.pruned += deleted
            log.info(
                "request log: deleted %d requests older than %g days",
                deleted,
                self.retention_s / 86400,
            )
        return deleted

    # -- queries ------------------------------------------------------------------------

    async def recent(self, limit: int = 100) -> list[RequestRecord]:
        """The ``limit`` most recent records, newest first (pending ones included)."""
        await self.flush()
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM requests ORDER BY at DESC, id DESC LIMIT ?", (limit,)
        )
        return [_from_row(r) for r in rows]

    async def popularity(self, since: float) -> dict[str, int]:
        """Requests per model that arrived at or after ``since``, most requested first.

        Unknown-model and malformed requests are not counted: there is nothing to preload.
        """
        await self.flush()
        rows = await self._query(
            "SELECT model, COUNT(*) AS n FROM requests WHERE at >= ? AND outcome NOT IN (?, ?)"
            " GROUP BY model ORDER BY n DESC, model",
            (since, *_NOT_DEMAND),
        )
        return {str(model): n for model, n in rows if isinstance(n, int)}

    async def times_on(self, node: str, since: float, limit: int) -> list[float]:
        """When the latest ``limit`` requests a node served at or after ``since`` arrived
        (a peer's budget after a restart: ``peers.py``)."""
        await self.flush()
        rows = await self._query(
            "SELECT at FROM requests WHERE node = ? AND at >= ? ORDER BY at DESC LIMIT ?",
            (node, since, limit),
        )
        return [float(at) for (at,) in rows if isinstance(at, int | float)]

    async def demand(self, since: float, bucket_s: float = 60.0) -> list[tuple[str, float, int]]:
        """Requests per model since ``since`` in buckets of ``bucket_s`` seconds, as
        ``(model, bucket middle, count)``, oldest first: counts with times, so that a decay
        can be applied (``lmtui.core.demand``), in rows bounded by models × buckets rather
        than by requests. Unknown-model and malformed requests are not counted.
        """
        await self.flush()
        rows = await self._query(
            "SELECT model, CAST((at - ?) / ? AS INTEGER) AS b, COUNT(*) FROM requests"
            " WHERE at >= ? AND outcome NOT IN (?, ?) GROUP BY model, b ORDER BY b, model",
            (since, bucket_s, since, *_NOT_DEMAND),
        )
        return [
            (str(model), since + (b + 0.5) * bucket_s, n)
            for model, b, n in rows
            if isinstance(b, int) and isinstance(n, int)
        ]

    async def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        if self._executor is None:
            return []
        return await self._on_worker(self._read, sql, params)

    # -- the worker thread --------------------------------------------------------------

    async def _on_worker(self, fn: Callable[..., T], *args: object) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _fail(self, what: str, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.error("request log %s: %s %s failed: %s", self.path, what, type(exc).__name__, exc)

    def _ensure_open(self) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Readable by its owner only: rows hold ``user`` values. SQLite gives the -wal and
            # -shm files the database file's mode. A file an older lmtui made wider is
            # narrowed.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            if self.path.stat().st_mode & 0o077:
                self.path.chmod(0o600)
            # isolation_level=None: no implicit transactions; _write says BEGIN/COMMIT itself.
            conn = sqlite3.connect(self.path, isolation_level=None)
            # WAL: readers (the UI, `sqlite3` in a shell) never block the writer. NORMAL
            # sync in WAL survives a crash of lmtui and loses at most the last commits on
            # power loss, fine for a log, and spares an fsync per flush.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] if row else None
            if version is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version < 2:
                # Version 1 had no ``api`` column: added, in one transaction with the version.
                columns = {r[1] for r in conn.execute("PRAGMA table_info(requests)")}
                conn.execute("BEGIN IMMEDIATE")
                if "api" not in columns:
                    conn.execute("ALTER TABLE requests ADD COLUMN api TEXT")
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
                conn.execute("COMMIT")
            elif version > SCHEMA_VERSION:
                # Written by a newer lmtui: appending rows in our layout could corrupt it.
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this lmtui ({SCHEMA_VERSION})"
                )
            # JSON functions are built into SQLite since 3.38 and into most builds before.
            try:
                probe = "SELECT json_extract(j.value, '$[0]') FROM json_each(CAST(? AS TEXT)) AS j"
                self._bulk = conn.execute(probe, (b"[[1]]",)).fetchall() == [(1,)]
            except sqlite3.OperationalError:
                self._bulk = False
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            self._fail("open", exc)
            return None
        self._conn = conn
        return conn

    def _write(self, rows: deque[bytes]) -> int:
        """Insert ``rows`` in one transaction; returns how many were written (all or 0)."""
        conn = self._ensure_open()
        if conn is None:
            return 0
        try:
            conn.execute("BEGIN")
            batch = b"[" + b",".join(rows) + b"]"
            if self._bulk:
                conn.execute(_INSERT_JSON, (batch,))
            else:  # an SQLite without JSON functions: bind row by row
                conn.executemany(_INSERT, _decode_rows(batch))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._fail("write", exc)
            return 0
        if self._failing:
            self._failing = False
            log.info("request log %s: writing again", self.path)
        return len(rows)

    def _prune(self, before: float) -> int:
        """Delete rows that arrived before ``before``, in chunks: each chunk is its own short
        transaction (a first prune of a large file must not hold the write lock for long)."""
        conn = self._ensure_open()
        if conn is None:
            return 0
        deleted = 0
        try:
            while True:
                cur = conn.execute(_PRUNE, (before, _PRUNE_CHUNK))
                deleted += max(0, cur.rowcount)
                if cur.rowcount < _PRUNE_CHUNK:
                    return deleted
        except sqlite3.Error as exc:
            self._fail("prune", exc)
            return deleted

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        conn = self._ensure_open()
        if conn is None:
            return []
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._fail("read", exc)
            return []

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
