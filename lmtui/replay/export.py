"""``lmtui export-log``: lmtui's request log (SQLite) as a CSV trace that ``lmtui replay`` reads.

The log is opened read-only, so exporting while lmtui runs is safe (the log is in WAL mode:
the reader never blocks the writer). Requests that asked for nothing servable (unknown
model, malformed body) are left out: they are not demand for any model. The columns are
the request log's own (``RequestRecord``), which the command line passes in, so this module
needs nothing of the engine.
"""

from __future__ import annotations

import csv
import re
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

#: Outcomes that are not demand for a model (the request log's ``_NOT_DEMAND``).
NOT_DEMAND = ("not_found", "bad_request")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ExportError(Exception):
    """The log cannot be exported; ``str()`` says why and what to do."""


def parse_since(text: str, now: float) -> float:
    """``--since``: a duration back from ``now`` (``90m``, ``24h``, ``7d``), Unix seconds,
    or an ISO date or time (``2026-01-31``, ``2026-01-31T08:00``; UTC unless it says)."""
    text = text.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(
            f"--since {text!r}: expected a duration (30m, 24h, 7d), Unix seconds or an ISO "
            "date/time"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def read_log(
    path: Path, columns: Sequence[str], since: float | None = None
) -> Iterator[tuple[object, ...]]:
    """Rows of the request log at ``path`` in arrival order, ``columns`` each."""
    if not path.is_file():
        raise ExportError(
            f"no request log at {path} (lmtui writes it while its router runs, with "
            "[router] request_log = true; --db names another file)"
        )
    for col in columns:
        if not re.fullmatch(r"[a-z_]+", col):
            raise ValueError(f"not a column name: {col!r}")
    sql = f"SELECT {', '.join(columns)} FROM requests WHERE outcome NOT IN (?, ?)"
    params: tuple[object, ...] = NOT_DEMAND
    if since is not None:
        sql += " AND at >= ?"
        params = (*params, since)
    sql += " ORDER BY at, id"
    conn: sqlite3.Connection | None = None
    try:
        # Errors of opening and of the query come now, before the caller writes a header.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        cursor = conn.execute(sql, params)
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        raise ExportError(f"{path}: {e} (is it lmtui's request log?)") from None
    return _rows(conn, cursor, path)


def _rows(
    conn: sqlite3.Connection, cursor: sqlite3.Cursor, path: Path
) -> Iterator[tuple[object, ...]]:
    try:
        yield from cursor
    except sqlite3.Error as e:
        raise ExportError(f"{path}: {e}") from None
    finally:
        conn.close()


def write_csv(rows: Iterator[tuple[object, ...]], columns: Sequence[str], out: TextIO) -> int:
    """Write ``rows`` as CSV with a header; returns how many rows were written."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    n = 0
    for row in rows:
        w.writerow("" if v is None else v for v in row)
        n += 1
    return n
