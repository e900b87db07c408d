"""Pilot tests: the app against a fake EngineClient, checking what a user would see."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

from textual.pilot import Pilot
from textual.widgets import Static

from lmtui.core.events import Event, EventKind, Level
from lmtui.core.model import Health
from lmtui.engine.client import HttpEngineClient
from lmtui.tui.app import LmtuiApp, build_app, client_mode
from lmtui.tui.render import NODE_COLUMNS
from lmtui.tui.widgets.event_log import EventLog
from lmtui.tui.widgets.filter_bar import FilterBar
from lmtui.tui.widgets.header import ClusterHeader
from lmtui.tui.widgets.help import HelpScreen
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

from .fakes import FIXED_NOW, FakeClient, FlakyClient, fixed_cluster, instance, next_version

SIZE = (160, 40)
STATUS = [k for k, _ in NODE_COLUMNS].index("status")


async def until(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the app run until ``cond()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not cond():
            await pilot.pause(0.01)


def make_app(source: str = "/etc/lmtui/config.toml") -> tuple[LmtuiApp, FakeClient]:
    snap, events = fixed_cluster()
    client = FakeClient(snap, events, source=source)
    return build_app(client, clock=lambda: FIXED_NOW), client


async def started(pilot: Pilot[None], client: FakeClient) -> None:
    app = pilot.app
    assert isinstance(app, LmtuiApp)
    await until(pilot, lambda: client.watching and app.shown_version == client.snapshot().version)


async def test_tables_show_nodes_and_instances() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        nodes = app.query_one(NodeTable)
        models = app.query_one(ModelTable)
        assert nodes.shown_keys == ["mac-studio", "gpu-box", "old-mini"]
        assert nodes.row_count == 3
        # Sorted by model name, keyed node/instance.
        assert models.shown_keys == [
            "mac-studio/gemma-3-12b",
            "gpu-box/llama3.1:8b",
            "gpu-box/nomic-embed-text",
            "mac-studio/qwen3-30b-a3b",
        ]
        assert str(nodes.get_cell("old-mini", "status")) == "down"
        # One waiting in lmtui's queue for the model, two inside the node's server.
        assert str(models.get_cell("gpu-box/llama3.1:8b", "queued")) == "1+2"
        header = app.query_one(ClusterHeader)
        assert "2/3 healthy" in header.totals_text
        assert header.totals_text.endswith("/etc/lmtui/config.toml")
        assert not app.query("#demo-banner")
        # The backlog from recent_events() is in the log, once.
        assert app.query_one(EventLog).count == 4


async def test_node_going_down_changes_its_status_cell_in_place() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        nodes = app.query_one(NodeTable)
        index_before = nodes.get_row_index("mac-studio")
        snap = client.snapshot()
        mac = snap.nodes["mac-studio"]
        down = replace(mac, health=Health.DOWN, last_error="ReadTimeout")
        client.push(
            next_version(snap, nodes=[down]),
            [
                Event(
                    FIXED_NOW,
                    EventKind.NODE_HEALTH,
                    "mac-studio is down: ReadTimeout",
                    node="mac-studio",
                    level=Level.ERROR,
                )
            ],
        )
        await until(pilot, lambda: app.shown_version == snap.version + 1)

        assert nodes.row_count == 3
        assert nodes.get_row_index("mac-studio") == index_before
        assert str(nodes.get_cell("mac-studio", "status")) == "down"
        assert str(nodes.get_cell("mac-studio", "error")) == "ReadTimeout"
        # Exactly the two cells that changed were updated; no row added or removed.
        assert nodes.last_sync_stats == (0, 2, 0)
        assert app.query_one(EventLog).count == 5
        assert "1/3 healthy" in app.query_one(ClusterHeader).totals_text


async def test_a_model_with_requests_waiting_and_no_instance_has_a_row() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        snap = client.snapshot()
        waiting = replace(
            next_version(snap), queue_depth=MappingProxyType({"phi-4": 3, "llama3.1:8b": 1})
        )
        client.push(waiting)
        await until(pilot, lambda: app.shown_version == waiting.version)
        assert "~queued/phi-4" in models.shown_keys
        assert str(models.get_cell("~queued/phi-4", "queued")) == "3"
        assert "no replica" in str(models.get_cell("~queued/phi-4", "state"))
        # Sorted in with the others, by model name.
        assert models.shown_keys.index("~queued/phi-4") == len(models.shown_keys) - 2
        # The filter applies to it like to any row.
        app.query_one(ModelTable).set_filter("qwen")
        assert "~queued/phi-4" not in models.shown_keys
        app.query_one(ModelTable).set_filter("")
        # The queue drains (or a replica appears): the row goes.
        drained = replace(next_version(waiting), queue_depth=MappingProxyType({}))
        client.push(drained)
        await until(pilot, lambda: app.shown_version == drained.version)
        assert "~queued/phi-4" not in models.shown_keys


async def test_instance_appearing_adds_a_row_and_removed_one_goes() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        snap = client.snapshot()
        new = instance("old-mini", "phi-4", size_bytes=9 * 1024**3)
        client.push(next_version(snap, instances=[*snap.instances.values(), new]))
        await until(pilot, lambda: app.shown_version == snap.version + 1)
        assert models.row_count == 5
        assert "old-mini/phi-4" in models.shown_keys
        assert str(models.get_cell("old-mini/phi-4", "size")) == "9.0 GB"
        assert models.last_sync_stats == (1, 0, 0)

        snap2 = client.snapshot()
        kept = [i for i in snap2.instances.values() if i.model != "gemma-3-12b"]
        client.push(next_version(snap2, instances=kept))
        await until(pilot, lambda: app.shown_version == snap2.version + 1)
        assert models.row_count == 4
        assert "mac-studio/gemma-3-12b" not in models.shown_keys
        assert models.last_sync_stats == (0, 0, 1)
        # The node table saw the model count drop on mac-studio, in place.
        assert str(app.query_one(NodeTable).get_cell("mac-studio", "models")) == "1"


async def test_demo_banner_shows_for_demo_source() -> None:
    app, client = make_app(source="demo")
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        banner = app.query_one("#demo-banner", Static)
        assert "demo cluster — no config found" in str(banner.render())
        assert "lmtui --help" in str(banner.render())


async def test_filter_narrows_the_model_table_and_escape_restores_it() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        await pilot.press("slash")
        bar = app.query_one(FilterBar)
        assert bar.has_focus
        # "q" is text here, not the quit key.
        await pilot.press("q", "w", "e")
        await until(pilot, lambda: models.row_count == 1)
        assert models.shown_keys == ["mac-studio/qwen3-30b-a3b"]
        assert app.is_running

        # The filter holds across updates: a new matching instance shows, others do not.
        snap = client.snapshot()
        client.push(
            next_version(
                snap,
                instances=[
                    *snap.instances.values(),
                    instance("gpu-box", "qwen2.5:7b"),
                    instance("gpu-box", "mistral:7b"),
                ],
            )
        )
        await until(pilot, lambda: app.shown_version == snap.version + 1)
        assert models.shown_keys == ["gpu-box/qwen2.5:7b", "mac-studio/qwen3-30b-a3b"]

        await pilot.press("escape")
        await until(pilot, lambda: models.row_count == 6)
        assert not bar.has_focus and bar.value == ""


async def test_filter_matches_node_names() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        await pilot.press("slash", *"gpu-box", "enter")
        await until(pilot, lambda: models.row_count == 2)
        assert all(k.startswith("gpu-box/") for k in models.shown_keys)
        # Enter leaves the filter on and the keys usable again.
        assert not app.query_one(FilterBar).has_focus


async def test_help_lists_the_keys_and_closes() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        described = {desc for _key, desc, _tip in help_screen.keys}
        assert {"Quit", "Help", "Theme", "Filter"} <= described
        # The list is on screen, not only in the widget's data.
        keys_widget = help_screen.query_one("#help-keys", Static)
        assert keys_widget.region.width > 20
        assert keys_widget.region.height >= 4
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_help_lists_the_keys_for_moving_around_and_in_dialogs() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        sections = {
            title: {d: k.split() for k, d, _ in rows} for title, rows in help_screen.sections
        }
        moving = sections["Moving around"]
        assert {"↑", "↓", "pgup", "pgdn"} <= set(moving["Move"])
        assert moving["Focus"] == ["tab", "shift+tab"]
        assert moving["Palette"] == ["^p"]
        dialogs = sections["In dialogs and the filter"]
        assert dialogs["Yes"] == ["y", "⏎"] and dialogs["Force"] == ["f"]
        assert "esc" in dialogs["Close"]
        # Taken from the bindings, so none of the table's keys is left out (enter on a row
        # does nothing in lmtui and is listed only where it does something).
        listed = {key for rows in sections.values() for keys in rows.values() for key in keys}
        table = app.query_one(NodeTable)
        for active in app.active_bindings.values():
            if active.node is table and active.binding.action != "select_cursor":
                assert app.get_key_display(active.binding) in listed
        assert "Keys" in str(help_screen.query_one("#help-title", Static).render())
        text = str(help_screen.query_one("#help-keys", Static).render())
        assert "Moving around" in text and "tab shift+tab" in text


async def test_remapped_key_works_and_shows_in_help() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        app.set_keymap({"theme": "y"})
        before = app.theme
        await pilot.press("y")
        assert app.theme != before
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert isinstance(app.screen, HelpScreen)
        assert ("y", "Theme") in {(k, d) for k, d, _ in app.screen.keys}


async def test_theme_key_cycles_through_all_themes() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        seen = {app.theme}
        for _ in range(len(app.available_themes)):
            await pilot.press("t")
            seen.add(app.theme)
        assert seen == set(app.available_themes)


async def test_quit_key_exits() -> None:
    app, client = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)


async def test_clock_moves_relative_cells_without_a_new_snapshot() -> None:
    snap, events = fixed_cluster()
    client = FakeClient(snap, events)
    now = [FIXED_NOW]
    app = build_app(client, clock=lambda: now[0])
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, client)
        models = app.query_one(ModelTable)
        assert str(models.get_cell("mac-studio/gemma-3-12b", "ttl")) == "4m 30s"
        now[0] += 60
        app._tick()
        assert str(models.get_cell("mac-studio/gemma-3-12b", "ttl")) == "3m 30s"
        assert str(models.get_cell("mac-studio/qwen3-30b-a3b", "last_used")) == "1m ago"
        # Only time-relative cells moved: per row "last used" and/or "TTL left".
        added, changed, removed = models.last_sync_stats
        assert (added, removed) == (0, 0)
        assert 0 < changed <= 2 * models.row_count


async def test_broken_update_stream_is_watched_again() -> None:
    snap, events = fixed_cluster()
    client = FlakyClient(snap, events)
    app = build_app(client, clock=lambda: FIXED_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: client.watch_calls == 2 and client.watching)
        assert app.is_running
        assert any("lost the engine" in n.message for n in app._notifications)
        mac = replace(snap.nodes["mac-studio"], health=Health.SUSPECT)
        client.push(next_version(snap, nodes=[mac]))
        await until(pilot, lambda: app.shown_version == snap.version + 1)
        assert str(app.query_one(NodeTable).get_cell("mac-studio", "status")) == "suspect"
        # The backlog fetched again on the second watch is not written twice.
        assert app.query_one(EventLog).count == 4


async def test_a_dashboard_on_a_remote_engine_is_attached() -> None:
    """The header says whether the engine runs here or the dashboard is attached to one."""
    remote = HttpEngineClient("http://pool:8765")
    try:
        assert client_mode(remote) == "attached"
    finally:
        await remote.aclose()
    snap, events = fixed_cluster()
    assert client_mode(FakeClient(snap, events)) == "embedded"
