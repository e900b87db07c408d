"""The Textual application: layout, key bindings, and the worker that follows the engine.

The app is deliberately thin. It owns one worker that consumes ``EngineClient.watch()`` and
hands every update down to the widgets (attributes down); widgets render with the pure
functions of ``lmtui.tui.render`` and report user intent up as messages. The worker is an
asyncio task on the app's own event loop, so it may touch widgets directly: no thread ever
does.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import tomli_w
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer

from lmtui.core.model import Snapshot
from lmtui.engine.client import EngineClient, HttpEngineClient, Update
from lmtui.tui.collector import IdleCollector
from lmtui.tui.controls import BINDINGS as CONTROL_BINDINGS
from lmtui.tui.controls import ControlsApp
from lmtui.tui.palette import REPLACED_SYSTEM_COMMANDS, ActionsProvider, ViewsProvider
from lmtui.tui.render import instance_row_key, instances_by_node, waiting_row_key
from lmtui.tui.themes import SHIPPED_THEMES_DIR, load_themes
from lmtui.tui.widgets.detail_screens import DetailScreen, ModelScreen, NodeScreen
from lmtui.tui.widgets.event_log import EventLog
from lmtui.tui.widgets.filter_bar import FilterBar
from lmtui.tui.widgets.header import ClusterHeader
from lmtui.tui.widgets.help import HelpScreen, KeyHelp, other_keys
from lmtui.tui.widgets.keyed_table import KeyedTable
from lmtui.tui.widgets.model_table import ModelTable
from lmtui.tui.widgets.node_table import NodeTable

#: Seconds between redraws of time-relative cells ("12s ago", TTL left) when nothing else
#: changed. One second matches the resolution those cells show.
CLOCK_TICK_S = 1.0
#: Waits before re-watching after the client's update stream failed (an attached engine
#: restarting): quick at first, then no more than one try every 10 s.
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0)
#: At most this many updates are drawn a second. An engine may publish a snapshot per node
#: poll (a hundred a second at 200 nodes); drawing each would take the whole event loop,
#: which in embedded mode is the router's too. Faster updates are merged: the newest
#: snapshot is drawn once the interval is up, with every event that came in between.
MAX_UPDATES_PER_S = 10


class LmtuiApp(ControlsApp):
    """The lmtui dashboard. Build it with ``build_app``."""

    TITLE = "lmtui"
    CSS_PATH = "app.tcss"
    # Start on the node table: the filter input must not take the keys (q, t, ?) at start.
    AUTO_FOCUS = "#nodes"
    # ctrl+p: lmtui's actions and views, then Textual's own system commands.
    COMMANDS = ControlsApp.COMMANDS | {ActionsProvider, ViewsProvider}

    # Each binding has an id so users can remap it: ``[keymap]`` in the config (its ids are
    # lmtui.config.keymap.BINDING_IDS, checked against these by tests/tui/test_keymap.py),
    # which ``build_app`` hands to ``App.set_keymap``.
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave lmtui"),
        Binding("question_mark", "help", "Help", id="help", tooltip="List the keys"),
        Binding("t", "cycle_theme", "Theme", id="theme", tooltip="Switch to the next theme"),
        Binding(
            "ctrl+s",
            "save_svg",
            "Screenshot",
            id="screenshot",
            show=False,
            tooltip="Save the screen as an SVG in lmtui's state directory",
        ),
        Binding("slash", "filter", "Filter", id="filter", tooltip="Filter the model table"),
        Binding(
            "v",
            "toggle_debug",
            "Verbose",
            id="verbose",
            tooltip="Show routing decisions in the event log too, or hide them again",
        ),
        *CONTROL_BINDINGS,
    ]

    def __init__(
        self,
        client: EngineClient,
        *,
        clock: Callable[[], float] = time.time,
        theme_dirs: Sequence[Path] = (),
        keymap: Mapping[str, str] | None = None,
        prefs_path: Path | None = None,
        screenshot_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.clock = clock
        #: An update that came sooner than ``MAX_UPDATES_PER_S`` allows, waiting, with
        #: whether it begins a watch; when the next may be drawn (``time.monotonic``).
        self._held: tuple[Update, bool] | None = None
        self._next_draw = 0.0
        #: The clock of the last snapshot shown (its ages are of that moment).
        self._shown_at = float("-inf")
        #: Whether the start's objects are frozen out of the garbage collector's work.
        self._frozen = False
        #: Runs the garbage collections after a frame, not in one (``collector``).
        self.collector = IdleCollector()
        self._collect_asked = False
        #: The dashboard's own preferences (the theme), kept across runs; None: not kept.
        self.prefs_path = prefs_path
        #: Where ``ctrl+s`` saves its SVG (lmtui's state directory; None: the current one).
        self.screenshot_dir = screenshot_dir
        if keymap:
            self.set_keymap(keymap)
        loaded = load_themes(*theme_dirs)
        for theme in loaded.themes:
            self.register_theme(theme)
        #: Theme files that failed to load; reported once, after mount.
        self.theme_errors = loaded.errors
        saved = read_prefs(prefs_path).get("theme") if prefs_path is not None else None
        if isinstance(saved, str) and saved in self.available_themes:
            self.theme = saved
        elif saved is not None:
            self.theme_errors.append(f"theme {str(saved)[:60]!r} (from {prefs_path}) is gone")
        #: The snapshot on screen, and its version, so tests can wait for an update.
        self.snapshot: Snapshot | None = None
        self.shown_version = -1

    def compose(self) -> ComposeResult:
        yield ClusterHeader(
            self.client.source, read_only=self.client.read_only, mode=client_mode(self.client)
        )
        with Vertical(id="body"):
            yield NodeTable()
            yield ModelTable()
            yield EventLog()
        yield FilterBar()
        yield Footer()

    def on_mount(self) -> None:
        self.show_snapshot(self.client.snapshot())
        self.run_worker(self._follow_engine(), name="watch", group="engine", exclusive=True)
        self.set_interval(CLOCK_TICK_S, self._tick)
        for message in self.theme_errors:
            self.notify(message, severity="warning", timeout=10)

    async def _follow_engine(self) -> None:
        """Consume the client's updates for as long as the app runs.

        If the stream fails (an attached engine went away), say so once and watch again with
        a growing delay; the tables keep the last snapshot meanwhile. A successful update
        resets the delay.
        """
        failures = 0
        while True:
            updates = aiter(self.client.watch())
            first = True
            while True:
                try:
                    update = await anext(updates)
                except StopAsyncIteration:
                    return  # the client ended the stream on purpose (engine stopped)
                except Exception as exc:
                    # Only the client's failures are retried; a bug in drawing an update
                    # (below, outside this try) still surfaces as a worker error.
                    if failures == 0:
                        self.notify(f"lost the engine's updates: {exc}", severity="error")
                    break
                self._offer(update, initial=first)
                first = False
                failures = 0
            await asyncio.sleep(RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)])
            failures += 1

    def _offer(self, update: Update, *, initial: bool) -> None:
        """Draw ``update`` now, or, when the last one was drawn less than
        ``1 / MAX_UPDATES_PER_S`` ago, hold it (merged into any held already) until then."""
        held = self._held
        if held is not None:
            before, was_initial = held
            self._held = (Update(update.snapshot, [*before.events, *update.events]), was_initial)
            return  # the timer set for the first held update draws this one too
        wait = self._next_draw - time.monotonic()
        if wait > 0 and not initial:
            self._held = (update, initial)
            self.set_timer(wait, self._draw_held)
            return
        self._draw_update(update, initial)

    def _draw_held(self) -> None:
        if self._held is not None:
            update, initial = self._held
            self._held = None
            self._draw_update(update, initial)

    def _draw_update(self, update: Update, initial: bool) -> None:
        self._next_draw = time.monotonic() + 1 / MAX_UPDATES_PER_S
        self.apply_update(update, initial=initial)
        if initial and gc.isenabled() and not self._frozen:
            self._frozen = True
            self.call_after_refresh(self._freeze_startup)

    def _freeze_startup(self) -> None:
        """Keep what the start made (modules, classes, widgets, the first snapshot: about
        100,000 objects) out of every later full garbage collection. On these machines a
        full collection of such a process took 110-180 ms, a whole frame and more, and in
        embedded mode a pause of the router's too; without them it takes 7 ms at 50 nodes
        and 14 ms at 200 (``bench/tui_render.py``). Collected first, so no garbage is kept;
        ``on_unmount`` gives them back to the collector."""
        gc.collect()
        gc.freeze()
        self.collector.start()

    def _collect_after_frame(self) -> None:
        """Once the frame being drawn is written, run the garbage collection that is due
        then (``collector``: the frame's own objects count too)."""
        if self._collect_asked or not self.collector.active:
            return
        self._collect_asked = True
        self.call_after_refresh(self._collect_now)

    def _collect_now(self) -> None:
        self._collect_asked = False
        self.collector.collect()

    def on_unmount(self) -> None:
        self.collector.stop()
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def apply_update(self, update: Update, *, initial: bool = False) -> None:
        """Show one update. The first one carries the backlog from ``recent_events()``.

        Events that are part of the first update are already in ``recent_events()`` (a watch
        starts by publishing the current state), so they are not written twice.
        """
        try:
            log = self.query_one(EventLog)
        except NoMatches:
            return  # the app is closing and its widgets are gone (as in show_snapshot)
        if initial:
            # On a re-watch the backlog overlaps what the log shows: skip what is there.
            log.add_events(self.client.recent_events(), skip_seen=True)
            # The strategy is not in a snapshot: ask at start and after a reconnect (an
            # attached engine may have restarted, or another operator switched it).
            self.run_worker(self._show_strategy(), group="strategy", exclusive=True)
        else:
            log.add_events(update.events)
        self.show_snapshot(update.snapshot)

    async def _show_strategy(self) -> None:
        try:
            name = await self.client.strategy()
        except Exception:
            return  # the header leaves it out; the strategy picker reports the failure
        self.query_one(ClusterHeader).show_strategy(name)

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Hand ``snapshot`` down to the header and the tables, in one repaint."""
        self.snapshot = snapshot
        now = self._shown_at = self.clock()
        try:
            header = self.query_one(ClusterHeader)
            nodes, models = self.query_one(NodeTable), self.query_one(ModelTable)
        except NoMatches:
            # The app is closing and its widgets are gone: the clock tick or an update that
            # raced the teardown has nothing left to show (it used to raise, at random).
            return
        history = self.client.history()
        groups = instances_by_node(snapshot)
        with self.batch_update():
            header.show(snapshot, history, groups)
            nodes.show(snapshot, now, history, groups)
            models.show(snapshot, now)
            if isinstance(self.screen, DetailScreen):
                self.screen.show(snapshot, now, history, self.client.recent_events(500))
        self.shown_version = snapshot.version
        self._collect_after_frame()

    def _tick(self) -> None:
        # A collection that fell due with nothing drawn (the engine's garbage, in embedded
        # mode) runs now, between frames all the same.
        self._collect_after_frame()
        # Same snapshot, later clock: only "last used" and "TTL left" cells change, and the
        # diff updates just those. Not when an update was drawn within the last half tick:
        # it showed the ages of its own moment (a busy cluster's updates keep them current,
        # and a tick would draw the screen once more a second for nothing).
        if self.snapshot is None:
            return
        if self.clock() - self._shown_at < CLOCK_TICK_S / 2:
            return
        self.show_snapshot(self.snapshot)

    # -- actions ---------------------------------------------------------------------------

    def action_help(self) -> None:
        """Show every key as it is bound now, so a remap shows up here too: the commands,
        then moving around and the dialogs (``help.other_keys``)."""
        if isinstance(self.screen, HelpScreen):
            return
        keys: list[KeyHelp] = []
        others: list[Binding] = []  # the screen's and the app's keys that have no id
        for active in self.active_bindings.values():
            b = active.binding
            if b.id is None:
                if active.node in (self, self.screen):
                    others.append(b)
                continue
            if b.id.startswith(("help.", "filter.")):
                continue
            keys.append((self.get_key_display(b), b.description, b.tooltip))
        self.push_screen(HelpScreen(keys, other_keys(others, self.get_key_display)))

    def action_toggle_debug(self) -> None:
        """Show routing decisions (debug level) in the event log too, or hide them."""
        log = self.query_one(EventLog)
        log.set_debug(not log.show_debug)
        self.notify(
            "event log: every event, routing included"
            if log.show_debug
            else "event log: info and above (routing hidden)",
            timeout=2,
        )

    def on_keyed_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        """Enter on a node row opens its node screen; on a model row, its model screen."""
        self._open_row(event.table, event.key)

    def _open_row(self, table: KeyedTable, key: str | None) -> None:
        if key is None or self.snapshot is None:
            return
        if isinstance(table, NodeTable):
            self.open_detail("node", str(key))
        elif isinstance(table, ModelTable):
            model = self._model_of_row(str(key))
            if model is not None:
                self.open_detail("model", model)

    def open_detail(self, kind: Literal["node", "model"], name: str) -> None:
        """Open the detail screen of node or model ``name`` (Enter, or the palette)."""
        if self.snapshot is None:
            return
        screen: DetailScreen
        screen = NodeScreen(self.client, name) if kind == "node" else ModelScreen(self.client, name)
        screen.show(
            self.snapshot, self.clock(), self.client.history(), self.client.recent_events(500)
        )
        self.push_screen(screen)

    def action_details(self) -> None:
        """The detail screen of the row under the cursor: the node table's when it has
        focus, else the model table's (what Enter opens in that table)."""
        nodes = self.query_one(NodeTable)
        table: NodeTable | ModelTable = (
            nodes if self.focused is nodes else self.query_one(ModelTable)
        )
        if table.cursor_key is None:
            return self._need("a node or a model")
        self._open_row(table, table.cursor_key)

    def focus_table(self, which: Literal["nodes", "models"]) -> None:
        """Put the focus (and so the commands' target) on the node or the model table."""
        self.query_one(NodeTable if which == "nodes" else ModelTable).focus()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """Textual's own palette commands, but for those lmtui's own replace."""
        for command in super().get_system_commands(screen):
            if command.title not in REPLACED_SYSTEM_COMMANDS:
                yield command

    def _model_of_row(self, key: str) -> str | None:
        prefix = waiting_row_key("")
        if key.startswith(prefix):
            return key[len(prefix) :]
        assert self.snapshot is not None
        inst = next(
            (i for i in self.snapshot.instances.values() if instance_row_key(i) == key),
            None,
        )
        return inst.model if inst is not None else None

    def action_cycle_theme(self) -> None:
        """Switch to the next registered theme, in name order, wrapping around."""
        names = sorted(self.available_themes)
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)

    def watch_theme(self, theme: str) -> None:
        """Keep the choice (``t``, or the command palette's "Change theme") for next time."""
        if self.prefs_path is not None and self.is_running:
            try:
                write_prefs(self.prefs_path, {**read_prefs(self.prefs_path), "theme": theme})
            except OSError as e:
                self.notify(f"cannot keep the theme in {self.prefs_path}: {e}", severity="warning")

    def action_save_svg(self) -> None:
        """Save the screen as an SVG in the state directory (not ~/Downloads)."""
        where = self.screenshot_dir
        try:
            if where is not None:
                where.mkdir(parents=True, exist_ok=True)
            path = self.save_screenshot(path=str(where) if where is not None else None)
        except OSError as e:
            self.notify(f"screenshot not saved: {e}", severity="error")
            return
        self.notify(f"screenshot saved: {path}", timeout=6)

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    def on_filter_bar_filter_changed(self, message: FilterBar.FilterChanged) -> None:
        self.query_one(ModelTable).set_filter(message.needle)


def client_mode(client: EngineClient) -> str:
    """``attached`` for a dashboard on a remote engine (``--connect``), else ``embedded``.

    One type check here rather than a property of ``EngineClient``: the engine's module is
    someone else's to change, and this is the only place that asks.
    """
    return "attached" if isinstance(client, HttpEngineClient) else "embedded"


def build_app(
    client: EngineClient,
    *,
    clock: Callable[[], float] = time.time,
    theme_dirs: Sequence[Path] = (SHIPPED_THEMES_DIR,),
    keymap: Mapping[str, str] | None = None,
    prefs_path: Path | None = None,
    screenshot_dir: Path | None = None,
) -> LmtuiApp:
    """The one way to make the app: the CLI, the tests and the snapshot tests all use it.

    ``clock`` gives "now" for the relative cells (tests freeze it); ``theme_dirs`` are
    searched for ``*.toml`` themes, lmtui's own first (the CLI adds the user's folder,
    ``lmtui.config.paths.themes_dir()``, after it); ``keymap`` (binding id ->
    comma-separated keys, as ``lmtui.config.key_strings`` makes it from ``[keymap]``)
    remaps the bindings with ``App.set_keymap``; ``prefs_path`` keeps the theme chosen
    (the CLI: ``tui.toml`` in the state directory); ``ctrl+s`` saves SVGs in
    ``screenshot_dir``.
    """
    return LmtuiApp(
        client,
        clock=clock,
        theme_dirs=theme_dirs,
        keymap=keymap,
        prefs_path=prefs_path,
        screenshot_dir=screenshot_dir,
    )


def read_prefs(path: Path) -> dict[str, object]:
    """The dashboard's preferences file (TOML); empty when it is missing or unreadable. It
    is the dashboard's own, apart from the engine's overrides file: an attached dashboard
    and the ``--serve`` it watches may share a state directory, and two writers of one
    file would undo each other's changes."""
    try:
        return dict(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def write_prefs(path: Path, prefs: Mapping[str, object]) -> None:
    """Write ``prefs`` atomically (a temporary file renamed over it), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(dict(prefs), f)
    os.replace(tmp, path)
