"""Pure layout decisions for the tables: which columns fit a width, and how wide each is.

A table at 80 columns cannot show every column at its content's width (the node table's
columns sum to about 130 cells), and a horizontal scrollbar there hides a row and half the
columns. Instead each column has a priority and a width policy: columns are dropped lowest
priority first until the rest fit, after the flexible ones (a model name, an error) were cut
to their minimum. Nothing here touches a widget, so every case is a unit test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ColumnPolicy:
    """How a column gives way when the table is too narrow."""

    #: 0 goes last; the highest number is dropped first.
    priority: int
    #: ``None``: always shown at its content's width (a number, a state). Otherwise the
    #: column may be cut to this many cells, with an ellipsis, before any column is dropped.
    min_width: int | None = None


def fit_columns(
    widths: Sequence[int],
    policies: Sequence[ColumnPolicy],
    available: int,
    *,
    padding: int = 2,
) -> tuple[int | None, ...]:
    """Each column's width in cells, or ``None`` for a column dropped, so that the shown
    columns' widths plus ``padding`` each fit ``available``.

    ``widths`` are the content widths (the widest cell or the label). A column is dropped
    only when the others do not fit even with every flexible column at its minimum; what
    is left over then goes back to the flexible columns, in priority order, up to their
    content width. The highest-priority column is never dropped, so a table too narrow for
    even that one shows it cut rather than nothing.
    """
    n = len(widths)
    assert len(policies) == n
    floor = [
        w if p.min_width is None else min(w, p.min_width)
        for w, p in zip(widths, policies, strict=True)
    ]
    shown = set(range(n))
    by_drop_order = sorted(range(n), key=lambda i: (-policies[i].priority, -i))
    for i in by_drop_order:
        if sum(floor[j] + padding for j in shown) <= available or len(shown) == 1:
            break
        shown.discard(i)
    out: list[int | None] = [floor[i] if i in shown else None for i in range(n)]
    spare = available - sum(floor[i] + padding for i in shown)
    for i in sorted(shown, key=lambda i: policies[i].priority):
        grow = min(max(0, spare), widths[i] - floor[i])
        out[i] = floor[i] + grow
        spare -= grow
    return tuple(out)
