"""Column fitting (pure) and the tables at a narrow terminal (Pilot)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from textual.widgets import Static

from lmtui.tui.layout import ColumnPolicy, fit_columns
from lmtui.tui.widgets.event_log import EventLog
from lmtui.tui.widgets.header import ClusterHeader
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

from .fakes import instance, next_version
from .test_app import make_app, started, until

P = ColumnPolicy


def test_everything_fits_at_content_width() -> None:
    assert fit_columns([5, 3, 4], [P(0), P(1), P(2)], 18) == (5, 3, 4)


def test_lowest_priority_goes_first_whatever_its_position() -> None:
    # 7 + 5 + 6 with padding 2 is 18; 16 leaves room for two; the middle one has priority 2.
    assert fit_columns([5, 3, 4], [P(0), P(2), P(1)], 16) == (5, None, 4)


def test_flexible_column_is_cut_before_any_column_goes() -> None:
    assert fit_columns([20, 3], [P(0, min_width=10), P(1)], 20) == (13, 3)


def test_spare_room_goes_back_to_the_flexible_column() -> None:
    # The 4-wide column goes even with the name at its minimum; the name then gets it all.
    assert fit_columns([20, 3, 4], [P(0, min_width=10), P(1), P(2)], 22) == (15, 3, None)


def test_the_first_column_stays_even_when_nothing_fits() -> None:
    assert fit_columns([30, 3], [P(0, min_width=10), P(1)], 5) == (10, None)


@pytest.mark.parametrize(
    ("table", "labels"),
    [
        (ModelTable, ["Model", "Node", "State", "Slots", "Queued"]),
        (NodeTable, ["Node", "Status", "Memory", "In-flight", "Queued"]),
    ],
)
async def test_at_80x24_no_horizontal_scroll_and_the_key_columns_stay(
    table: type[ModelTable | NodeTable], labels: list[str]
) -> None:
    app, client = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, client)
        await pilot.pause()
        t = app.query_one(table)
        assert not t.show_horizontal_scrollbar
        assert t.max_scroll_x == 0
        assert t.virtual_size.width <= t.scrollable_content_region.width
        shown = t.shown_labels
        assert set(labels) <= set(shown)
        assert len(shown) < len(t._column_spec)  # something did go


async def test_columns_come_back_on_a_wider_terminal_and_keep_the_cursor() -> None:
    app, client = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        models.focus()
        await pilot.press("down", "down")
        key = models.cursor_key
        assert "ttl" not in models.shown_columns
        await pilot.resize_terminal(160, 40)
        await until(pilot, lambda: "ttl" in models.shown_columns)
        assert models.shown_columns == [k for k, _ in models._column_spec]
        assert models.cursor_key == key


async def test_a_poll_that_changes_no_width_does_not_rebuild() -> None:
    app, client = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        before = models.rebuilds
        snap = client.snapshot()
        # Same widths: one more slot busy on the 3/4 instance.
        busier = [
            replace(i, slots_busy=2) if i.model == "qwen3-30b-a3b" else i
            for i in snap.instances.values()
        ]
        client.push(next_version(snap, instances=busier))
        await until(pilot, lambda: app.shown_version == client.snapshot().version)
        assert models.rebuilds == before
        assert models.last_sync_stats[1] >= 1


@pytest.mark.parametrize("size", [(160, 48), (120, 40), (80, 24)])
async def test_tables_take_the_rows_they_need_and_the_log_the_rest(size: tuple[int, int]) -> None:
    app, client = make_app()
    async with app.run_test(size=size) as pilot:
        await started(pilot, client)
        await pilot.pause()
        nodes, models = app.query_one(NodeTable), app.query_one(ModelTable)
        events, body = app.query_one(EventLog), app.query_one("#body")
        # Border, header, one line per row: no empty row under either table.
        assert nodes.region.height == 1 + 1 + nodes.row_count
        assert models.region.height == 1 + 1 + models.row_count
        assert events.region.y == models.region.bottom
        assert events.region.bottom == body.region.bottom


async def test_a_long_model_table_stops_at_its_share_and_the_log_keeps_rows() -> None:
    app, client = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, client)
        snap = client.snapshot()
        many = [instance("gpu-box", f"model-{i:02d}") for i in range(40)]
        client.push(next_version(snap, instances=many))
        await until(pilot, lambda: app.query_one(ModelTable).row_count >= 40)
        await pilot.pause()
        models, events = app.query_one(ModelTable), app.query_one(EventLog)
        body = app.query_one("#body")
        assert models.region.height <= body.region.height // 2
        assert events.region.height >= 4
        # The rows scroll; the scrollbar's room was kept, so still no horizontal one.
        assert models.max_scroll_y > 0
        assert models.virtual_size.width <= models.scrollable_content_region.width


async def test_header_gives_the_context_its_own_line_at_80_columns() -> None:
    app, client = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await started(pilot, client)
        header = app.query_one(ClusterHeader)
        await until(pilot, lambda: "strategy efficiency" in header.totals_text)
        assert header.line_count == 2
        totals = str(app.query_one("#totals", Static).render())
        assert totals.rstrip().endswith("tok/s 42.5")  # all of it, not cut
        context = str(app.query_one("#context", Static).render())
        assert context == "strategy efficiency  embedded  /etc/lmtui/config.toml"
        await pilot.resize_terminal(160, 40)
        await until(pilot, lambda: header.line_count == 1)
