"""Sparklines of the metric history (``lmtui.engine.history``) as text: a table cell cannot
hold a widget, so the node table and the header draw them with the block characters
``▁▂▃▄▅▆▇█``. Pure, like ``render``: points and an end time in, ``Text`` out.

The window is cut into one bucket per character, each the mean of its points. A bucket
with no point (before the history began, or while an attached dashboard lost its stream)
is a blank, zero is the lowest block, and anything above zero is at least the second, so
busy never looks like idle however small it is next to the peak.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from lmtui.engine.history import WINDOW_S, History, Metric, Point, Scope, window_means

BLOCKS = "▁▂▃▄▅▆▇█"
#: Characters of a sparkline in a table cell: 5 minutes in 30 s buckets.
CELL_WIDTH = 10


def buckets(
    points: Sequence[Point], end: float, width: int, span_s: float = WINDOW_S
) -> list[float | None]:
    """The mean of ``points`` (in time order) in each of ``width`` equal buckets ending at
    ``end``, oldest first; None for a bucket with no known value (``window_means``)."""
    return window_means([at for at, _ in points], [v for _, v in points], end, width, span_s)


def spark(values: Sequence[float | None], top: float | None = None) -> str:
    """One block character per value, scaled to ``top`` (default: the largest value)."""
    known = [v for v in values if v is not None]
    peak = top if top is not None else max(known, default=0.0)
    out = []
    last = len(BLOCKS) - 1
    for v in values:
        if v is None:
            out.append(" ")
        elif v <= 0 or peak <= 0:
            out.append(BLOCKS[0])
        else:
            out.append(BLOCKS[max(1, min(last, round(v / peak * last)))])
    return "".join(out)


def fmt_rate(value: float | None) -> str:
    """A rate in at most 5 cells: ``0``, ``0.4``, ``12.3``, ``123``, ``1.2k``."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if value < 100:
        return f"{value:.1f}"
    if value < 10_000:
        return f"{value:.0f}"
    return f"{value / 1000:.1f}k"


def sparkline(
    history: History,
    scope: Scope,
    name: str,
    metric: Metric,
    *,
    width: int = CELL_WIDTH,
    style: str = "cyan",
) -> Text:
    """``metric``'s sparkline over the whole window, then its latest value; blank when
    the history has no point for it. The window ends at the newest sample, not at the
    dashboard's clock: an attached engine's clock may differ from this machine's."""
    values, newest = history.bucket_means(scope, name, metric, width)
    if newest is None:
        return Text("")
    # A series the newest sample left out (a node removed, a model gone) has no "now".
    at, latest = newest
    if at < history.last_at:
        latest = None
    out = Text(spark(values), style=style if any(values) else "dim")
    out.append(" " + fmt_rate(latest).rjust(5))
    return out


#: Characters of each sparkline in the header.
HEADER_WIDTH = 8


def header_trend(history: History) -> Text | None:
    """The cluster's requests/s, queue depth and tokens/s over the window, for the header;
    None before the first sample."""
    if not history.last_at:
        return None
    out = Text()
    for label, metric in (("req/s", "requests"), ("queued", "queued"), ("tok/s", "tokens")):
        line = sparkline(history, "cluster", "", metric, width=HEADER_WIDTH)  # type: ignore[arg-type]
        if not line:
            continue
        if out:
            out.append("  ")
        out.append(label + " ", style="dim")
        out.append_text(line)
    return out or None


def plot_lines(values: Sequence[float | None], height: int, top: float | None = None) -> list[str]:
    """A bar plot ``height`` rows tall, one column per value, top row first: each row is an
    eighth-block deep slice of the range (``▁`` to ``█``), so a column of height 3 has 24
    levels. Zero is the lowest block of the bottom row, a gap is blank, as in ``spark``."""
    known = [v for v in values if v is not None]
    peak = top if top is not None else max(known, default=0.0)
    rows = [[" "] * len(values) for _ in range(height)]
    levels = height * 8
    for x, v in enumerate(values):
        if v is None:
            continue
        level = 1 if v <= 0 or peak <= 0 else max(2, min(levels, round(v / peak * levels)))
        for r in range(height):  # r = 0 is the bottom row
            fill = level - r * 8
            if fill <= 0:
                break
            rows[height - 1 - r][x] = BLOCKS[min(fill, 8) - 1]
    return ["".join(row) for row in rows]
