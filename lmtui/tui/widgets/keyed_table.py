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

Columns fit the table's width (``layout.fit_columns``): on a narrow terminal the
lowest-priority ones are left out and flexible ones are cut with an ellipsis, so there is
never a horizontal scrollbar. The fit is worked out again after every sync (a cell may have
grown) and on every resize; only when it changes are the columns, and with them the rows,
rebuilt from the shadow copy. A poll that changes no width still only updates cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual import events
from textual.widgets import DataTable

from lmtui.tui.layout import ColumnPolicy, fit_columns
from lmtui.tui.render import Cells, cells_equal

#: What the columns look like: per shown column, its key and its width, ``None`` for one
#: sized to its content by the DataTable itself.
Fit = tuple[tuple[str, int | None], ...]


class KeyedTable(DataTable[Text]):
    """A ``DataTable`` of Rich ``Text`` cells, synchronised by row key."""

    def __init__(
        self,
        columns: Sequence[tuple[str, str]],
        policies: Mapping[str, ColumnPolicy] | None = None,
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._column_spec = tuple(columns)
        # A column without a policy keeps its place in the drop order by position.
        self._policies = tuple(
            (policies or {}).get(key, ColumnPolicy(100 + i))
            for i, (key, _) in enumerate(self._column_spec)
        )
        #: What each row currently shows, to diff against without reading the table back.
        self._shown: dict[str, Cells] = {}
        #: The columns as they are now; ``None`` before the first ones were added.
        self._fit: Fit | None = None
        #: Indices (into the column spec) of the columns on screen.
        self._columns_shown: list[int] = []
        #: Counters for tests and benchmarks: how much work the last sync did.
        self.last_sync_stats: tuple[int, int, int] = (0, 0, 0)
        #: How many times the columns were rebuilt (a resize, or a width that changed).
        self.rebuilds = 0
        #: Content width of each column over the shown rows; None: to be measured again.
        self._widths: list[int] | None = None

    def on_mount(self) -> None:
        self._ensure_columns()

    def on_resize(self, event: events.Resize) -> None:
        self._refit()

    @property
    def shown_columns(self) -> list[str]:
        """Keys of the columns on screen, in display order."""
        return [str(c.key.value) for c in self.ordered_columns]

    def _ensure_columns(self) -> None:
        # The first sync may come before this widget's Mount event has been handled, and
        # before it has a size: then every column is added, and the first resize fits them.
        if self._fit is None:
            self._rebuild(self._wanted_fit() or tuple((k, None) for k, _ in self._column_spec))

    def _wanted_fit(self) -> Fit | None:
        """The columns the current width and content call for (``None`` before layout)."""
        width = self.size.width
        if width <= 0:
            return None
        # Room for the vertical scrollbar once the rows outgrow the table's height, so that
        # a growing table does not tip into a horizontal one.
        if self.row_count + 1 > self.size.height:
            width -= self.styles.scrollbar_size_vertical
        contents = self._content_widths()
        widths = fit_columns(contents, self._policies, width, padding=2 * self.cell_padding)
        return tuple(
            (key, None if w == contents[i] else w)
            for i, ((key, _), w) in enumerate(zip(self._column_spec, widths, strict=True))
            if w is not None
        )

    def _content_widths(self) -> list[int]:
        """Each column's content width (its widest cell or its label), worked out again
        only when a sync may have narrowed it (``_widths_stale``): a scan of every row's
        cells costs ~10 ms at 4,000 rows, and most syncs change a few cells."""
        if self._widths is None:
            self._widths = self._measure_widths()
        return list(self._widths)

    def _measure_widths(self) -> list[int]:
        """Each column's content width, measured over every shown row."""
        contents = [Text.from_markup(label).cell_len for _, label in self._column_spec]
        for cells in self._shown.values():
            for i, cell in enumerate(cells):
                if cell.cell_len > contents[i]:
                    contents[i] = cell.cell_len
        return contents

    def _note_widths(self, old: Cells | None, new: Cells | None) -> None:
        """Keep the content widths current for a row that changed from ``old`` to ``new``
        (None: added, or removed): a wider cell widens its column at once; a column whose
        widest cell got narrower or left is measured again on the next fit."""
        widths = self._widths
        if widths is None:
            return
        for i in range(len(widths)):
            before = old[i].cell_len if old is not None else 0
            after = new[i].cell_len if new is not None else 0
            if after > widths[i]:
                widths[i] = after
            elif before == widths[i] and after < before:
                self._widths = None
                return

    def _refit(self) -> None:
        wanted = self._wanted_fit()
        if wanted is not None and wanted != self._fit:
            self._rebuild(wanted)

    def _rebuild(self, fit: Fit) -> None:
        """Put up the columns of ``fit`` and every row again, keeping the cursor's row."""
        cursor_key = self.cursor_key
        index = {key: i for i, (key, _) in enumerate(self._column_spec)}
        labels = dict(self._column_spec)
        with self.app.batch_update():
            self.clear(columns=True)
            for key, width in fit:
                self.add_column(labels[key], key=key, width=width)
            self._fit = fit
            self._columns_shown = [index[key] for key, _ in fit]
            for key, cells in self._shown.items():
                self.add_row(*self._visible(cells), key=key)
            if self._shown:
                self.order()
            if cursor_key is not None and cursor_key in self._shown:
                self.move_cursor(row=self.get_row_index(cursor_key), animate=False)
        self.rebuilds += 1

    def _visible(self, cells: Cells) -> list[Text]:
        out = []
        for i in self._columns_shown:
            cell = cells[i]
            # A column cut narrower than its content ends its cells with an ellipsis.
            cell.no_wrap, cell.overflow = True, "ellipsis"
            out.append(cell)
        return out

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
        columns = [(i, self._column_spec[i][0]) for i in self._columns_shown]
        widths = {str(k.value): c.content_width for k, c in self.columns.items()}
        # Batch so that one poll is one repaint however many cells it touched.
        with self.app.batch_update():
            for key in [k for k in self._shown if k not in rows]:
                self.remove_row(key)
                self._note_widths(self._shown.pop(key), None)
                removed += 1
            added: list[str] = []
            for key, cells in rows.items():
                old = self._shown.get(key)
                if old is None:
                    added.append(key)
                    continue
                if cells is old:
                    continue  # the caller reused the row's cells: nothing changed
                self._note_widths(old, cells)
                for i, col in columns:
                    if not cells_equal(cells[i], old[i]):
                        cell = cells[i]
                        cell.no_wrap, cell.overflow = True, "ellipsis"
                        # update_width only for a cell that grew past its column (a longer
                        # error): given a cell that shrank, DataTable measures every cell of
                        # the column again, once per such cell, which at 4,000 rows took
                        # seconds per update. A column does not narrow between refits, so
                        # numbers that come and go do not make the columns jump sideways.
                        grew = cell.cell_len > widths.get(col, 0)
                        self.update_cell(key, col, cell, update_width=grew)
                        changed += 1
                self._shown[key] = cells
            for key in added:
                self.add_row(*self._visible(rows[key]), key=key)
                self._shown[key] = rows[key]
                self._note_widths(None, rows[key])
            if added:
                self.order()
            if (
                cursor_key is not None
                and cursor_key in self._shown
                and self.cursor_key != cursor_key
            ):
                self.move_cursor(row=self.get_row_index(cursor_key))
            # A cell that grew or shrank may change which columns fit.
            self._refit()
        self.last_sync_stats = (len(added), changed, removed)
        return bool(added)

    def order(self) -> None:
        """Put the rows in display order after rows were added; the default keeps the order
        they were added in. A sort reorders rows, it does not rebuild them."""
