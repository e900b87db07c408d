"""A DataTable whose rows are keyed and kept in sync with a mapping, in place.

``sync(rows)`` diffs the wanted rows against what the table shows: it removes rows whose key
is gone, calls ``update_cell`` only for cells whose content changed, and adds new rows. It
never clears the table, so the scroll position and the row order a user is looking at
survive every poll, and the redraw cost scales with what changed, not with the size of the
cluster.

The cursor follows its row's key, not its position: a DataTable keeps the cursor's index,
so a row added or removed above it (the demo's traffic loads and unloads every few seconds)
would slide another row under it, and the next ``p`` or ``u`` would act on that one. Only
when its own row goes does the cursor stay where it was, on the row that took its place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual.widgets import DataTable

from lmtui.tui.render import Cells, cells_equal


class KeyedTable(DataTable[Text]):
    """A ``DataTable`` of Rich ``Text`` cells, synchronised by row key."""

    def __init__(self, columns: Sequence[tuple[str, str]], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._column_spec = tuple(columns)
        #: What each row currently shows, to diff against without reading the table back.
        self._shown: dict[str, Cells] = {}
        #: Counters for tests and benchmarks: how much work the last sync did.
        self.last_sync_stats: tuple[int, int, int] = (0, 0, 0)

    def on_mount(self) -> None:
        self._ensure_columns()

    def _ensure_columns(self) -> None:
        # The first sync may come before this widget's Mount event has been handled.
        if not self.columns:
            for key, label in self._column_spec:
                self.add_column(label, key=key)

    @property
    def shown_keys(self) -> list[str]:
        """Row keys in display order."""
        return [str(row.key.value) for row in self.ordered_rows]

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, or None when the table is empty."""
        if self.row_count == 0:
            return None
        return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def shown_row(self, key: str) -> Cells:
        """The cells a row shows now (raises ``KeyError`` for an absent row)."""
        return self._shown[key]

    def sync(self, rows: Mapping[str, Cells]) -> bool:
        """Make the table show exactly ``rows``; return whether rows were added.

        Rows are added at the bottom in the mapping's order, then ``order`` runs (a sorted
        table overrides it; only an added row can break the order: updates keep keys,
        removals keep order). The cursor then goes back to the row it was on.
        """
        self._ensure_columns()
        cursor_key = self.cursor_key
        removed = changed = 0
        columns = [key for key, _ in self._column_spec]
        # Batch so that one poll is one repaint however many cells it touched.
        with self.app.batch_update():
            for key in [k for k in self._shown if k not in rows]:
                self.remove_row(key)
                del self._shown[key]
                removed += 1
            added: list[str] = []
            for key, cells in rows.items():
                old = self._shown.get(key)
                if old is None:
                    added.append(key)
                    continue
                for col, new_cell, old_cell in zip(columns, cells, old, strict=True):
                    if not cells_equal(new_cell, old_cell):
                        # update_width: a cell that grew (a longer error) widens its column.
                        self.update_cell(key, col, new_cell, update_width=True)
                        changed += 1
                self._shown[key] = cells
            for key in added:
                self.add_row(*rows[key], key=key)
                self._shown[key] = rows[key]
            if added:
                self.order()
            if (
                cursor_key is not None
                and cursor_key in self._shown
                and self.cursor_key != cursor_key
            ):
                self.move_cursor(row=self.get_row_index(cursor_key))
        self.last_sync_stats = (len(added), changed, removed)
        return bool(added)

    def order(self) -> None:
        """Put the rows in display order after rows were added; the default keeps the order
        they were added in. A sort reorders rows, it does not rebuild them."""
