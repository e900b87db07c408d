"""A table of keyed rows, kept in sync with a mapping in place, and drawn a line at a time.

``sync(rows)`` diffs the wanted rows against what the table shows: it removes rows whose key
is gone, takes only the rows whose cells changed, and adds new rows. It never clears the
table, so the scroll position and the row order a user is looking at survive every poll,
and the redraw cost scales with what changed on screen, not with the size of the cluster.

Why not Textual's ``DataTable``: it renders each cell through Rich's full layout
(``console.render_lines`` of a ``Padding``) and resolves the row's component styles per
line, about 0.5 ms a line here, and one ``update_cell`` drops every cached rendering of
the table. A busy cluster changes 30-40 lines on screen per update (ages and sparklines
move every second), so DataTable's best, with its caches patched by hand, measured 124 ms
frame p99 at 50 nodes and 215 ms at 200 (``bench/tui_render.py``, issue 12's goal: 16 and
50 ms). Here (Textual's line API, ``ScrollView.render_line``) a row is made into one
``Strip`` of segments straight from its ``Text`` cells when it changes, kept until it
changes again, and each line on screen is that strip with the row's style (zebra, cursor,
hover) applied, cached too; only the lines of rows that changed are repainted, and rows
off screen are not drawn at all. ``bench/tui_render.py`` reports the figures.

The cursor follows its row's key, not its position: a row added or removed above it (the
demo's traffic loads and unloads every few seconds) must not slide another row under it,
or the next ``p`` or ``u`` would act on that one. Only when its own row goes does the
cursor stay where it was, on the row that took its place.

Columns fit the table's width (``layout.fit_columns``): on a narrow terminal the
lowest-priority ones are left out and flexible ones are cut with an ellipsis, so there is
never a horizontal scrollbar. Each column is as wide as the widest cell it has held since
the last fit of the width (a high-water mark), so numbers that come and go do not make the
columns jump sideways; a cell wider than its column widens it at once (when it fits).
The component classes are DataTable's (``datatable--cursor`` and the rest), so themes and
CSS written for DataTable style this table the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from lmtui.tui.layout import ColumnPolicy, fit_columns
from lmtui.tui.render import Cells, cells_equal

#: What the columns look like: per shown column, its index in the column spec and its
#: width in cells (without the padding).
Fit = tuple[tuple[int, int], ...]

#: Cells of padding either side of a column's content.
PADDING = 1

#: Cells whose segments a table keeps (by the cell's identity and width, and by its
#: content and width) before it starts again: a few per row on screen, most shared.
CELL_CACHE = 4096

#: A cell as a row draws it: ``(text, style)`` runs with the padding either side, runs of
#: one style merged (a plain cell is one run, padding and all).
Piece = tuple[tuple[str, Style | None], ...]

#: How a line is styled: header, even or odd row, cursor, hover.
_KINDS = ("header", "even", "odd", "cursor", "hover")


def cell_segments(cell: Text, width: int, console: Console) -> list[Segment]:
    """``cell`` as segments exactly ``width`` cells wide: cut with an ellipsis when wider,
    padded on the side its ``justify`` says when narrower."""
    if "\n" in cell.plain:  # one line per row, whatever a node's message held
        cell = Text(" ").join(cell.split())
    length = cell.cell_len
    if length > width:
        cell = cell.copy()
        cell.truncate(width, overflow="ellipsis")
        length = cell.cell_len
    if cell._spans or not cell.style:
        segments = list(cell.render(console, end=""))
    else:
        # Text.render leaves a Text's own style to its caller when it has no spans.
        segments = [Segment(cell.plain, console.get_style(cell.style))]
    spare = width - length
    if spare > 0:
        if cell.justify == "right":
            segments.insert(0, Segment(" " * spare))
        elif cell.justify == "center":
            segments.insert(0, Segment(" " * (spare // 2)))
            segments.append(Segment(" " * (spare - spare // 2)))
        else:
            segments.append(Segment(" " * spare))
    return segments


def cell_piece(cell: Text, width: int, console: Console) -> Piece:
    """``cell_segments`` with ``PADDING`` either side, runs of one style merged."""
    pad = " " * PADDING
    runs: list[tuple[str, Style | None]] = []
    text, style = pad, None
    for seg in cell_segments(cell, width, console):
        if seg.style is style or seg.style == style:
            text += seg.text
        else:
            runs.append((text, style))
            text, style = seg.text, seg.style
    if style is None:
        runs.append((text + pad, None))
    else:
        runs += ((text, style), (pad, None))
    return tuple(runs)


def styled_line(strip: Strip, style: Style, width: int, over: Style | None = None) -> Strip:
    """``strip`` over ``style`` (its own segments' styles win), under ``over`` (which wins
    over them: the cursor's colours, as DataTable draws it), exactly ``width`` cells: one
    new strip, where ``apply_style`` then ``crop_extend`` make two (a Strip is not cheap to
    make: it comes with caches of its own)."""
    if over is None:
        segments = [
            Segment(text, style + own if own is not None else style) for text, own, _ in strip
        ]
    else:
        top = style + over
        segments = [
            Segment(text, style + own + over if own is not None else top) for text, own, _ in strip
        ]
        style = top
    length = strip.cell_length
    if length < width:
        segments.append(Segment(" " * (width - length), style))
    elif length > width:
        return Strip(segments, length).crop(0, width)
    return Strip(segments, width)


class _RowMessage(Message):
    """Something about one row of a ``KeyedTable``."""

    def __init__(self, table: KeyedTable, key: str | None) -> None:
        super().__init__()
        self.table = table
        self.key = key

    @property
    def control(self) -> KeyedTable:
        return self.table


class KeyedTable(ScrollView, can_focus=True, inherit_bindings=False):
    """Rows of Rich ``Text`` cells, synchronised by row key, with a row cursor."""

    DEFAULT_CSS = """
    KeyedTable {
        background: $surface;
        color: $foreground;
        height: auto;
        max-height: 100%;
        overflow-x: hidden;

        &:focus {
            background-tint: $foreground 5%;
            & > .datatable--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .datatable--header {
                background-tint: $foreground 5%;
            }
        }
        &:dark > .datatable--even-row {
            background: $surface-darken-1 40%;
        }
        & > .datatable--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        &:ansi > .datatable--header {
            background: ansi_bright_blue;
            color: ansi_default;
        }
        & > .datatable--even-row {
            background: $surface-lighten-1 50%;
        }
        & > .datatable--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        & > .datatable--hover {
            background: $block-hover-background;
        }
    }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "datatable--header",
        "datatable--even-row",
        "datatable--odd-row",
        "datatable--cursor",
        "datatable--hover",
    }

    # Its own keys only: a scroll view's left/right and sideways paging have nothing to do
    # in a table whose columns always fit its width.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Select", show=False),
        Binding("up", "cursor_up", "Cursor up", show=False),
        Binding("down", "cursor_down", "Cursor down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,ctrl+home", "scroll_top", "Top", show=False),
        Binding("end,ctrl+end", "scroll_bottom", "Bottom", show=False),
    ]

    class RowSelected(_RowMessage):
        """Enter on a row, or a click on the row under the cursor (``key``)."""

    class RowHighlighted(_RowMessage):
        """The cursor moved to another row, ``key`` (by a key, a click, or its row
        moving); None when the table was emptied."""

    #: The header line is shown (the detail screens' small tables keep it too).
    show_header: ClassVar[bool] = True

    def __init__(
        self,
        columns: Sequence[tuple[str, str]],
        policies: Mapping[str, ColumnPolicy] | None = None,
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self._column_spec = tuple(columns)
        self._labels = [Text.from_markup(label) for _, label in self._column_spec]
        for label in self._labels:
            label.no_wrap, label.overflow = True, "ellipsis"
        # A column without a policy keeps its place in the drop order by position.
        self._policies = tuple(
            (policies or {}).get(key, ColumnPolicy(100 + i))
            for i, (key, _) in enumerate(self._column_spec)
        )
        #: What each row currently shows, to diff against and to draw from.
        self._shown: dict[str, Cells] = {}
        #: Row keys in display order, and each key's index in it.
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        #: The columns as they are now (empty before the table has a width).
        self._fit: Fit = ()
        #: Each column's widest content since the width was last fitted; None: measure.
        self._widths: list[int] | None = None
        #: Each row's unstyled strip, then styled by line kind, for the current columns.
        self._strips: dict[str, Strip] = {}
        self._styled: dict[tuple[str, str], Strip] = {}
        self._header: Strip | None = None
        #: Cells drawn (``cell_piece``), by the cell's identity and width (most cells are
        #: shared: render.SHARED_CELLS), else by its content and width (a row made anew
        #: for a changed number still has most of its cells' contents).
        self._cell_cache: dict[tuple[int, int], tuple[Text, Piece]] = {}
        self._piece_cache: dict[tuple[object, ...], Piece] = {}
        #: The rich style of each line kind (the widget's own under the component's).
        self._kind_styles: dict[str, tuple[Style, Style | None]] | None = None
        #: Rows off screen whose cells are older than their data (``sync``'s ``later``).
        self._stale: set[str] = set()
        self._cursor = 0
        self._hover: int | None = None
        #: Counters for tests and benchmarks: how much work the last sync did (rows
        #: added, cells changed, rows removed), how many times the columns were fitted
        #: anew, and how many rows were made into strips (what a redraw costs).
        self.last_sync_stats: tuple[int, int, int] = (0, 0, 0)
        self.rebuilds = 0
        self.rows_drawn = 0

    # -- what tests, actions and subclasses read ---------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def header_height(self) -> int:
        return 1 if self.show_header else 0

    @property
    def shown_columns(self) -> list[str]:
        """Keys of the columns on screen, in display order."""
        return [self._column_spec[i][0] for i, _ in self._fit]

    @property
    def shown_labels(self) -> list[str]:
        """The headers of the columns on screen, in display order."""
        return [self._labels[i].plain for i, _ in self._fit]

    @property
    def shown_keys(self) -> list[str]:
        """Row keys in display order."""
        return list(self._order)

    @property
    def cursor_row(self) -> int:
        return self._cursor

    @property
    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, or None when the table is empty."""
        return self._order[self._cursor] if self._order else None

    def get_row_index(self, key: str) -> int:
        """Where row ``key`` is in display order (raises ``KeyError`` for an absent row)."""
        return self._index[key]

    def get_cell(self, key: str, column: str) -> Text:
        """The cell of row ``key`` in ``column`` as the table holds it now."""
        index = next(i for i, (k, _) in enumerate(self._column_spec) if k == column)
        return self.shown_row(key)[index]

    def shown_row(self, key: str) -> Cells:
        """The cells a row shows now, or would show scrolled into view (raises
        ``KeyError`` for an absent row)."""
        if key in self._stale:
            self._catch_up([key])
        return self._shown[key]

    def keys_on_screen(self) -> set[str]:
        """Keys of the rows in the table's window now (none before it has a size)."""
        top = self.scroll_offset.y
        rows = max(0, self.size.height - self.header_height)
        return set(self._order[top : top + rows])

    # -- sync ----------------------------------------------------------------------------

    def sync(self, rows: Mapping[str, Cells], *, later: Collection[str] = ()) -> bool:
        """Make the table show exactly ``rows``; return whether rows were added.

        Rows are added at the bottom in the mapping's order, then ``order`` runs (a sorted
        table overrides it; only an added row can break the order: updates keep keys,
        removals keep order). The cursor then goes back to the row it was on.

        ``later`` are rows off screen whose cells in ``rows`` are the ones they showed,
        though newer ones are due (an age or a sparkline that moved): the subclass's
        ``fresh_cells`` makes them when they come into view (``render_line``) or are
        asked for (``shown_row``), so that a clock tick at 4,000 rows draws the twenty on
        screen, not every one. Their widths count towards the columns' once they are made,
        so only cells of about the same width should wait (an age, a sparkline).
        """
        shown = self._shown
        removed = [key for key in shown if key not in rows]
        changes = {key: cells for key, cells in rows.items() if shown.get(key) is not cells}
        stale = set(later).intersection(rows) if later else set()
        return self.apply_changes(changes, removed, stale)

    def apply_changes(
        self, changes: Mapping[str, Cells], removed: Collection[str], stale: set[str]
    ) -> bool:
        """``sync`` by difference: rows added or whose cells changed (``changes``), rows
        that went (``removed``), and the rows whose cells are older than their data
        (``stale``, the whole set of them, replacing the last): a caller that knows what
        moved (most of a 4,000-row table does not, each update) need not hand every row.
        Returns whether rows were added."""
        cursor_key = self.cursor_key
        shown = self._shown
        for key in removed:
            self._note_widths(shown.pop(key), None)
            self._strips.pop(key, None)
        added = [key for key in changes if key not in shown]
        repaint: list[str] = []
        changed = self._update_rows(changes, repaint)
        for key in added:
            shown[key] = changes[key]
            self._note_widths(None, changes[key])
        self._stale = stale
        self.last_sync_stats = (len(added), changed, len(removed))
        if removed or added:
            gone = set(removed)
            self._order = [key for key in self._order if key not in gone] + added
            if added:
                self.order()
            self._reindex(cursor_key)
            self._styled.clear()  # a row's parity (its stripe) may have changed
            refit = self._refit()
            if not refit:
                self.refresh()
        elif not self._refit():
            self._repaint(repaint)
        return bool(added)

    def _update_rows(self, rows: Mapping[str, Cells], repaint: list[str]) -> int:
        """Take the cells of ``rows`` that changed for the rows shown (new ones are left to
        the caller), put the rows whose shown cells changed in ``repaint``; return how many
        shown cells changed."""
        changed = 0
        shown, strips, styled = self._shown, self._strips, self._styled
        columns = [i for i, _ in self._fit]
        for key, cells in rows.items():
            old = shown.get(key)
            if old is None or cells is old:
                continue  # a new row, or the caller reused the row's cells: nothing changed
            self._note_widths(old, cells)
            shown[key] = cells
            n = sum(
                1 for i in columns if cells[i] is not old[i] and not cells_equal(cells[i], old[i])
            )
            if n:
                changed += n
                strips.pop(key, None)
                for kind in _KINDS:
                    styled.pop((key, kind), None)
                repaint.append(key)
        return changed

    def _note_widths(self, old: Cells | None, new: Cells | None) -> None:
        """Keep the columns' content widths current for a row that changed from ``old`` to
        ``new`` (None: added, or removed): a wider cell widens its column. A narrower one
        leaves it as wide (a high-water mark) until a row goes or the width is fitted anew,
        so that numbers that come and go in place do not move the columns sideways."""
        widths = self._widths
        if widths is None:
            return
        if new is None:
            # A row that goes takes its width along: the table repaints whole anyway.
            if old is not None and any(c.cell_len >= w for c, w in zip(old, widths, strict=True)):
                self._widths = None
            return
        for i, cell in enumerate(new):
            if old is not None and old[i] is cell:
                continue  # a cell the caller reused
            if cell.cell_len > widths[i]:
                widths[i] = cell.cell_len

    def _reindex(self, cursor_key: str | None) -> None:
        """Index the display order again and put the cursor back on ``cursor_key``'s row
        (or, when it went, keep its position, within the rows there are)."""
        self._index = {key: i for i, key in enumerate(self._order)}
        self.virtual_size = Size(self.virtual_size.width, self.header_height + len(self._order))
        before = self._cursor
        if cursor_key is not None and cursor_key in self._index:
            self._cursor = self._index[cursor_key]
        self._cursor = max(0, min(self._cursor, len(self._order) - 1))
        if self._cursor != before and cursor_key in self._index:
            self._scroll_to_cursor()
        if self.cursor_key != cursor_key:
            self.post_message(self.RowHighlighted(self, self.cursor_key))

    def sort(self, *columns: str, key: Callable[[Any], Any]) -> None:
        """Order the rows by ``key`` of their cells in ``columns`` (one column: the cell;
        more: a tuple of them), stably. Only the order moves: no row is made again."""
        index = {k: i for i, (k, _) in enumerate(self._column_spec)}
        picks = [index[c] for c in columns]
        shown = self._shown
        if len(picks) == 1:
            (one,) = picks
            self._order.sort(key=lambda k: key(shown[k][one]))
        else:
            self._order.sort(key=lambda k: key(tuple(shown[k][i] for i in picks)))

    def order(self) -> None:
        """Put the rows in display order after rows were added; the default keeps the order
        they were added in."""

    def fresh_cells(self, keys: Collection[str]) -> Mapping[str, Cells]:
        """The cells due now for rows that ``sync`` was told may wait (``later``); a table
        that never defers needs none."""
        return {}

    def _catch_up(self, keys: Iterable[str]) -> None:
        """Bring the waiting rows among ``keys`` up to date (no refit, no repaint: this
        runs while their lines are being drawn, or for a caller that reads them)."""
        due = self._stale.intersection(keys)
        if not due:
            return
        self._stale -= due
        self._update_rows(self.fresh_cells(due), [])
        if self._fit and self._wanted_fit() != self._fit:
            # A cell that came into view wider than its column: the columns are fitted
            # again once this frame is drawn (the next one shows it whole).
            self.call_later(self._refit)

    # -- columns -------------------------------------------------------------------------

    def _content_widths(self) -> list[int]:
        """Each column's content width as the columns are fitted to (``_note_widths``)."""
        if self._widths is None:
            self._widths = self._measure_widths()
        return list(self._widths)

    def _measure_widths(self) -> list[int]:
        """Each column's content width, its widest cell or its label, over every row."""
        widths = [label.cell_len for label in self._labels]
        for cells in self._shown.values():
            for i, cell in enumerate(cells):
                if cell.cell_len > widths[i]:
                    widths[i] = cell.cell_len
        return widths

    def _wanted_fit(self) -> Fit:
        width = self.size.width
        if width <= 0:
            return ()
        # Room for the vertical scrollbar once the rows outgrow the table's height, so that
        # a growing table does not tip into a horizontal one.
        if self.header_height + len(self._order) > self.size.height:
            width -= self.styles.scrollbar_size_vertical
        fitted = fit_columns(self._content_widths(), self._policies, width, padding=2 * PADDING)
        return tuple((i, w) for i, w in enumerate(fitted) if w is not None)

    def _refit(self) -> bool:
        """Fit the columns to the width and content again; return whether they changed
        (and with them every line, repainted)."""
        wanted = self._wanted_fit()
        if wanted == self._fit:
            return False
        self._fit = wanted
        self._strips.clear()
        self._styled.clear()
        self._header = None
        self.virtual_size = Size(
            sum(w + 2 * PADDING for _, w in wanted), self.header_height + len(self._order)
        )
        self.rebuilds += 1
        self.refresh()
        return True

    def on_resize(self, event: events.Resize) -> None:
        self._widths = None  # a new width fits the content as it is now
        self._styled.clear()  # lines are as wide as the table
        self._header = None
        self._refit()
        self._scroll_to_cursor()

    # -- drawing -------------------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        # A theme or a focus change: the lines' styles are worked out again, and the rows
        # made again too (a console theme may restyle what the cells' styles name).
        self._cell_cache.clear()
        self._piece_cache.clear()
        self._strips.clear()
        self._kind_styles = None
        self._styled.clear()
        self._header = None
        self.refresh()

    def _clear_caches(self) -> None:
        """Forget every strip and style (a test's redraw from nothing)."""
        self._cell_cache.clear()
        self._piece_cache.clear()
        self._strips.clear()
        self._styled.clear()
        self._header = None
        self._kind_styles = None
        self._styles_cache.clear()

    def _styles_by_kind(self) -> dict[str, tuple[Style, Style | None]]:
        """Per line kind, the style under a line's cells and the one over them (the
        cursor's, whose colours win over the cells' own, as in DataTable)."""
        if self._kind_styles is None:
            base = self.rich_style
            component = self.get_component_rich_style
            self._kind_styles = {
                "header": (base + component("datatable--header"), None),
                "even": (base + component("datatable--even-row"), None),
                "odd": (base + component("datatable--odd-row"), None),
                "cursor": (base, component("datatable--cursor")),
                "hover": (base + component("datatable--hover"), None),
            }
        return self._kind_styles

    def _row_strip(self, cells: Sequence[Text]) -> Strip:
        """One row's cells, padded and cut to the columns, as one unstyled strip."""
        console = self.app.console
        by_id, by_content = self._cell_cache, self._piece_cache
        # Each bounded on its own: the identities fill up with every row made anew (some
        # 340 cells an update at 50 nodes) and cost only a key to make again from the
        # contents, which fill with new contents only (an age, a sparkline: a few an
        # update). Cleared together, every cell on screen was drawn again once in about
        # twelve updates, a frame 2 ms longer.
        if len(by_id) > CELL_CACHE:
            by_id.clear()
        if len(by_content) > CELL_CACHE:
            by_content.clear()
        # Runs of one style become one segment as they are made (the padding, plain cells
        # and their spare room): each line's styling and compositing afterwards costs per
        # segment, and Segment.simplify afterwards cost as much as making them.
        out: list[Segment] = []
        run: list[str] = []
        run_style: Style | None = None
        for i, width in self._fit:
            cell = cells[i]
            hit = by_id.get((id(cell), width))
            if hit is not None and hit[0] is cell:
                piece = hit[1]
            else:
                spans = cell._spans
                key = (cell.plain, cell.style, cell.justify, tuple(spans) if spans else (), width)
                known = by_content.get(key)
                if known is None:
                    known = by_content[key] = cell_piece(cell, width, console)
                piece = known
                by_id[(id(cell), width)] = (cell, piece)
            for text, style in piece:
                if style is run_style or style == run_style:
                    run.append(text)
                else:
                    if run:
                        out.append(Segment("".join(run), run_style))
                    run, run_style = [text], style
        if run:
            out.append(Segment("".join(run), run_style))
        return Strip(out, sum(w + 2 * PADDING for _, w in self._fit))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        styles = self._styles_by_kind()
        header = self.header_height
        if y < header:
            if self._header is None:
                strip = self._row_strip(self._labels)
                self._header = styled_line(strip, styles["header"][0], width)
            return self._header
        row = y - header + self.scroll_offset.y
        if row >= len(self._order):
            return Strip.blank(width, self.rich_style)
        key = self._order[row]
        if self._stale and key in self._stale:
            # A row that waited off screen and is now in view: made before it is drawn.
            self._catch_up(self.keys_on_screen() | {key})
        # The cursor is drawn with or without focus (blurred, then), as DataTable does: an
        # operator sees which row a key would act on in either table.
        if row == self._cursor:
            kind = "cursor"
        elif row == self._hover:
            kind = "hover"
        else:
            kind = "even" if row % 2 == 0 else "odd"
        cached = self._styled.get((key, kind))
        if cached is not None:
            return cached
        plain = self._strips.get(key)
        if plain is None:
            plain = self._strips[key] = self._row_strip(self._shown[key])
            self.rows_drawn += 1
        under, over = styles[kind]
        styled = self._styled[(key, kind)] = styled_line(plain, under, width, over)
        return styled

    def _repaint(self, keys: Iterable[str]) -> None:
        """Repaint the lines of rows ``keys`` that are on screen."""
        top, height = self.scroll_offset.y, self.size.height
        header = self.header_height
        width = max(self.size.width, self.virtual_size.width)
        styled = self._styled
        regions = []
        for key in keys:
            for kind in _KINDS:
                styled.pop((key, kind), None)
            row = self._index.get(key)
            if row is None:
                continue
            line = row - top + header
            if header <= line < height:
                regions.append(Region(0, line, width, 1))
        if regions:
            self.refresh(*regions)

    def _repaint_row(self, row: int | None) -> None:
        if row is not None and 0 <= row < len(self._order):
            self._repaint([self._order[row]])

    # -- the cursor ----------------------------------------------------------------------

    def move_cursor(self, *, row: int, scroll: bool = True) -> None:
        """Put the cursor on display row ``row`` (clamped), scrolled into view."""
        if not self._order:
            return
        row = max(0, min(row, len(self._order) - 1))
        before = self._cursor
        self._cursor = row
        if row != before:
            self._repaint_row(before)
            self._repaint_row(row)
            self.post_message(self.RowHighlighted(self, self.cursor_key))
        if scroll:
            self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        rows = self.size.height - self.header_height
        if rows <= 0:
            return
        top = self.scroll_offset.y
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=False, force=True)
        elif self._cursor >= top + rows:
            self.scroll_to(y=self._cursor - rows + 1, animate=False, force=True)

    def _page(self) -> int:
        return max(1, self.size.height - self.header_height)

    def action_cursor_up(self) -> None:
        self.move_cursor(row=self._cursor - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(row=self._cursor + 1)

    def action_page_up(self) -> None:
        self.move_cursor(row=self._cursor - self._page())

    def action_page_down(self) -> None:
        self.move_cursor(row=self._cursor + self._page())

    def action_scroll_top(self) -> None:
        self.move_cursor(row=0)

    def action_scroll_bottom(self) -> None:
        self.move_cursor(row=len(self._order) - 1)

    def action_select_cursor(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.RowSelected(self, key))

    # -- the mouse -----------------------------------------------------------------------

    def _row_at(self, event: events.MouseEvent) -> int | None:
        """The display row under the mouse (None: the header, the border, no row)."""
        # From the screen's coordinates: what the event's own offset is relative to
        # depends on how it was forwarded.
        content = self.content_region
        if event.screen_offset not in content:
            return None
        line = event.screen_y - content.y
        if line < self.header_height:
            return None
        row = line - self.header_height + self.scroll_offset.y
        return row if 0 <= row < len(self._order) else None

    def on_click(self, event: events.Click) -> None:
        row = self._row_at(event)
        if row is None:
            return
        if row == self._cursor:
            self.action_select_cursor()  # a click on the cursor's row opens it
        else:
            self.move_cursor(row=row)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        row = self._row_at(event)
        if row != self._hover:
            before, self._hover = self._hover, row
            self._repaint_row(before)
            self._repaint_row(row)

    def on_leave(self, event: events.Leave) -> None:
        if self._hover is not None:
            before, self._hover = self._hover, None
            self._repaint_row(before)
