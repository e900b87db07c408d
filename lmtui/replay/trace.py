"""Reading a request trace from CSV: the Azure LLM inference traces, or lmtui's own log.

Two layouts are recognised by their header (case-insensitive):

- Azure (``TIMESTAMP,ContextTokens,GeneratedTokens``): times as ``2023-11-16 18:15:46.68``;
  no model column, so models are assigned by :mod:`lmtui.replay.scenario`.
- ``lmtui export-log`` (``at,model,…,tokens_in,tokens_out,…``): times as Unix seconds, one
  model per row. A row without token counts is served in the time it took then
  (``duration_s - queue_wait_s``), when the log has it.

Times become seconds since the first request; rows are sorted by time (stably, so equal
times keep the file's order). A bad row is an error naming the file and line, never skipped
silently: a replay of a silently shortened trace would answer the wrong question.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple


class TraceError(Exception):
    """The trace cannot be read; ``str()`` names the file (and line) and what is wrong."""


class TraceRequest(NamedTuple):
    """One request of a trace. ``at`` is seconds since the trace's first request."""

    at: float
    #: None when the trace names no model (assigned later).
    model: str | None
    tokens_in: int
    tokens_out: int
    #: Service seconds to use instead of the token counts (a logged row without them).
    service_s: float | None = None


_TIME = ("timestamp", "at")
_TOKENS_IN = ("contexttokens", "tokens_in")
_TOKENS_OUT = ("generatedtokens", "tokens_out")


def _column(header: Sequence[str], names: Iterable[str]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        when = datetime.fromisoformat(text.strip())
    # A time without a zone is read as UTC: local time would shift with the machine's
    # zone, and a daylight-saving change inside the trace would bend it.
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _tokens(text: str) -> int | None:
    text = text.strip()
    return int(float(text)) if text else None


def read_trace(path: Path | str) -> list[TraceRequest]:
    """The requests of the CSV trace at ``path``, sorted by arrival, times from 0."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            return parse_trace(f, str(path))
    except OSError as e:
        raise TraceError(f"{path}: {e.strerror or e}") from None


def parse_trace(lines: Iterable[str], name: str = "<trace>") -> list[TraceRequest]:
    """The requests of CSV ``lines`` (see the module docstring); ``name`` is for errors."""
    rows = csv.reader(lines)
    header = next(rows, None)
    if header is None:
        raise TraceError(f"{name}: empty file (expected a CSV header)")
    t_col = _column(header, _TIME)
    in_col = _column(header, _TOKENS_IN)
    out_col = _column(header, _TOKENS_OUT)
    model_col = _column(header, ("model",))
    dur_col = _column(header, ("duration_s",))
    wait_col = _column(header, ("queue_wait_s",))
    if t_col is None:
        raise TraceError(f"{name}:1: no time column (TIMESTAMP or at) in {','.join(header)}")
    if (in_col is None or out_col is None) and dur_col is None:
        raise TraceError(
            f"{name}:1: no token columns (ContextTokens/GeneratedTokens or "
            f"tokens_in/tokens_out) and no duration_s in {','.join(header)}"
        )
    raw: list[tuple[float, str | None, int, int, float | None]] = []
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        try:
            at = _time(row[t_col])
            tin = _tokens(row[in_col]) if in_col is not None else None
            tout = _tokens(row[out_col]) if out_col is not None else None
            model = row[model_col].strip() or None if model_col is not None else None
            service = None
            if tin is None or tout is None:
                if dur_col is None or not row[dur_col].strip():
                    raise ValueError("no token counts and no duration_s")
                wait = float(row[wait_col] or 0) if wait_col is not None else 0.0
                service = max(0.0, float(row[dur_col]) - wait)
        except (ValueError, IndexError) as e:
            raise TraceError(f"{name}:{line}: {e}") from None
        if (tin is not None and tin < 0) or (tout is not None and tout < 0):
            raise TraceError(f"{name}:{line}: negative token count")
        raw.append((at, model, tin or 0, tout or 0, service))
    if not raw:
        raise TraceError(f"{name}: no requests")
    raw.sort(key=lambda r: r[0])
    t0 = raw[0][0]
    return [TraceRequest(at - t0, model, tin, tout, s) for at, model, tin, tout, s in raw]


def scale_rate(requests: Sequence[TraceRequest], rate_scale: float) -> list[TraceRequest]:
    """The trace at ``rate_scale`` times its arrival rate: 0.25 spreads the same requests
    over four times as long; token counts are unchanged."""
    if rate_scale <= 0:
        raise ValueError("rate_scale must be positive")
    if rate_scale == 1:
        return list(requests)
    return [r._replace(at=r.at / rate_scale) for r in requests]
