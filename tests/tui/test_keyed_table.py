"""The line-drawn table on its own terms: keys and the mouse move its cursor and open rows,
rows off screen wait until they are seen (and a wider one then widens its column), updates
faster than ``MAX_UPDATES_PER_S`` are merged, the start's objects are kept out of the
garbage collector's full passes for as long as the app runs, and a cell made anew with the
same contents is not drawn again (one whose style, alignment or spans changed is)."""

from __future__ import annotations

import gc
from dataclasses import replace
from typing import Any

import pytest
from rich.style import Style
from rich.text import Text
from textual.app import App, ComposeResult

from lmtui.core.events import Event, EventKind
from lmtui.core.model import Instance, InstanceState, Snapshot
from lmtui.tui import app as app_module
from lmtui.tui.app import build_app
from lmtui.tui.widgets import keyed_table
from lmtui.tui.widgets.detail_screens import ModelScreen
from lmtui.tui.widgets.event_log import EventLog
from lmtui.tui.widgets.keyed_table import KeyedTable
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

from .fakes import FIXED_NOW, FakeClient, next_version
from .test_app import until
from .test_render_fast_path import cluster, settle

SIZE = (120, 40)


def instance_of(snap: Snapshot, row: str) -> Instance:
    """The instance of a model-table row key (``node/instance_id``)."""
    node, _, instance_id = row.partition("/")
    return snap.instances[(node, instance_id)]


def changed_row(snap: Snapshot, row: str, **changes: Any) -> Snapshot:
    """The next snapshot, with the instance of ``row`` changed."""
    inst = instance_of(snap, row)
    return next_version(
        snap,
        instances=[replace(i, **changes) if i is inst else i for i in snap.instances.values()],
    )


async def test_keys_move_the_cursor_a_row_a_page_and_to_either_end() -> None:
    snap = cluster(16, 4)
    client = FakeClient(snap)
    app = build_app(client, clock=lambda: FIXED_NOW, theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        models = app.query_one(ModelTable)
        models.focus()
        await pilot.pause()
        keys = models.shown_keys
        page = models.size.height - 1  # the header line stays
        assert models.cursor_key == keys[0]
        await pilot.press("down", "down")
        assert models.cursor_key == keys[2]
        await pilot.press("up")
        assert models.cursor_key == keys[1]
        await pilot.press("pagedown")
        assert models.cursor_key == keys[1 + page]
        # The cursor's row is always in view: the table scrolled under it.
        assert models.cursor_key in models.keys_on_screen()
        await pilot.press("end")
        assert models.cursor_key == keys[-1]
        assert keys[-1] in models.keys_on_screen()
        await pilot.press("home")
        assert models.cursor_key == keys[0]
        assert models.scroll_offset.y == 0
        await pilot.press("up")  # at the top already: stays
        assert models.cursor_key == keys[0]


async def test_a_click_moves_the_cursor_and_a_second_click_opens_the_row() -> None:
    snap = cluster(2, 4)
    client = FakeClient(snap)
    app = build_app(client, clock=lambda: FIXED_NOW, theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        await pilot.pause()  # the layout settled (the header's trend line came)
        models = app.query_one(ModelTable)
        target = models.shown_keys[3]
        # Line 0 is the table's top border, line 1 its header, row 3 is line 5.
        assert await pilot.click(ModelTable, offset=(2, 5))
        assert models.cursor_key == target
        assert not isinstance(app.screen, ModelScreen)
        assert await pilot.click(ModelTable, offset=(2, 5))
        await until(pilot, lambda: isinstance(app.screen, ModelScreen))
        # A click on the header opens nothing and moves nothing.
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ModelScreen))
        assert await pilot.click(ModelTable, offset=(2, 1))
        await pilot.pause()
        assert models.cursor_key == target and not isinstance(app.screen, ModelScreen)


async def test_a_row_that_changed_off_screen_is_drawn_when_it_comes_into_view() -> None:
    """Off screen a changed row keeps its old cells (nothing is drawn for it); scrolled to,
    it shows the newest state, and a cell wider than its column widens the column."""
    snap = cluster(16, 4)
    client = FakeClient(snap)
    app = build_app(client, clock=lambda: FIXED_NOW, theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        await pilot.pause()
        models = app.query_one(ModelTable)
        last = models.shown_keys[-1]
        assert last not in models.keys_on_screen()
        error = "a remarkably long reason this model would not load"
        snap = changed_row(snap, last, state=InstanceState.FAILED, error=error)
        drawn = models.rows_drawn
        state_width = dict(models._fit)[2]
        await settle(pilot, app, client, snap)
        assert models.rows_drawn == drawn  # nothing on screen changed
        assert models._shown[last][2].plain == "loaded"  # the row waits, unseen
        assert models.get_cell(last, "state").plain.startswith("failed: a remarkably")
        models.focus()
        await pilot.press("end")
        await pilot.pause()
        await pilot.pause()
        assert last in models.keys_on_screen()
        want = models.get_cell(last, "state").cell_len
        assert want > state_width
        assert dict(models._fit)[2] == want  # the column took its width


async def test_a_row_drawn_then_changed_off_screen_shows_its_new_cells_when_back() -> None:
    """A row that was on screen (its line drawn and kept), scrolled away, changed while
    away, then scrolled back to, shows what it is now, not the line kept from before."""
    snap = cluster(16, 4)
    client = FakeClient(snap)
    app = build_app(client, clock=lambda: FIXED_NOW, theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        await pilot.pause()
        models = app.query_one(ModelTable)
        models.focus()
        first = models.shown_keys[1]  # not the cursor's row: its line is the zebra one

        def line(key: str) -> str:
            y = models.header_height + models.get_row_index(key) - models.scroll_offset.y
            return "".join(segment.text for segment in models.render_line(y))

        before = line(first)
        await pilot.press("end")
        await pilot.pause()
        assert first not in models.keys_on_screen()
        inst = instance_of(snap, first)
        busy = (inst.slots_busy + 2) % 4
        snap = changed_row(snap, first, slots_busy=busy)
        await settle(pilot, app, client, snap)
        await pilot.press("home")
        await pilot.pause()
        after = line(first)
        assert after != before
        assert f"{busy}/{inst.slots_total}" in after


async def test_updates_faster_than_the_limit_are_merged_and_lose_no_event() -> None:
    snap = cluster(2, 2)
    client = FakeClient(snap)
    app = build_app(client, clock=lambda: FIXED_NOW, theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        await pilot.pause(1 / app_module.MAX_UPDATES_PER_S)
        drawn: list[int] = []
        show = app.show_snapshot

        def counting(s: object) -> None:
            drawn.append(s.version)  # type: ignore[attr-defined]
            show(s)  # type: ignore[arg-type]

        app.show_snapshot = counting  # type: ignore[method-assign]
        for k in range(30):
            snap = next_version(snap)
            client.push(
                snap, [Event(FIXED_NOW + k, EventKind.NODE_HEALTH, f"event {k}", node="node-0")]
            )
        await until(pilot, lambda: app.shown_version == snap.version)
        # The first was drawn at once, the other 29 in a draw or two after it.
        assert 1 <= len(drawn) <= 3, drawn
        assert drawn[-1] == snap.version
        log = app.query_one(EventLog)
        assert [e.message for e in log.shown][-30:] == [f"event {k}" for k in range(30)]


async def test_the_clock_tick_skips_a_screen_an_update_has_just_drawn() -> None:
    snap = cluster(2, 2)
    client = FakeClient(snap)
    now = [FIXED_NOW]
    app = build_app(client, clock=lambda: now[0], theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        shown: list[float] = []
        show = app.show_snapshot

        def counting(s: object) -> None:
            shown.append(now[0])
            show(s)  # type: ignore[arg-type]

        app.show_snapshot = counting  # type: ignore[method-assign]
        client.push(next_version(snap))
        await until(pilot, lambda: len(shown) == 1)
        now[0] += 0.2
        app._tick()  # the update's ages are 0.2 s old: nothing to draw
        assert len(shown) == 1
        now[0] += 0.8
        app._tick()  # a second on: the ages move
        assert len(shown) == 2


async def test_the_starts_objects_are_frozen_while_the_app_runs() -> None:
    if not gc.isenabled():
        return  # a run with the collector off has nothing to spare it
    snap = cluster(2, 2)
    client = FakeClient(snap)
    app = build_app(client, clock=lambda: FIXED_NOW, theme_dirs=())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.shown_version == snap.version)
        await until(pilot, lambda: gc.get_freeze_count() > 0)
        assert app.query_one(NodeTable).row_count == 2
    # Given back to the collector when the app ends: nothing of it is kept for good.
    assert gc.get_freeze_count() == 0


class _OneTable(App[None]):
    def compose(self) -> ComposeResult:
        yield KeyedTable([("name", "Name"), ("n", "N")], id="t")


def _line(table: KeyedTable, y: int) -> list[tuple[str, Style | None]]:
    return [(s.text, s.style) for s in table._row_strip(table._shown[table.shown_keys[y]])]


async def test_a_cell_made_anew_with_the_same_content_is_not_drawn_again_and_a_changed_one_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[str] = []
    segments = keyed_table.cell_segments

    def counting(cell: Text, width: int, console: Any) -> Any:
        made.append(cell.plain)
        return segments(cell, width, console)

    monkeypatch.setattr(keyed_table, "cell_segments", counting)
    app = _OneTable()
    async with app.run_test(size=(40, 6)) as pilot:
        table = app.query_one(KeyedTable)
        wide = (Text("x"), Text("1234"))  # room for "12" to be aligned in
        table.sync({"a": (Text("gemma", style="bold"), Text("12", justify="right")), "b": wide})
        await pilot.pause()
        first = _line(table, 0)
        assert "".join(t for t, _ in first).split() == ["gemma", "12"]
        made.clear()
        # New Text objects (a row made again for a changed number) with the same contents.
        table.sync({"a": (Text("gemma", style="bold"), Text("12", justify="right")), "b": wide})
        assert _line(table, 0) == first and made == []
        # Same characters, another style, alignment or span: each is drawn anew.
        for cells in (
            (Text("gemma", style="italic"), Text("12", justify="right")),
            (Text("gemma", style="bold"), Text("12", justify="left")),
            (Text.assemble(("gem", "red"), "ma"), Text("12", justify="right")),
        ):
            made.clear()
            table.sync({"a": cells, "b": wide})
            line = _line(table, 0)
            assert line != first and made
            assert "".join(t for t, _ in line).split() == ["gemma", "12"]
        name = table._row_strip(table._shown["a"])
        assert any(s.style == Style(color="red") and s.text == "gem" for s in name)
