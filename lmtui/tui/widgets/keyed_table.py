"""A DataTable whose rows are keyed and kept in sync with a mapping, in place.

``sync(rows)`` diffs the wanted rows against what the table shows: it removes rows whose key
is gone, writes only the cells whose content changed, and adds new rows. It never clears
the table, so the scroll position and the row order a user is looking at survive every
poll, and the redraw cost scales with what changed, not with the size of the cluster: a
changed cell is rendered again and its line repainted, the other rows are drawn from
DataTable's caches (``_repaint_cells``), and rows off screen whose ages or sparkline alone
moved wait until they are scrolled to (``sync``'s ``later``).

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

from collections.abc import Collection, Mapping, Sequence

from rich.text import Text
from textual import events
from textual.geometry import Region
from textual.strip import Strip
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
        #: Rows off screen whose cells are older than their data (``sync``'s ``later``).
        self._stale: set[str] = set()

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
            if old is not None and new is not None and old[i] is new[i]:
                continue  # a cell the caller reused
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
        """The cells a row shows now, or would show scrolled into view (raises
        ``KeyError`` for an absent row)."""
        if key in self._stale:
            self._catch_up([key])
        return self._shown[key]

    def keys_on_screen(self) -> set[str]:
        """Keys of the rows in the table's window now (none before it has a size)."""
        header = self.header_height if self.show_header else 0
        top = self.scroll_offset.y
        get_key = self._row_locations.get_key
        keys = set()
        for index in range(top, top + max(0, self.size.height - header)):
            row_key = get_key(index)
            if row_key is None:
                break
            keys.add(str(row_key.value))
        return keys

    def sync(self, rows: Mapping[str, Cells], *, later: Collection[str] = ()) -> bool:
        """Make the table show exactly ``rows``; return whether rows were added.

        Rows are added at the bottom in the mapping's order, then ``order`` runs (a sorted
        table overrides it; only an added row can break the order: updates keep keys,
        removals keep order). The cursor then goes back to the row it was on.

        ``later`` are rows off screen whose cells in ``rows`` are the ones they showed,
        though newer ones are due (an age or a sparkline that moved): the subclass's
        ``fresh_cells`` makes them when they come into view (``render_lines``) or are
        asked for (``shown_row``), so that a clock tick at 4,000 rows draws the twenty on
        screen, not every one. Their widths count towards the columns' once they are made,
        so only cells of about the same width should wait (an age, a sparkline).
        """
        self._ensure_columns()
        cursor_key = self.cursor_key
        removed = 0
        generation = self._update_count
        # Batch so that one poll is one repaint however many cells it touched.
        with self.app.batch_update():
            for key in [k for k in self._shown if k not in rows]:
                self.remove_row(key)
                self._note_widths(self._shown.pop(key), None)
                removed += 1
            added = [key for key in rows if key not in self._shown]
            changed = self._update_rows(rows, generation)
            for key in added:
                self.add_row(*self._visible(rows[key]), key=key)
                self._shown[key] = rows[key]
                self._note_widths(None, rows[key])
            self._stale = set(later).intersection(self._shown) if later else set()
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

    def _update_rows(self, rows: Mapping[str, Cells], generation: int) -> int:
        """Write the cells of ``rows`` that changed into the rows shown (rows not shown
        yet are left to the caller) and repaint them; return how many were written."""
        changed = 0
        columns = [(i, self._column_spec[i][0]) for i in self._columns_shown]
        widths = {str(k.value): c.content_width for k, c in self.columns.items()}
        #: Cells written in place, by row, to repaint alone (``_repaint_cells``).
        repaint: dict[str, list[str]] = {}
        data, shown = self._data, self._shown
        for key, cells in rows.items():
            old = shown.get(key)
            if old is None or cells is old:
                continue  # a new row, or the caller reused the row's cells: nothing changed
            self._note_widths(old, cells)
            written: list[str] = []
            for i, col in columns:
                cell = cells[i]
                if cell is not old[i] and not cells_equal(cell, old[i]):
                    cell.no_wrap, cell.overflow = True, "ellipsis"
                    changed += 1
                    if cell.cell_len > widths.get(col, 0):
                        # A cell that grew past its column (a longer error): DataTable
                        # measures the column again and redraws the whole table. Only for a
                        # cell that grew: given one that shrank, it measures every cell of
                        # the column, once per such cell (seconds per update at 4,000
                        # rows), and a column does not narrow between refits, so numbers
                        # that come and go do not make the columns jump sideways.
                        self.update_cell(key, col, cell, update_width=True)
                    else:
                        # DataTable's own keys hash and compare equal to their strings.
                        data[key][col] = cell  # type: ignore[index]
                        written.append(col)
            if written:
                repaint[key] = written
            shown[key] = cells
        # A row removed or a cell that grew made DataTable forget every row's rendering and
        # repaint the whole table already; otherwise just the rows written in place.
        if self._update_count == generation:
            self._repaint_cells(repaint)
        return changed

    def fresh_cells(self, keys: Collection[str]) -> Mapping[str, Cells]:
        """The cells due now for rows that ``sync`` was told may wait (``later``); a table
        that never defers needs none."""
        return {}

    def _catch_up(self, keys: Collection[str]) -> None:
        """Bring the waiting rows among ``keys`` up to date."""
        due = self._stale.intersection(keys)
        if not due:
            return
        self._stale -= due
        fresh = self.fresh_cells(due)
        with self.app.batch_update():
            # No refit here (this may run in the middle of a paint): the next sync's does.
            self._update_rows(fresh, self._update_count)

    def render_lines(self, crop: Region) -> list[Strip]:
        # Rows come into view by a scroll, a resize or rows moving above them, and each of
        # those repaints the whole table: here, before that, the rows that waited are made.
        if self._stale:
            self._catch_up(self.keys_on_screen())
        return super().render_lines(crop)

    def _repaint_cells(self, cells: Mapping[str, Sequence[str]]) -> None:
        """Repaint just ``cells`` (column keys by row key), written into the table's data.

        ``DataTable.update_cell`` bumps a counter that is part of every cache key of its
        rendering (cells, rows, lines) and repaints the whole table, so one changed cell
        renders every visible cell again: ~170 cells, most of a 100 ms frame at 160×48.
        Here only the changed cells' renderings, and their rows' and lines', leave those
        caches, and only their lines are repainted; everything else is drawn from the
        caches as it is. Every row is one line high (``add_row``'s default, the only height
        this table uses), so row ``i`` is line ``i`` below the header.
        """
        if not cells:
            return
        # Plain strings: DataTable's RowKey and ColumnKey hash and compare equal to them.
        row_keys = cells.keys()
        cell_keys = {(k, c) for k, cols in cells.items() for c in cols}
        lines: set[int] = set()
        indices: set[int] = set()
        header = self.header_height if self.show_header else 0
        locations = self._row_locations
        for row_key in row_keys:
            index = locations.get(row_key)  # type: ignore[arg-type]
            if index is not None:
                indices.add(index)
                lines.add(index + header)
        # Entries for other cursor and hover positions go too: they would come back stale
        # when the cursor moves there. Entries of an older update count can never be hit
        # again (they wait for the LRU to drop them), so only the current ones are looked
        # at: the update count is second to last in DataTable's cell, row and line cache
        # keys, and first in its row-renderables' (tests/tui/test_render_fast_path.py
        # fails if a Textual release changes that).
        n = self._update_count
        cell_cache, row_cache, line_cache = (
            self._cell_render_cache,
            self._row_render_cache,
            self._line_cache,
        )
        cells_now = cell_cache.keys()
        for ck in [k for k in cells_now if k[-2] == n and k[:2] in cell_keys]:
            cell_cache.discard(ck)
        rows_now = row_cache.keys()
        for rk in [k for k in rows_now if k[-2] == n and k[0] in row_keys]:
            row_cache.discard(rk)
        lines_now = line_cache.keys()
        for lk in [k for k in lines_now if k[-2] == n and k[0] in lines]:
            line_cache.discard(lk)
        for index in indices:
            self._row_renderable_cache.discard((n, index))
        # Rows scroll under the fixed header; those off screen are drawn when scrolled to.
        top, (width, height) = self.scroll_offset.y, self.size
        regions = [Region(0, y - top, width, 1) for y in lines if header <= y - top < height]
        if regions:
            self.refresh(*regions)

    def order(self) -> None:
        """Put the rows in display order after rows were added; the default keeps the order
        they were added in. A sort reorders rows, it does not rebuild them."""
