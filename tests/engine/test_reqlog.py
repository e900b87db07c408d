"""The SQLite request log: buffering, batched transactions, queries, and a failing disk."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lmtui.engine import reqlog
from lmtui.engine.reqlog import SCHEMA_VERSION, RequestLog, RequestRecord, default_path


def rec(
    i: int = 0, *, model: str = "qwen3-8b", at: float | None = None, **kw: Any
) -> RequestRecord:
    fields: dict[str, Any] = dict(
        at=1_700_000_000.0 + i if at is None else at,
        model=model,
        node="mac",
        queue_wait_s=0.001 * i,
        ttft_s=0.25,
        duration_s=2.5,
        tokens_in=100 + i,
        tokens_out=20,
        outcome="ok",
        status=200,
        stream=True,
        user=None,
    )
    fields.update(kw)
    return RequestRecord(**fields)


def rows(path: Path) -> list[tuple[Any, ...]]:
    """Read the table back with plain sqlite3, as a user inspecting the file would."""
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT at, model, node, queue_wait_s, ttft_s, duration_s, tokens_in, tokens_out,"
            " outcome, status, stream, user FROM requests ORDER BY id"
        ).fetchall()


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.fixture
async def log_(tmp_path: Path) -> AsyncIterator[RequestLog]:
    log = RequestLog(tmp_path / "requests.sqlite3", flush_interval_s=60)
    async with asyncio.timeout(10):
        await log.start()
    yield log
    async with asyncio.timeout(10):
        await log.stop()


async def test_records_land_in_sqlite_after_flush(log_: RequestLog) -> None:
    a = rec(1, user="alice")
    b = rec(2, node=None, ttft_s=None, tokens_in=None, outcome="rejected_429", status=429)
    log_.record(a)
    log_.record(b)
    assert rows(log_.path) == []  # nothing written on the record() path
    async with asyncio.timeout(10):
        await log_.flush()
    got = rows(log_.path)
    assert got[0] == (a.at, "qwen3-8b", "mac", 0.001, 0.25, 2.5, 101, 20, "ok", 200, 1, "alice")
    assert got[1][2] is None and got[1][4] is None and got[1][8] == "rejected_429"
    assert log_.written == 2 and log_.dropped == 0


@pytest.mark.parametrize("bulk", [True, False], ids=["json-batch", "executemany"])
async def test_both_insert_paths_store_the_same_values(tmp_path: Path, bulk: bool) -> None:
    """The one-statement JSON batch and the per-row fallback store identical rows: floats
    exactly, None as NULL, bools as 0/1, and text that JSON must escape."""
    log = RequestLog(tmp_path / "r.sqlite3", flush_interval_s=60)
    weird = 'mod"el\\\n\u00e9 ✓ {[,]}'
    records = [
        rec(1, at=1_764_000_000.123456789, queue_wait_s=1e-9, ttft_s=0.1 + 0.2, user="bob"),
        rec(2, model=weird, node=None, ttft_s=None, tokens_in=None, tokens_out=None,
            stream=False, user=weird, outcome="not_found", status=404),
        rec(3, duration_s=123456.5, tokens_in=2**40),
    ]  # fmt: skip
    async with asyncio.timeout(10):
        await log.start()
        assert log._bulk  # this machine's SQLite has JSON functions
        log._bulk = bulk
        for r in records:
            log.record(r)
        await log.stop()
    assert rows(log.path) == [
        (*r[:10], int(r.stream), r.user)
        for r in records  # stream comes back as 0/1
    ]
    assert log.written == 3


async def test_schema_version_table_wal_and_indexes(log_: RequestLog) -> None:
    with sqlite3.connect(log_.path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexed = {r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index'")}
    assert any("(at)" in s for s in indexed)
    assert any("(model" in s for s in indexed)


async def test_many_records_are_written_in_few_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[str] = []
    real_connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        return conn

    monkeypatch.setattr(reqlog.sqlite3, "connect", traced)
    log = RequestLog(tmp_path / "r.sqlite3", flush_interval_s=60, batch=10_000)
    async with asyncio.timeout(10):
        await log.start()
        commits.clear()  # schema creation is not what we measure
        for i in range(2_000):
            log.record(rec(i))
        await log.flush()
        for i in range(2_000, 3_000):
            log.record(rec(i))
        await log.stop()
    assert len(rows(log.path)) == 3_000
    assert len(commits) == 2  # one per flush, not one per record


async def test_background_flush_on_interval(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "r.sqlite3", flush_interval_s=0.05)
    async with asyncio.timeout(10):
        await log.start()
        log.record(rec(1))
        await wait_until(lambda: log.written == 1)
        assert len(rows(log.path)) == 1
        await log.stop()


async def test_background_flush_when_batch_fills(tmp_path: Path) -> None:
    # An interval far beyond the test's timeout: only the batch size can trigger this flush.
    log = RequestLog(tmp_path / "r.sqlite3", flush_interval_s=3600, batch=50)
    async with asyncio.timeout(10):
        await log.start()
        for i in range(49):
            log.record(rec(i))
        await asyncio.sleep(0.05)
        assert log.written == 0
        log.record(rec(49))
        await wait_until(lambda: log.written == 50)
        await log.stop()


async def test_stop_flushes_the_rest_and_later_records_count_as_dropped(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "r.sqlite3", flush_interval_s=3600)
    async with asyncio.timeout(10):
        await log.start()
        for i in range(7):
            log.record(rec(i))
        await log.stop()
    assert len(rows(log.path)) == 7
    log.record(rec(8))
    assert log.dropped == 1


async def test_recent_newest_first_including_unflushed(log_: RequestLog) -> None:
    for i in range(5):
        log_.record(rec(i, stream=i % 2 == 0))
    async with asyncio.timeout(10):
        got = await log_.recent(limit=3)
    assert [r.at for r in got] == [rec(4).at, rec(3).at, rec(2).at]
    assert got[0] == rec(4, stream=True)  # round-trips, stream back as a bool
    assert got[1].stream is False


async def test_popularity_since(log_: RequestLog) -> None:
    t0 = 1_000.0
    for i in range(3):
        log_.record(rec(at=t0 - 10 + i, model="old"))  # before the window
    for i in range(4):
        log_.record(rec(at=t0 + i, model="qwen3-8b"))
    log_.record(rec(at=t0 + 1, model="llama-3.1-8b", outcome="timeout_504", status=504))
    log_.record(rec(at=t0 + 2, model="no-such-model", outcome="not_found", status=404))
    async with asyncio.timeout(10):
        pop = await log_.popularity(since=t0)
    assert pop == {"qwen3-8b": 4, "llama-3.1-8b": 1}
    assert list(pop) == ["qwen3-8b", "llama-3.1-8b"]


async def test_restart_keeps_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "requests.sqlite3"  # parents created on demand
    async with asyncio.timeout(10):
        first = RequestLog(path)
        await first.start()
        first.record(rec(1))
        await first.stop()
        second = RequestLog(path)
        await second.start()
        second.record(rec(2))
        got = await second.recent()
        await second.stop()
    assert [r.at for r in got] == [rec(2).at, rec(1).at]
    with sqlite3.connect(path) as conn:  # the version row was not duplicated
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (1,)


async def test_unwritable_path_never_raises_and_counts_drops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A regular file where the directory should be: fails even for root, unlike chmod.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log = RequestLog(blocker / "requests.sqlite3", flush_interval_s=0.02)
    with caplog.at_level(logging.ERROR, logger="lmtui.engine.reqlog"):
        async with asyncio.timeout(10):
            await log.start()
            for i in range(10):
                log.record(rec(i))
            await wait_until(lambda: log.dropped == 10)
            for i in range(5):
                log.record(rec(i))
            await log.flush()
            assert await log.recent() == []
            assert await log.popularity(0) == {}
            await log.stop()
    assert log.dropped == 15 and log.written == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # logged once, not once per flush
    assert "not-a-dir" in errors[0].getMessage()


async def test_full_buffer_drops_oldest_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = RequestLog(tmp_path / "r.sqlite3", flush_interval_s=3600, max_pending=100)
    with caplog.at_level(logging.WARNING, logger="lmtui.engine.reqlog"):
        # Not started yet (the router may take requests first): records are buffered.
        for i in range(130):
            log.record(rec(i))
    assert log.dropped == 30
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1
    async with asyncio.timeout(10):
        await log.start()
        await log.stop()
    got = rows(log.path)
    assert len(got) == 100
    assert got[0][0] == rec(30).at  # the oldest 30 went, the newest stayed


async def test_newer_schema_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    log = RequestLog(path, flush_interval_s=3600)
    async with asyncio.timeout(10):
        await log.start()
        log.record(rec(1))
        await log.stop()
    assert log.dropped == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION + 1,)
        ]


def test_default_path_is_in_the_user_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reqlog.platformdirs, "user_data_dir", lambda app: f"/data/{app}")
    assert default_path() == Path("/data/lmtui/requests.sqlite3")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_the_writer_thread_runs_at_a_lower_priority(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "r.sqlite3", flush_interval_s=60)
    async with asyncio.timeout(10):
        await log.start()
        try:
            writer = await log._on_worker(
                lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            )
        finally:
            await log.stop()
    loop_thread = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert writer == min(19, loop_thread + reqlog.WRITER_NICENESS)


async def test_rows_past_the_retention_are_deleted_at_start_and_then_hourly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reqlog, "_PRUNE_CHUNK", 3)  # several chunks
    now = [1_800_000_000.0]
    day = 86400.0
    path = tmp_path / "r.sqlite3"
    first = RequestLog(path, flush_interval_s=60)
    async with asyncio.timeout(10):
        await first.start()
        for i in range(10):
            first.record(rec(i, at=now[0] - 40 * day + i))  # older than 30 days
        first.record(rec(99, at=now[0] - 1 * day, model="keep"))
        await first.stop()
    assert len(rows(path)) == 11

    log = RequestLog(path, flush_interval_s=60, retention_s=30 * day, clock=lambda: now[0])
    async with asyncio.timeout(10):
        await log.start()
        await wait_until(lambda: log.pruned == 10)
        assert [r[1] for r in rows(path)] == ["keep"]
        # A month later the last row is past the retention too; then not again for an hour.
        now[0] += 30 * day
        assert await log.prune_if_due() == 1
        now[0] += 60
        assert await log.prune_if_due() == 0
        await log.stop()
    assert rows(path) == []


async def test_no_retention_keeps_everything(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "r.sqlite3", flush_interval_s=60)
    async with asyncio.timeout(10):
        await log.start()
        log.record(rec(1, at=0.0))
        await log.flush()
        assert await log.prune_if_due() == 0
        await log.stop()
    assert len(rows(log.path)) == 1


async def test_the_log_and_its_wal_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """Rows hold ``user`` values: the files are 0600 whatever the umask, and a file an
    older lmtui created 0644 is narrowed."""
    old = tmp_path / "old" / "requests.sqlite3"
    old.parent.mkdir()
    sqlite3.connect(old).close()
    old.chmod(0o644)
    previous = os.umask(0o022)
    try:
        for path in (tmp_path / "new" / "requests.sqlite3", old):
            log = RequestLog(path, flush_interval_s=60)
            async with asyncio.timeout(10):
                await log.start()
                log.record(rec(1, user="alice"))
                await log.flush()
                modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
                await log.stop()
            assert modes[path.name] == 0o600, modes
            assert modes[path.name + "-wal"] == 0o600, modes
    finally:
        os.umask(previous)


async def test_a_model_name_or_user_of_megabytes_is_cut_before_the_database(
    log_: RequestLog,
) -> None:
    log_.record(rec(1, model="m" * 1_000_000, user="u" * 1_000_000))
    async with asyncio.timeout(10):
        await log_.flush()
    ((model, user),) = [(r[1], r[11]) for r in rows(log_.path)]
    assert (model, user) == ("m" * reqlog.MAX_TEXT, "u" * reqlog.MAX_TEXT)


V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE requests (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, model TEXT NOT NULL, node TEXT,
    queue_wait_s REAL NOT NULL, ttft_s REAL, duration_s REAL NOT NULL, tokens_in INTEGER,
    tokens_out INTEGER, outcome TEXT NOT NULL, status INTEGER NOT NULL, stream INTEGER NOT NULL,
    user TEXT
);
INSERT INTO requests (at, model, node, queue_wait_s, ttft_s, duration_s, tokens_in,
    tokens_out, outcome, status, stream, user)
    VALUES (1700000000.0, 'old', 'mac', 0, 0.1, 1, 1, 1, 'ok', 200, 0, NULL);
"""


@pytest.mark.parametrize("bulk", [True, False])
async def test_a_version_1_log_gains_the_api_column_and_keeps_its_rows(
    tmp_path: Path, bulk: bool
) -> None:
    path = tmp_path / "requests.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
    log = RequestLog(path)
    async with asyncio.timeout(10):
        await log.start()
        log._bulk = bulk and log._bulk
        log.record(rec(5, api="messages"))
        log.record(rec(6))
        got = await log.recent()
        await log.stop()
    assert [(r.model, r.api) for r in got] == [
        ("qwen3-8b", None),
        ("qwen3-8b", "messages"),
        ("old", None),
    ]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("SELECT api FROM requests ORDER BY id").fetchall() == [
            (None,),
            ("messages",),
            (None,),
        ]


async def test_the_router_logs_which_api_each_request_used(tmp_path: Path) -> None:
    from _routing import MSG, client, routed
    from test_router import lms

    path = tmp_path / "requests.sqlite3"
    async with routed([lms("a", ["m1"], parallel=4)], request_log=path) as (_c, engine):
        c = client(engine)
        await c.chat.completions.create(model="m1", messages=MSG, max_tokens=4)
        await c.responses.create(model="m1", input="hi", max_output_tokens=4)
        assert engine.request_log is not None
        got = await engine.request_log.recent()
    assert sorted(r.api or "" for r in got) == ["chat", "responses"]
